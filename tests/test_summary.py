"""Run outputs a person reads after fit: summary.md, throughput in metrics.json, plots/*.png, test_predictions.csv."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from tests.helpers import cli_args

TRAIN_ROWS, EPOCHS, BATCH, EVAL_BATCH = 64, 2, 8, 8


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_binary_dir, tiny_bert):
    from tests.helpers import run_cli

    run_dir = tmp_path_factory.mktemp("summary") / "run"
    run_cli("fit", *cli_args(tiny_binary_dir, tiny_bert, run_dir, "--trainer.max_epochs", str(EPOCHS),
                             "--trainer.log_every_n_steps", "2", "--data.eval_batch_size", str(EVAL_BATCH),
                             "--model.learning_rate", "3e-4"))
    return run_dir


def epoch_rows(run_dir: Path) -> dict[int, dict[str, str]]:
    """Per epoch, the non-empty cells of the epoch-level rows of metrics.csv."""
    out: dict[int, dict[str, str]] = {}
    with open(run_dir / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row.get("epoch") and (row.get("train/loss_epoch") or row.get("val/loss")):
                out.setdefault(int(row["epoch"]), {}).update({k: v for k, v in row.items() if v})
    return out


def table(text: str, header_start: str) -> list[list[str]]:
    """The rows of the markdown table whose header line starts with `header_start`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def test_summary_has_every_section_with_the_runs_numbers(run, tiny_bert):
    import lightning
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification

    text = (run / "summary.md").read_text()
    assert re.search(r"\*\*Date\*\*: \d{4}-\d\d-\d\dT\d\d:\d\d", text)
    assert "**Device**: cpu" in text
    for name, version in (("torch", torch.__version__), ("lightning", lightning.__version__),
                          ("transformers", transformers.__version__)):
        assert f"{name} {version}" in text
    total = sum(p.numel() for p in AutoModelForSequenceClassification.from_pretrained(run / "hf_model").parameters())
    assert f"**Parameters**: {total:,} trainable of {total:,} total" in text
    assert "**Rows per split**: train 64, val 32, test 32" in text
    assert "**Labels** (2): 0, 1" in text

    settings = {row[0].strip("`"): row[1] for row in table(text, "| Setting |")}
    assert settings["model.init_args.learning_rate"] == "0.0003"
    assert settings["model.init_args.pretrained"] == str(tiny_bert)
    assert settings["data.init_args.batch_size"] == "8"
    assert settings["trainer.max_epochs"] == "2"
    assert settings["checkpoint.monitor"] == "val/f1_macro"
    assert settings["model.init_args.num_labels (linked)"] == "2"  # linked from the data, not in config.yaml

    metrics = json.loads((run / "metrics.json").read_text())
    assert re.search(r"\*\*Training time\*\*: [\d.]+ s", text)
    assert f"**Train samples/s**: {metrics['train/samples_per_sec']:.2f}" in text
    epochs = epoch_rows(run)
    assert f"**Final train loss** (last epoch's mean): {float(epochs[EPOCHS - 1]['train/loss_epoch']):.4f}" in text

    per_epoch = table(text, "| epoch | step | train loss | val loss | val accuracy |")
    assert [row[0] for row in per_epoch] == [str(e) for e in range(EPOCHS)]
    for row in per_epoch:
        logged = epochs[int(row[0])]
        assert row[1] == logged["step"]
        assert float(row[2]) == pytest.approx(float(logged["train/loss_epoch"]), abs=6e-5)
        assert float(row[3]) == pytest.approx(float(logged["val/loss"]), abs=6e-5)
        assert float(row[4]) == pytest.approx(float(logged["val/accuracy"]), abs=6e-5)

    tests = {row[0]: row[1] for row in table(text, "| Metric | Value |")}
    for name, key in (("Accuracy", "test/accuracy"), ("F1 (macro)", "test/f1_macro"), ("Eval loss", "test/loss"),
                      ("Recall (1)", "test/recall/1"), ("ECE (15 bins)", "test/ece"), ("Brier score", "test/brier")):
        # value [95% interval]
        value, low, high = (float(x) for x in re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", tests[name]).groups())
        assert value == pytest.approx(metrics[key], abs=6e-5)
        assert (low, high) == pytest.approx((metrics[key + "_ci_low"], metrics[key + "_ci_high"]), abs=6e-5)
        assert low <= value <= high


def test_throughput_counts_every_sample_and_step(run):
    """samples/s x runtime gives back the rows and steps that ran (no timing assertions: only the counts)."""
    metrics = json.loads((run / "metrics.json").read_text())
    steps_per_epoch = -(-TRAIN_ROWS // BATCH)
    assert metrics["train/samples_per_sec"] * metrics["train/runtime"] == pytest.approx(TRAIN_ROWS * EPOCHS)
    assert metrics["train/steps_per_sec"] * metrics["train/runtime"] == pytest.approx(steps_per_epoch * EPOCHS)
    assert metrics["test/samples_per_sec"] * metrics["test/runtime"] == pytest.approx(32)
    assert metrics["test/steps_per_sec"] * metrics["test/runtime"] == pytest.approx(32 / EVAL_BATCH)
    assert metrics["val/samples_per_sec"] * metrics["val/runtime"] == pytest.approx(32)
    epochs = epoch_rows(run)  # logged every epoch too, cumulative over the training loop
    first = epochs[0]
    assert float(first["train/samples_per_sec"]) * float(first["train/runtime"]) == pytest.approx(TRAIN_ROWS, rel=1e-5)


def test_plots_are_non_empty_pngs(run):
    from matplotlib.image import imread

    for name in ("loss.png", "confusion_matrix.png", "precision_recall.png"):
        path = run / "plots" / name
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert len(data) > 5_000, name
        image = imread(path)
        assert image.ndim == 3 and image.shape[0] >= 200 and image.shape[1] >= 200 and image.shape[2] in (3, 4)
        assert image[..., :3].std() > 0.05, name  # not a blank canvas


def test_test_predictions_match_the_confusion_matrix(run, tiny_binary_dir):
    with open(run / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(tiny_binary_dir / "test.csv", newline="") as f:
        truth = list(csv.DictReader(f))
    assert [r["text"] for r in rows] == [r["text"] for r in truth]
    assert [r["label"] for r in rows] == [r["label"] for r in truth]
    for r in rows:
        assert float(r["prob_0"]) + float(r["prob_1"]) == pytest.approx(1.0, abs=1e-6)
    matrix = [[int(v) for v in line.split(",")[1:]]
              for line in (run / "confusion_matrix.csv").read_text().strip().splitlines()[1:]]
    for i in range(2):
        for j in range(2):
            assert matrix[i][j] == sum(r["label"] == str(i) and r["predicted_label"] == str(j) for r in rows)


def test_summary_names_the_code_and_the_exact_data_files(run, tiny_binary_dir):
    import hashlib
    import subprocess

    text = (run / "summary.md").read_text()
    for split in ("train", "val", "test"):
        path = tiny_binary_dir / f"{split}.csv"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert f"`{path}` ({path.stat().st_size:,} bytes, sha256 `{digest[:16]}`)" in text
    code = next(line for line in text.splitlines() if line.startswith("- **Code**: ftl "))
    head = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    if head.returncode == 0:  # run from a git checkout, as in CI
        assert f"commit `{head.stdout.strip()[:12]}`" in code
        dirty = subprocess.run(["git", "-C", str(Path(__file__).parent), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
        assert ("uncommitted changes" in code) == bool(dirty)
