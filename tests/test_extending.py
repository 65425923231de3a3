"""A new task written outside src/ftl, exactly as docs/extending.md writes it, gets every report; and the shipped
multi-label example runs through the CLI."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["cardiovascular", "gastrointestinal", "mental_health", "neurological", "respiratory"]
DOC = ROOT / "docs" / "extending.md"


def doc_files() -> dict[str, str]:
    """The files docs/extending.md writes: a code block right after each `<!-- file: PATH -->` marker."""
    text = DOC.read_text()
    found = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.S)
    return {path: body for path, body in found}


def write_pairs(folder: Path, seed: int = 0) -> Path:
    """Pairs of synthetic notes with a similarity score (1 same condition, 0 otherwise); lengths vary a lot, so
    length-sorted evaluation batches reorder the rows."""
    import random

    from ftl.data.synthetic import make_examples

    rng = random.Random(seed)
    notes = make_examples(200, seed=seed, label_noise=0.0)
    folder.mkdir(parents=True)
    sizes = {"train": 48, "val": 16, "test": 24}
    start = 0
    for split, n in sizes.items():
        rows = []
        for i in range(n):
            a, b = notes[start + 2 * i], notes[start + 2 * i + 1]
            text_b = b["text"] if i % 3 else " ".join([b["text"]] * rng.randint(2, 4))
            rows.append({"text_a": a["text"], "text_b": text_b, "score": float(a["label"] == b["label"])})
        start += 2 * n
        with open(folder / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text_a", "text_b", "score"])
            writer.writeheader()
            writer.writerows(rows)
    return folder


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def user_package(tmp_path_factory):
    """my_lab/ from the docs in a temporary folder on sys.path (removed again after the module's tests)."""
    root = tmp_path_factory.mktemp("user")
    files = doc_files()
    assert {"my_lab/__init__.py", "my_lab/tasks.py", "my_lab/pair_score.yaml"} <= set(files)
    for name, body in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(body)
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    for name in [m for m in sys.modules if m == "my_lab" or m.startswith("my_lab.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def pair_run(user_package, tiny_bert, tmp_path_factory):
    from tests.helpers import run_cli

    data = write_pairs(tmp_path_factory.mktemp("pairs") / "pairs")
    run_dir = tmp_path_factory.mktemp("pair_runs") / "run"
    common = ["--config", str(user_package / "my_lab" / "pair_score.yaml"), "--model.pretrained", str(tiny_bert),
              "--data.data_dir", str(data), "--data.max_length", "96", "--data.batch_size", "8",
              "--trainer.enable_progress_bar", "false"]
    run_cli("fit", *common, "--trainer.max_epochs", "1", "--run_dir", str(run_dir),
            "--trainer.logger", "lightning.pytorch.loggers.WandbLogger",
            "--trainer.logger.init_args.project", "ftl-tests")
    return run_dir, data, common


def test_a_task_from_the_docs_gets_metrics_records_in_data_order_summary_and_plots(pair_run):
    run_dir, data, _ = pair_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    records = read_csv(run_dir / "test_predictions.csv")
    inputs = read_csv(data / "test.csv")
    assert len(records) == len(inputs) == 24
    for record, row in zip(records, inputs, strict=True):  # row by row with the input file, though sorted batches
        assert (record["text_a"], record["text_b"]) == (row["text_a"], row["text_b"])
        assert float(record["score"]) == float(row["score"])
    predicted = [float(r["predicted_score"]) for r in records]
    mse = sum((p - float(r["score"])) ** 2 for p, r in zip(predicted, records, strict=True)) / len(records)
    assert metrics["test/mse"] == pytest.approx(mse, rel=1e-4)  # the logged metric is the records' own
    # the per-row `metrics` of the docs' records give the user's own metric a confidence interval
    assert metrics["test/mse_ci_low"] < metrics["test/mse"] < metrics["test/mse_ci_high"]
    # numbers as references and predictions, no labels: a regression, whose Pearson resamples from sums over rows
    assert metrics["test/pearson_ci_low"] <= metrics["test/pearson"] <= metrics["test/pearson_ci_high"]
    assert (run_dir / "plots" / "regression_scatter.png").stat().st_size > 0
    assert [float(r["mse"]) for r in records] == pytest.approx(
        [(p - float(r["score"])) ** 2 for p, r in zip(predicted, records, strict=True)], rel=1e-5)
    assert "val/loss" in metrics and (run_dir / "checkpoints" / "last.ckpt").is_file()
    summary = (run_dir / "summary.md").read_text()
    assert "my_lab.tasks.PairRegressor" in summary and "my_lab.tasks.PairScoreData" in summary
    assert "train 48, val 16, test 24" in summary
    assert (run_dir / "plots" / "loss.png").stat().st_size > 0


def test_the_export_of_a_task_from_the_docs_loads_with_transformers(pair_run):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir, data, _ = pair_run
    folder = run_dir / "hf_model"
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.num_labels == 1 and tokenizer.model_max_length == 96  # the run's max_length
    first = read_csv(data / "test.csv")[0]
    with torch.no_grad():
        score = model(**tokenizer(first["text_a"], first["text_b"], return_tensors="pt")).logits.item()
    records = read_csv(run_dir / "test_predictions.csv")
    # hf_model holds the best checkpoint: the one that was tested (one epoch here: best = last)
    assert score == pytest.approx(float(records[0]["predicted_score"]), abs=1e-4)


def test_predict_and_compare_work_for_a_task_from_the_docs(pair_run, tmp_path):
    from tests.helpers import run_cli

    run_dir, data, common = pair_run
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    new = tmp_path / "new_pairs.csv"
    rows = read_csv(data / "test.csv")[:5]
    with open(new, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text_a", "text_b"])
        writer.writeheader()
        writer.writerows({"text_a": r["text_a"], "text_b": r["text_b"]} for r in rows)
    run_cli("predict", *common, "--ckpt_path", ckpt, "--data.predict_file", str(new), "--run_dir", str(tmp_path / "p"))
    predictions = read_csv(tmp_path / "p" / "predictions.csv")
    assert [(p["text_a"], p["text_b"]) for p in predictions] == [(r["text_a"], r["text_b"]) for r in rows]
    tested = {(r["text_a"], r["text_b"]): float(r["predicted_score"])
              for r in read_csv(run_dir / "test_predictions.csv")}
    for p in predictions:
        assert float(p["predicted_score"]) == pytest.approx(tested[(p["text_a"], p["text_b"])], abs=1e-4)

    run_cli("compare", *common, "--ckpt_path", ckpt, "--run_dir", str(tmp_path / "c"))
    result = json.loads((tmp_path / "c" / "compare.json").read_text())
    after = json.loads((run_dir / "metrics.json").read_text())
    assert result["after"]["test/mse"] == pytest.approx(after["test/mse"], rel=1e-4)
    assert result["test_rows"] == 24 and "test/mse" in result["before"]
    text = (tmp_path / "c" / "compare.md").read_text()
    # no labels here, but a fresh one-output head (named so since 3b68582)
    assert "Accuracy on" not in text and "its new task head" in text
    mse_row = next(r for r in result["rows"] if r["metric"] == "test/mse")
    assert mse_row["test"] == "permutation" and mse_row["change_ci_low"] <= mse_row["change"] <= mse_row[
        "change_ci_high"] and mse_row["verdict"] in ("better", "worse", "no_difference")


def test_wandb_gets_the_records_of_a_task_from_the_docs(pair_run):
    from tests.helpers import offline_run, wandb_table

    run_dir, data, _ = pair_run
    folder, stored = offline_run(run_dir)
    table = wandb_table(folder, "test/predictions")
    assert table["columns"] == ["text_a", "text_b", "score", "predicted_score", "mse"]  # mse: the row's own
    assert [row[0] for row in table["data"]] == [r["text_a"] for r in read_csv(data / "test.csv")]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert stored["summary"]["test/mse"] == pytest.approx(metrics["test/mse"])
    assert stored["summary"]["test/mse_ci_high"] == pytest.approx(metrics["test/mse_ci_high"])  # with its interval


def test_a_task_from_the_docs_resumes(pair_run):
    from tests.helpers import run_cli

    run_dir, _, common = pair_run
    run_cli("fit", *common, "--run_dir", str(run_dir), "--ckpt_path", "last", "--trainer.max_epochs", "2")
    epochs = {row["epoch"] for row in read_csv(run_dir / "metrics.csv") if row.get("val/loss")}
    assert epochs == {"0", "1"}
    state = __import__("torch").load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert state["epoch"] == 1
    assert len(read_csv(run_dir / "test_predictions.csv")) == 24  # written again for the resumed model


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory, tiny_bert):
    from tests.helpers import run_cli

    run_dir = tmp_path_factory.mktemp("multilabel") / "run"
    run_cli("fit", "--config", str(ROOT / "configs" / "multilabel_example.yaml"),
            "--model.pretrained", str(tiny_bert), "--model.learning_rate", "1e-3",
            "--data.n_train", "48", "--data.n_val", "24", "--data.n_test", "24", "--data.max_length", "64",
            "--data.batch_size", "8", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
            "--run_dir", str(run_dir))
    return run_dir


def test_example_data_has_rows_with_several_labels(tmp_path):
    from ftl.data.multilabel import write_multilabel_splits

    folder = write_multilabel_splits(tmp_path / "d", 40, 10, 10, seed=0)
    with open(folder / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    sizes = [len(r["labels"].split("|")) for r in rows]
    assert len(rows) == 40 and 1 in sizes and 2 in sizes
    assert {label for r in rows for label in r["labels"].split("|")} <= set(LABELS)
    again = write_multilabel_splits(tmp_path / "e", 40, 10, 10, seed=0)
    assert (again / "test.csv").read_bytes() == (folder / "test.csv").read_bytes()


def test_multilabel_example_runs_through_the_cli_with_per_label_f1(multilabel_run):
    metrics = json.loads((multilabel_run / "metrics.json").read_text())
    for name in LABELS:  # label names were linked from the data module into the model by the CLI
        assert 0.0 <= metrics[f"test/f1/{name}"] <= 1.0
    for key in ("test/f1_macro", "test/f1_micro", "test/exact_match", "test/loss"):
        assert key in metrics
    for key in ("test/exact_match", "test/accuracy", "test/loss", "test/f1_macro", "test/f1_micro",
                *(f"test/f1/{name}" for name in LABELS)):  # from the records' label sets and per-row values
        assert metrics[f"{key}_ci_low"] <= metrics[key] + 1e-9 and metrics[key] <= metrics[f"{key}_ci_high"] + 1e-9
    per_label = [metrics[f"test/f1/{name}"] for name in LABELS]
    assert metrics["test/f1_macro"] == pytest.approx(sum(per_label) / len(per_label), abs=1e-6)
    assert (multilabel_run / "checkpoints" / "last.ckpt").is_file()


def test_multilabel_model_uses_sigmoid_outputs_and_predicts_label_sets(multilabel_run, tmp_path, tiny_bert, cli):
    import torch

    from ftl.models.multilabel import MultiLabelClassifier

    ckpt = multilabel_run / "checkpoints" / "last.ckpt"
    module = MultiLabelClassifier.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    assert module.label_names == LABELS and module.model.config.problem_type == "multi_label_classification"
    notes = tmp_path / "notes.txt"
    notes.write_text("patient reports chest pressure radiating to the left arm\nlow mood and anxiety for weeks\n")
    cli("predict", "--config", str(multilabel_run / "config.yaml"), "--ckpt_path", str(ckpt),
        "--data.predict_file", str(notes), "--run_dir", str(tmp_path / "p"))
    with open(tmp_path / "p" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    for row in rows:
        probs = [float(row[f"prob_{name}"]) for name in LABELS]
        with torch.no_grad():
            expected = module(dict(tokenizer([row["text"]], return_tensors="pt"))).sigmoid()[0].tolist()
        assert probs == pytest.approx(expected, abs=1e-4)  # independent sigmoids, not a softmax
        predicted = {name for name, p in zip(LABELS, probs, strict=True) if p >= 0.5}
        assert set(filter(None, row["predicted_labels"].split("|"))) == predicted


def test_labels_become_a_multi_hot_matrix(tmp_path, tiny_bert):
    from ftl.data.multilabel import MultiLabelDataModule

    folder = tmp_path / "d"
    folder.mkdir()
    rows = [("chest pain and cough", "cardiovascular|respiratory"), ("low mood", "mental_health"),
            ("no complaints", ""), ("cough", '["respiratory"]')] * 3
    for split in ("train", "val", "test"):
        with open(folder / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "labels"])
            writer.writerows(rows)
    dm = MultiLabelDataModule(data_dir=str(folder), tokenizer=str(tiny_bert), max_length=32, batch_size=4,
                              sort_eval_by_length=False)
    assert dm.label_names == ["cardiovascular", "mental_health", "respiratory"]
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["labels"].dtype.is_floating_point
    assert batch["labels"].tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]


def test_multilabel_writes_records_in_data_order_and_a_per_label_confusion_matrix(multilabel_run):
    """What multi-label had lost: test records and a confusion matrix, through the same task contract."""
    from ftl.hub import cache_root

    records = read_csv(multilabel_run / "test_predictions.csv")
    rows = read_csv(cache_root() / "synthetic_multilabel" / "n48-24-24-seed0" / "test.csv")  # the example's data
    assert len(records) == len(rows) == 24
    assert [r["text"] for r in records] == [r["text"] for r in rows]
    assert [set(filter(None, r["labels"].split("|"))) for r in records] == \
        [set(filter(None, r["labels"].split("|"))) for r in rows]
    for record in records:
        probs = {name: float(record[f"prob_{name}"]) for name in LABELS}
        assert set(filter(None, record["predicted_labels"].split("|"))) == {n for n, p in probs.items() if p >= 0.5}
    matrix = read_csv(multilabel_run / "confusion_matrix.csv")
    assert [r["label"] for r in matrix] == LABELS
    for row in matrix:
        counts = [int(row[k]) for k in ("true_negative", "false_positive", "false_negative", "true_positive")]
        assert sum(counts) == 24
        truth = sum(row["label"] in r["labels"].split("|") for r in records)
        predicted = sum(row["label"] in r["predicted_labels"].split("|") for r in records)
        assert counts[2] + counts[3] == truth and counts[1] + counts[3] == predicted
