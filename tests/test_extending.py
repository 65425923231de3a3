"""The shipped extension example: a multi-label classifier plugged in by class_path, run through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["cardiovascular", "gastrointestinal", "mental_health", "neurological", "respiratory"]


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory, tiny_bert):
    from tests.conftest import run_cli

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
