"""Class imbalance: `class_weights` (balanced from the linked training counts, or given) and `oversample`."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def train_counts(folder: Path) -> list[int]:
    with open(folder / "train.csv", newline="") as f:
        labels = [int(r["label"]) for r in csv.DictReader(f)]
    return [labels.count(0), labels.count(1)]


def classifier(tiny_bert, **kwargs):
    from ftl.models.classifier import SequenceClassifier

    return SequenceClassifier(pretrained=str(tiny_bert), num_labels=2, **kwargs)


def test_balanced_weights_change_the_loss_as_computed_by_hand(tiny_bert):
    counts = [30, 10]
    module = classifier(tiny_bert, class_weights="balanced", label_counts=counts)
    # scikit-learn's "balanced": n / (k * count)
    assert module.class_weight.tolist() == pytest.approx([40 / (2 * 30), 40 / (2 * 10)])
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-0.2, 1.5], [1.0, 1.0], [0.0, 3.0]])
    labels = torch.tensor([0, 1, 1, 0, 0])
    weights = [40 / 60, 2.0]
    nll = [-math.log(math.exp(row[y]) / sum(math.exp(v) for v in row)) for row, y in
           zip(logits.tolist(), labels.tolist(), strict=True)]
    by_hand = sum(weights[y] * v for y, v in zip(labels.tolist(), nll, strict=True)) / sum(weights[y] for y in labels)
    assert module.loss(logits, labels).item() == pytest.approx(by_hand, rel=1e-6)
    plain = classifier(tiny_bert).loss(logits, labels).item()
    assert plain == pytest.approx(sum(nll) / len(nll), rel=1e-6)
    assert abs(plain - by_hand) > 0.1
    given = classifier(tiny_bert, class_weights=[1.0, 4.0]).loss(logits, labels).item()
    assert given == pytest.approx(sum([1.0, 4.0][y] * v for y, v in zip(labels.tolist(), nll, strict=True)) / 11.0)


def test_bad_class_weights_are_one_line_errors(tiny_bert):
    from ftl.errors import FTLError

    with pytest.raises(FTLError, match="one weight per label"):
        classifier(tiny_bert, class_weights=[1.0, 2.0, 3.0])
    with pytest.raises(FTLError, match="training rows per label"):
        classifier(tiny_bert, class_weights="balanced")


def test_cli_links_training_label_counts_into_balanced_weights(imbalanced_dir, tiny_bert, tmp_path, cli):
    """Both options from the command line: the data's training counts reach the model; oversample the data."""
    run = tmp_path / "run"
    cli("fit", "--config", str(ROOT / "configs" / "depression.yaml"), "--model.pretrained", str(tiny_bert),
        "--data.data_dir", str(imbalanced_dir), "--data.dataset", "null", "--data.max_length", "64",
        "--model.class_weights", "balanced", "--data.oversample", "true", "--trainer.max_epochs", "1",
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--test_after_fit", "false",
        "--run_dir", str(run))
    hparams = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["hyper_parameters"]
    counts = train_counts(imbalanced_dir)
    assert hparams["label_counts"] == counts and counts[1] < counts[0] / 2
    assert hparams["class_weights"] == "balanced"
    from ftl.models.classifier import SequenceClassifier

    module = SequenceClassifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=True)
    total = sum(counts)
    assert module.class_weight.tolist() == pytest.approx([total / (2 * c) for c in counts])
    import yaml

    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["init_args"]["oversample"] is True


def label_mix(folder: Path, tiny_bert: Path, epochs: int = 4, **kwargs) -> tuple[float, list[int]]:
    """Share of positive rows the training loader yields over `epochs` epochs, and rows per epoch."""
    from ftl.data.classification import TextClassificationDataModule

    dm = TextClassificationDataModule(data_dir=str(folder), tokenizer=str(tiny_bert), max_length=32, batch_size=8,
                                      **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    positives, rows, per_epoch = 0, 0, []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        labels = torch.cat([batch["labels"] for batch in loader])
        positives += int(labels.sum())
        rows += len(labels)
        per_epoch.append(len(labels))
    return positives / rows, per_epoch


def test_oversampling_balances_the_training_label_mix(imbalanced_dir, tiny_bert):
    counts = train_counts(imbalanced_dir)
    natural, plain_rows = label_mix(imbalanced_dir, tiny_bert)
    assert natural == pytest.approx(counts[1] / sum(counts))  # every row once per epoch
    mixed, rows = label_mix(imbalanced_dir, tiny_bert, oversample=True)
    assert rows == plain_rows == [sum(counts)] * 4  # an epoch keeps its length
    assert natural < 0.25 and 0.4 < mixed < 0.6
    again, _ = label_mix(imbalanced_dir, tiny_bert, oversample=True)
    assert again == mixed  # seeded
