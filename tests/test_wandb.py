"""W&B logging with the real wandb client, offline: what a run stores is read back from its transaction log."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import offline_run, wandb_table

ROOT = Path(__file__).resolve().parents[1]


def fit_args(run_dir: Path, data_dir: Path, model: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(ROOT / "configs" / "depression.yaml"),
        "--model.pretrained", str(model),
        "--data.class_path", "ftl.data.classification.TextClassificationDataModule",
        "--data.data_dir", str(data_dir), "--data.max_length", "64", "--data.batch_size", "8",
        "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "2", "--trainer.enable_progress_bar", "false",
        "--run_dir", str(run_dir), *extra,
    ]


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory, tiny_data_dir, tiny_bert):
    from tests.helpers import run_cli

    run_dir = tmp_path_factory.mktemp("wandb") / "run"
    run_cli(*fit_args(run_dir, tiny_data_dir, tiny_bert, "--model.learning_rate", "3e-4"))
    folder, stored = offline_run(run_dir)
    return run_dir, folder, stored


def test_offline_run_config_is_the_full_resolved_config_nested_once(wandb_run, tiny_data_dir):
    from ftl.data.synthetic import LABEL_NAMES

    run_dir, _, stored = wandb_run
    config = {k: v for k, v in stored["config"].items() if k != "_wandb"}
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    # exactly the resolved config.yaml, nested, plus what the model received through links
    init_args = config["model"]["init_args"]
    assert init_args.pop("num_labels") == len(LABEL_NAMES)
    assert init_args.pop("label_names") == LABEL_NAMES
    linked = set(init_args) - set(saved["model"]["init_args"])
    assert linked <= {"label_counts"}, linked  # training rows per label, linked for class_weights: balanced
    for key in linked:
        init_args.pop(key)
    assert config.pop("run_dir") == str(run_dir)
    saved.pop("run_dir")
    record = config.pop("ftl_run")  # what ran: ftl's version and commit, each data file's sha256
    assert record["code"]["ftl"] and {item["path"] for item in record["data_files"]} == \
        {str(tiny_data_dir / f"{split}.csv") for split in ("train", "val", "test")}
    assert config == saved
    assert init_args["learning_rate"] == pytest.approx(3e-4)
    assert config["data"]["init_args"]["data_dir"] == str(tiny_data_dir)
    # once: Lightning's flat copy of the module's init args is not there as well
    assert not {"learning_rate", "pretrained", "num_labels", "label_names"} & set(stored["config"])
    assert stored["name"] == f"{run_dir.parent.name}/{run_dir.name}"


def test_offline_run_summary_holds_the_metrics_of_metrics_json(wandb_run):
    run_dir, _, stored = wandb_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test_keys = [k for k in metrics if k.startswith("test/")]
    assert {"test/loss", "test/accuracy", "test/f1_macro"} <= set(test_keys)
    for key in test_keys:
        assert stored["summary"][key] == pytest.approx(metrics[key]), key
    # val/* in metrics.json and in the summary are the best checkpoint's (monitor val/f1_macro, max) ...
    with open(run_dir / "metrics.csv", newline="") as f:
        per_epoch = [float(r["val/f1_macro"]) for r in csv.DictReader(f) if r.get("val/f1_macro")]
    assert len(per_epoch) == 2
    assert metrics["val/f1_macro"] == pytest.approx(max(per_epoch))
    assert stored["summary"]["val/f1_macro"] == pytest.approx(max(per_epoch))
    # ... and the history has per-step and per-epoch values
    logged = {key for row in stored["history"] for key in row}
    assert {"train/loss_step", "train/loss_epoch", "val/loss", "val/f1_macro", "test/accuracy"} <= logged
    assert sum("train/loss_step" in row for row in stored["history"]) >= 4  # 8 steps, logged every 2


def test_offline_run_has_test_tables_and_confusion_matrix(wandb_run, tiny_data_dir):
    from ftl.data.synthetic import LABEL_NAMES

    run_dir, folder, _ = wandb_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    predictions = wandb_table(folder, "test/predictions")
    assert predictions["columns"] == ["text", "label", "prediction", "probability", "correct"]
    with open(tiny_data_dir / "test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r[0] for r in predictions["data"]] == [r["text"] for r in rows]  # data order, text beside its label
    assert [r[1] for r in predictions["data"]] == [r["label_name"] for r in rows]
    assert all(0.0 < r[3] <= 1.0 and r[4] == (r[1] == r[2]) for r in predictions["data"])
    accuracy = sum(r[4] for r in predictions["data"]) / len(rows)
    assert accuracy == pytest.approx(metrics["test/accuracy"])

    per_class = wandb_table(folder, "test/per_class")
    assert per_class["columns"] == ["label", "precision", "recall", "f1", "support"]
    assert [r[0] for r in per_class["data"]] == LABEL_NAMES
    for name, precision, recall, f1, support in per_class["data"]:
        assert f1 == pytest.approx(metrics[f"test/f1/{name}"])
        assert precision == pytest.approx(metrics[f"test/precision/{name}"])
        assert recall == pytest.approx(metrics[f"test/recall/{name}"])
        assert support == sum(r["label_name"] == name for r in rows)

    # every test metric with its 95% interval, as in metrics.json
    table = {row[1]: row for row in wandb_table(folder, "test/metrics")["data"]}
    for key in ("test/accuracy", "test/f1_macro", "test/loss", "test/ece"):
        name, _, value, low, high = table[key]
        assert (value, low, high) == pytest.approx((metrics[key], metrics[key + "_ci_low"], metrics[key + "_ci_high"]))
    assert table["test/accuracy"][0] == "Accuracy" and table["test/runtime"][3] is None

    matrix = wandb_table(folder, "test/confusion_matrix_table")
    counts = {(actual, predicted): n for actual, predicted, n in matrix["data"]}
    assert sum(counts.values()) == len(rows)
    assert sum(n for (a, p), n in counts.items() if a == p) / len(rows) == pytest.approx(accuracy)


def test_no_api_key_and_no_mode_means_offline_said_in_one_line(monkeypatch, tmp_path, capsys):
    from ftl.reports.loggers import prepare_wandb_env

    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL",
                "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("FTL_CACHE", str(tmp_path / "cache"))
    assert prepare_wandb_env() == "offline"
    import os

    assert os.environ["WANDB_MODE"] == "offline"
    assert os.environ["WANDB_CACHE_DIR"] == str(tmp_path / "cache" / "wandb")  # wandb's caches stay in ftl's
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftl: ") and "offline" in lines[0]

    # a key in netrc (as `wandb login` leaves it): wandb decides, nothing said
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "0" * 40 + "\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert prepare_wandb_env() == ""
    assert "WANDB_MODE" not in os.environ
    # an explicit mode is the user's choice
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert prepare_wandb_env() == "disabled"
    assert capsys.readouterr().err == ""


def test_wandb_that_cannot_start_online_never_stops_the_run(monkeypatch, tmp_path, tiny_data_dir, tiny_bert, cli,
                                                           capsys):
    """WANDB_MODE=online with no API key: wandb.init raises; the run logs offline and finishes."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    run_dir = tmp_path / "run"
    wandb.teardown()  # wandb reads the environment once per process: make it read this one
    try:
        cli(*fit_args(run_dir, tiny_data_dir, tiny_bert, "--trainer.max_epochs", "1"))
    finally:
        wandb.teardown()  # and the next test's
    assert "test/accuracy" in json.loads((run_dir / "metrics.json").read_text())
    assert "logging to W&B offline instead" in capsys.readouterr().err
    _, stored = offline_run(run_dir)
    assert stored["config"]["trainer"]["max_epochs"] == 1


