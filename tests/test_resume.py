"""Resume: a run interrupted after epoch 1 and continued with `--ckpt_path last` ends like an unbroken run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest

ROOT = Path(__file__).resolve().parents[1]
STOP_MESSAGE = "interrupted for the resume test"


class StopAtSecondEpoch(L.Callback):
    """Test-only interruption (a crash, a killed job): raises as epoch 2 starts, after epoch 1's checkpoints.

    Stopping this way keeps max_epochs, so the learning-rate schedule is the one of the unbroken run.
    """

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 1:
            raise RuntimeError(STOP_MESSAGE)


def args(tiny_data_dir: Path, tiny_bert: Path, root: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(ROOT / "configs" / "depression.yaml"), "--model.pretrained", str(tiny_bert),
            "--data.class_path", "ftl.data.classification.TextClassificationDataModule",
            "--data.data_dir", str(tiny_data_dir), "--data.max_length", "64", "--data.batch_size", "8",
            "--model.learning_rate", "1e-3", "--trainer.max_epochs", "2", "--trainer.logger", "true",
            "--trainer.enable_progress_bar", "false", "--runs_root", str(root), "--run_name", "task", *extra]


def test_interrupted_then_resumed_run_ends_like_an_unbroken_run(tmp_path, tiny_data_dir, tiny_bert, cli):
    cli(*args(tiny_data_dir, tiny_bert, tmp_path / "unbroken"))
    (unbroken,) = (tmp_path / "unbroken" / "task").iterdir()

    root = tmp_path / "broken"
    with pytest.raises(RuntimeError, match=STOP_MESSAGE):
        cli(*args(tiny_data_dir, tiny_bert, root, "--trainer.callbacks+=tests.test_resume.StopAtSecondEpoch"))
    (broken,) = (root / "task").iterdir()
    assert (broken / "checkpoints" / "last.ckpt").is_file() and not (broken / "metrics.json").exists()

    cli(*args(tiny_data_dir, tiny_bert, root, "--ckpt_path", "last"))
    assert list((root / "task").iterdir()) == [broken]  # continued in the run's own directory

    done, reference = (json.loads((run / "metrics.json").read_text()) for run in (broken, unbroken))
    assert set(done) == set(reference)
    timing = ("/runtime", "/samples_per_sec", "/steps_per_sec", "/tokens_per_sec", "/tflops")  # wall clock
    quality = {key: value for key, value in reference.items() if not key.endswith(timing)}
    assert {"test/loss", "test/f1_macro", "val/loss", "val/f1_macro"} <= set(quality)
    for key, value in quality.items():
        assert done[key] == pytest.approx(value, abs=1e-4), key
    # the resumed run trained epoch 2 only, and its log holds both epochs
    with open(broken / "metrics.csv", newline="") as f:
        epochs = {int(float(r["epoch"])) for r in csv.DictReader(f) if r.get("val/loss")}
    assert epochs == {0, 1}

    # `test --ckpt_path last` evaluates the newest run's last.ckpt, into a new directory of its own
    def test_args(*extra: str) -> list[str]:
        return ["test", *args(tiny_data_dir, tiny_bert, root, *extra)[1:]]

    cli(*test_args("--ckpt_path", "last"))
    cli(*test_args("--ckpt_path", str(broken / "checkpoints" / "last.ckpt")))
    tested = sorted(run for run in (root / "task").iterdir() if run != broken)
    assert len(tested) == 2 and all(run.name.endswith(("-test", "-test-2")) for run in tested), tested
    by_name, by_path = (json.loads((run / "metrics.json").read_text()) for run in tested)
    assert by_name["test/loss"] == pytest.approx(by_path["test/loss"], abs=1e-6)
    assert not (broken / "checkpoints" / "last-v1.ckpt").exists()  # the resumed run itself was not touched


def test_resuming_with_nothing_to_resume_is_a_one_line_error(tmp_path, tiny_data_dir, tiny_bert, cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(*args(tiny_data_dir, tiny_bert, tmp_path / "empty", "--ckpt_path", "last"))
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ftl: error:")]
    assert len(err) == 1 and "no run under" in err[0] and "last.ckpt" in err[0]
    assert not (tmp_path / "empty" / "task").exists()


# ---------------------------------------------------------------------- callbacks that the task configs carry
@pytest.mark.parametrize("config", ["depression", "cancer", "medical_abstracts", "imdb", "quickstart", "qa_relevance",
                                    "regression_example"])
def test_task_configs_stop_early_on_the_checkpoint_metric_and_log_the_learning_rate(config):
    import yaml

    data = yaml.safe_load((ROOT / "configs" / f"{config}.yaml").read_text())
    trainer = data["trainer"]
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c.get("init_args", {}) for c in trainer["callbacks"]}
    stop = callbacks["EarlyStopping"]
    assert (stop["monitor"], stop["mode"]) == (data["checkpoint"]["monitor"], data["checkpoint"]["mode"])
    assert stop["patience"] >= 1 and "LearningRateMonitor" in callbacks
    assert trainer["gradient_clip_val"] == 1.0 and trainer["accumulate_grad_batches"] >= 1


def test_runs_get_a_rich_progress_bar_and_no_lr_monitor_without_loggers(tmp_path, tiny_data_dir, tiny_bert,
                                                                        monkeypatch):
    import sys

    from lightning.pytorch.callbacks import LearningRateMonitor, RichProgressBar

    from ftl.commands.cli import FTLCLI

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # a terminal

    base = ["--config", str(ROOT / "configs" / "depression.yaml"), "--model.pretrained", str(tiny_bert),
            "--data.class_path", "ftl.data.classification.TextClassificationDataModule",
            "--data.data_dir", str(tiny_data_dir), "--data.max_length", "64"]
    default = FTLCLI(args=[*base, "--trainer.logger", "true", "--run_dir", str(tmp_path / "a")], run=False)
    assert isinstance(default.trainer.progress_bar_callback, RichProgressBar)  # rich is a dependency of ftl
    assert any(isinstance(cb, LearningRateMonitor) for cb in default.trainer.callbacks)
    bare = FTLCLI(args=[*base, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                        "--run_dir", str(tmp_path / "b")], run=False)
    assert bare.trainer.progress_bar_callback is None
    assert not any(isinstance(cb, LearningRateMonitor) for cb in bare.trainer.callbacks)


def test_output_that_is_not_a_terminal_gets_plain_progress_lines(tmp_path, tiny_data_dir, tiny_bert, cli, capsys):
    """pytest's captured stderr is no terminal, as a log file or a cluster job's output is not."""
    import re

    cli("fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--model.pretrained", str(tiny_bert),
        "--data.class_path", "ftl.data.classification.TextClassificationDataModule",
        "--data.data_dir", str(tiny_data_dir), "--data.max_length", "48", "--data.batch_size", "16",
        "--trainer.max_epochs", "2", "--progress_every", "0", "--run_dir", str(tmp_path / "run"))
    err = capsys.readouterr().err
    steps = re.findall(r"^ftl: epoch (\d)/2, step (\d)/4 \((\d+)%\), loss [0-9.]+, [0-9.]+ samples/s, "
                       r"elapsed \d+:\d\d, ETA \d+:\d\d$", err, flags=re.M)
    assert [(int(e), int(s)) for e, s, _ in steps] == [(e, s) for e in (1, 2) for s in (1, 2, 3, 4)]  # every step
    assert re.search(r"^ftl: epoch 2/2 done: .*val/loss [0-9.]+.*, elapsed \d+:\d\d$", err, flags=re.M)
    assert "━" not in err  # no rich bar frames in the log
