"""`--model.calibration temperature`: fitted on validation, saved in checkpoints, applied at test, predict and in
the export (folded into the output layer), predicted labels unchanged; the reliability plot."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from tests.helpers import cli_args, spread_predictions


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, tiny_data_dir, tiny_bert):
    from tests.helpers import run_cli

    run_dir = tmp_path_factory.mktemp("calibration") / "fit"
    run_cli("fit", *cli_args(tiny_data_dir, tiny_bert, run_dir, "--trainer.max_epochs", "2",
                             "--model.learning_rate", "3e-4", "--model.calibration", "temperature",
                             "--ci_resamples", "200"))
    return run_dir


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_temperature_is_fitted_on_validation_and_reported(calibrated):
    metrics = json.loads((calibrated / "metrics.json").read_text())
    t = metrics["val/temperature"]
    assert t > 0 and t != 1.0
    assert metrics["test/temperature"] == pytest.approx(t)  # the best checkpoint's temperature is the one tested
    assert metrics["val/nll_scaled"] <= metrics["val/loss"] + 1e-6  # T = 1 was a candidate: scaling never hurts
    assert {"test/ece", "test/ece_unscaled", "test/brier"} <= set(metrics)
    best = next((calibrated / "checkpoints").glob("best-*.ckpt"))
    assert torch.load(best, map_location="cpu", weights_only=True)["ftl_temperature"] == pytest.approx(t)
    assert "| Temperature |" in (calibrated / "summary.md").read_text()


def test_the_export_gives_the_scaled_probabilities_and_the_same_labels(calibrated, tiny_data_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = calibrated / "hf_model"
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.ftl_temperature == pytest.approx(json.loads((calibrated / "metrics.json").read_text())
                                                         ["test/temperature"])
    records = _rows(calibrated / "test_predictions.csv")[:6]
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    with torch.no_grad():
        probs = model(**tokenizer([r["text"] for r in records], return_tensors="pt", padding=True,
                                  truncation=True, max_length=64)).logits.softmax(-1)
    for row, p in zip(records, probs.tolist(), strict=True):
        assert p == pytest.approx([float(row[f"prob_{n}"]) for n in names], abs=1e-4)
        assert names[max(range(len(p)), key=p.__getitem__)] == row["predicted_label"]


def test_scaling_lowers_nll_of_an_overconfident_classifier_and_keeps_its_labels(tiny_data_dir, tiny_bert):
    """The module's own path: an over-confident head (logits x 20), its validation logits, one fit."""
    import lightning as L
    import torch.nn.functional as F

    from ftl.data.classification import TextClassificationDataModule
    from ftl.models.classifier import SequenceClassifier

    data = TextClassificationDataModule(data_dir=str(tiny_data_dir), tokenizer=str(tiny_bert), max_length=64,
                                        batch_size=8)
    L.seed_everything(0, verbose=False)
    model = SequenceClassifier(pretrained=str(tiny_bert), num_labels=data.num_labels, label_names=data.label_names,
                               calibration="temperature")
    spread_predictions(model, data)
    with torch.no_grad():
        model.model.classifier.weight.mul_(20)
        model.model.classifier.bias.mul_(20)
    data.setup("validate")
    model.on_validation_epoch_start()
    logits, labels = [], []
    with torch.no_grad():
        for batch in data.val_dataloader():
            model._step(batch, "val")
            logits.append(model(batch))
            labels.append(batch["labels"])
    logits, labels = torch.cat(logits), torch.cat(labels)
    model._fit_temperature()
    t = model.temperature
    assert t > 2
    assert F.cross_entropy(logits / t, labels) < F.cross_entropy(logits, labels)
    assert torch.equal(model.scaled(logits).argmax(-1), logits.argmax(-1))


def test_calibration_with_a_threshold_is_refused(tiny_bert):
    from ftl.errors import FTLError
    from ftl.models.classifier import SequenceClassifier

    with pytest.raises(FTLError, match="not both"):
        SequenceClassifier(pretrained=str(tiny_bert), num_labels=2, calibration="temperature", tune_threshold="f1")