CSV_LOGGER = '{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "."}}'


@pytest.mark.parametrize("logger", ["false", "null", CSV_LOGGER])
def test_runs_without_wandb_logger(logger, tmp_path, tiny_data_dir, tiny_bert, cli):
    """`false`: no loggers; `null` or an explicit CSVLogger: CSV only (ftl points it at the run directory)."""
    run_dir = tmp_path / "run"
    cli(*fit_args(run_dir, tiny_data_dir, tiny_bert, "--trainer.max_epochs", "1", "--trainer.logger", logger,
                  "--trainer.limit_train_batches", "2"))
    assert "test/accuracy" in json.loads((run_dir / "metrics.json").read_text())
    assert not (run_dir / "wandb").exists()
    assert (run_dir / "metrics.csv").exists() == (logger != "false")


def test_run_files_are_sent_at_the_end(tmp_path, monkeypatch):
    """summary.md / compare.md, plots and generated answers in the run directory reach the W&B run."""
    for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # as the CLI sets them: wandb's caches stay out of ~
        monkeypatch.setenv(var, str(tmp_path / "wandb-cache"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import wandb

    from ftl.reports.loggers import log_run_files

    run_dir = tmp_path / "run"
    (run_dir / "plots").mkdir(parents=True)
    (run_dir / "summary.md").write_text("# Run summary\n")
    (run_dir / "compare.md").write_text("| metric | before | after |\n")
    (run_dir / "metrics.json").write_text(json.dumps({"test/loss": 0.5, "val/loss": 0.4}))
    plt.plot([1, 2, 3])
    plt.savefig(run_dir / "plots" / "loss.png")
    plt.close()
    answers = [{"question": f"q{i}", "reference": f"r{i}", "generated": f"g{i}"} for i in range(3)]
    (run_dir / "generations.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    (run_dir / "predictions.jsonl").write_text('{"label": "a"}\n')  # no generated answers: not a table

    wandb.teardown()  # wandb reads the environment once per process
    run = wandb.init(project="ftl", dir=str(run_dir), mode="offline")
    log_run_files(run, run_dir)
    run.finish()
    wandb.teardown()
    assert list((tmp_path / "wandb-cache").rglob("core-debug-*.log"))
    folder, stored = offline_run(run_dir)
    # saved into the run's files (wandb writes their upload record asynchronously, so it is not checked here)
    assert (folder / "files" / "summary.md").read_text() == "# Run summary\n"
    assert (folder / "files" / "compare.md").read_text() == "| metric | before | after |\n"
    assert stored["summary"]["test/loss"] == 0.5 and stored["summary"]["val/loss"] == 0.4
    assert any(row.get("plots/loss", {}).get("_type") == "image-file" for row in stored["history"])
    table = wandb_table(folder, "generations")
    assert table["columns"] == ["question", "reference", "generated"]
    assert table["data"] == [[a["question"], a["reference"], a["generated"]] for a in answers]
    assert not list((folder / "files" / "media" / "table").glob("predictions_*"))


def test_a_wandb_run_prints_ftl_lines_and_no_library_noise(tmp_path, tiny_data_dir, tiny_bert):
    """In a fresh process (wandb says some lines once per process): no W&B "anonymous setting" warning (ftl does
    not pass Lightning's unset `anonymous`), no Lightning tip, no LOAD REPORT of the fresh head, no traceback."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, "-m", "ftl", *fit_args(tmp_path / "run", tiny_data_dir, tiny_bert,
                                                                       "--trainer.max_epochs", "1")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    err = result.stderr
    assert result.returncode == 0, err[-3000:]
    assert (tmp_path / "run" / "wandb").is_dir()  # W&B did log
    for noise in ("anonymous", "litlogger", "LOAD REPORT", "Traceback", "wandb: WARNING"):
        assert noise not in err, (noise, err)
