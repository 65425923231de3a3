"""The run-directory service: Lightning's default_root_dir convention, a saved config.yaml that makes a new run
when re-used, derived files removed when a resumed run changes what they describe, and last.ckpt sharing the
best checkpoint's file when both are the same step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml


def args(tiny_data_dir: Path, tiny_bert: Path, *extra: str) -> list[str]:
    return ["--config", str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"),
            "--model.pretrained", str(tiny_bert),
            "--data.class_path", "ftl.data.classification.TextClassificationDataModule",
            "--data.data_dir", str(tiny_data_dir), "--data.max_length", "48", "--data.batch_size", "16",
            "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "1", *extra]


@pytest.fixture(scope="module")
def rooted_run(tmp_path_factory, tiny_data_dir, tiny_bert):
    from tests.helpers import run_cli

    root = tmp_path_factory.mktemp("root")
    run_cli("fit", *args(tiny_data_dir, tiny_bert, "--trainer.default_root_dir", str(root / "mine")))
    runs = list((root / "mine" / "quickstart").iterdir())
    assert len(runs) == 1
    return root, runs[0]


def test_default_root_dir_puts_the_run_under_it(rooted_run):
    root, run = rooted_run
    assert (run / "metrics.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert not (Path("runs") / "quickstart" / run.name).exists()


def test_a_saved_config_records_what_was_given_and_reuse_makes_a_new_run(rooted_run, tiny_data_dir, tiny_bert):
    from tests.helpers import run_cli

    root, run = rooted_run
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["default_root_dir"] == str(root / "mine")  # the root, not this run's folder
    assert saved["checkpoint"]["dirpath"] is None and saved["run_dir"] is None
    before = sorted(p.name for p in run.rglob("*"))
    run_cli("test", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
            "--run_name", "again")
    assert sorted(p.name for p in run.rglob("*")) == before  # the earlier run is not touched
    assert len(list((root / "mine" / "again").iterdir())) == 1


def test_last_and_best_of_the_same_step_share_one_file(rooted_run):
    _, run = rooted_run
    files = sorted((run / "checkpoints").iterdir())
    assert [f.name.split("-")[0] for f in files] == ["best", "last.ckpt"]
    best, last = files
    assert best.stat().st_ino == last.stat().st_ino  # a hard link: no second copy on disk
    import torch

    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["epoch"] == 0 and state["global_step"] == 4  # 64 rows / 16 per batch


def test_a_resumed_run_rewrites_what_its_reports_derive_from_the_checkpoints(tmp_path, tiny_data_dir, tiny_bert):
    from tests.helpers import run_cli

    run = tmp_path / "run"
    run_cli("fit", *args(tiny_data_dir, tiny_bert, "--run_dir", str(run), "--compare_after_fit", "true"))
    first = (run / "compare.md").read_text()
    assert "best-epoch0-step4.ckpt" in first
    run_cli("fit", *args(tiny_data_dir, tiny_bert, "--run_dir", str(run), "--ckpt_path", "last",
                         "--trainer.max_epochs", "2", "--test_after_fit", "false"))
    assert not (run / "compare.md").exists() and not (run / "compare").exists()  # it described the old model
    assert not (run / "test_predictions.csv").exists() and not (run / "test_rows.json").exists()  # no test ran since
    metrics = json.loads((run / "metrics.json").read_text())
    assert not any(key.startswith("test/") for key in metrics) and "val/loss" in metrics
    state = __import__("torch").load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 8  # the last state: both epochs' steps
    kept = list((run / "checkpoints").glob("best-*.ckpt"))
    assert len(kept) == 1  # the earlier best is still there when the resumed epoch was not better, else replaced
    best = __import__("torch").load(kept[0], weights_only=True, map_location="cpu")
    last = run / "checkpoints" / "last.ckpt"
    if kept[0].name == "best-epoch0-step4.ckpt":  # the resumed epoch was not better
        # the old last.ckpt was replaced, never written through; its best keeps the weights and drops what only
        # resuming needs: the weights twice plus one optimizer state on disk
        assert best["global_step"] == 4 and kept[0].stat().st_ino != last.stat().st_ino
        assert "optimizer_states" not in best and "optimizer_states" in state
        assert kept[0].stat().st_size < 0.6 * last.stat().st_size
    else:  # the resumed epoch was better: best and last are one file
        assert kept[0].stat().st_ino == last.stat().st_ino and best["global_step"] == 8


def test_last_ckpt_is_the_last_state_even_when_later_epochs_are_not_better(tmp_path, tiny_data_dir, tiny_bert):
    """Lightning 2.6 saves last.ckpt only together with a new best; with learning rate 0 no epoch after the first
    is better, and last.ckpt must still hold the final epoch while best keeps the first (weights only)."""
    import torch

    from tests.helpers import run_cli

    run = tmp_path / "run"
    run_cli("fit", *args(tiny_data_dir, tiny_bert, "--run_dir", str(run), "--trainer.max_epochs", "3",
                         "--model.learning_rate", "0", "--test_after_fit", "false",
                         "--checkpoint.monitor", "val/loss", "--checkpoint.mode", "min"))
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 12 and "optimizer_states" in last  # 3 epochs x 4 steps, resumable
    (best_file,) = (run / "checkpoints").glob("best-*.ckpt")
    assert best_file.name == "best-epoch0-step4.ckpt"
    best = torch.load(best_file, map_location="cpu", weights_only=True)
    assert best["global_step"] == 4 and "optimizer_states" not in best and "state_dict" in best


def test_a_runs_root_that_cannot_be_made_is_one_line_naming_it(tmp_path, tiny_data_dir, tiny_bert, capsys):
    """(Tests run as root here, so a read-only folder would not stop them: a file in the way does.)"""
    from tests.helpers import run_cli

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as stop:
        run_cli("fit", *args(tiny_data_dir, tiny_bert, "--runs_root", str(blocker / "runs")))
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"ftl: error: cannot create the run directory '{blocker / 'runs'}")
    assert "pass a writable --runs_root" in err[0]
