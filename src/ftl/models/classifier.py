"""Sequence classification over any `AutoModelForSequenceClassification`, measured with torchmetrics."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from ftl.models.optim import SchedulerName, configure_adamw

STAGES = ("train", "val", "test")


def classification_metrics(num_labels: int):
    """Accuracy, macro and per-class precision/recall/F1; one collection, cloned per stage.

    MetricCollection's compute groups let all of these share one set of stat-score states.
    """
    from torchmetrics import MetricCollection
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassRecall,
    )

    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_labels, average="micro"),
            "precision_macro": MulticlassPrecision(num_labels, average="macro"),
            "recall_macro": MulticlassRecall(num_labels, average="macro"),
            "f1_macro": MulticlassF1Score(num_labels, average="macro"),
            "precision": MulticlassPrecision(num_labels, average=None),
            "recall": MulticlassRecall(num_labels, average=None),
            "f1": MulticlassF1Score(num_labels, average=None),
        }
    )


def flatten_metrics(stage: str, values: dict[str, torch.Tensor], label_names: list[str]) -> dict[str, float]:
    """`{"f1": tensor([a, b])}` -> `{"val/f1/<label a>": a, "val/f1/<label b>": b}`; scalars keep their name."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if value.ndim == 0:
            out[f"{stage}/{key}"] = float(value)
        else:
            for name, item in zip(label_names, value.tolist(), strict=True):
                out[f"{stage}/{key}/{name}"] = float(item)
    return out


def restore_order(outputs: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """One output dict with rows back in the data's order (evaluation batches are sorted by length)."""
    if not outputs:
        return outputs
    merged = {key: torch.cat([o[key] for o in outputs]) for key in outputs[0]}
    if "row_idx" in merged:
        order = merged.pop("row_idx").argsort()
        merged = {key: value[order] for key, value in merged.items()}
    return [merged]


class SequenceClassifier(L.LightningModule):
    """Fine-tunes a pretrained encoder with a fresh classification head.

    `num_labels` and `label_names` are linked from the data module by the CLI; configs never repeat them.
    """

    def __init__(
        self,
        pretrained: str = "minilm-l6",
        num_labels: int = 2,
        label_names: list[str] | None = None,
        learning_rate: float = 5e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        scheduler: SchedulerName = "linear",
        warmup_steps: int = 0,
        warmup_ratio: float = 0.0,
        classifier_dropout: float | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        if label_names is not None and len(label_names) != num_labels:
            raise ValueError(f"{len(label_names)} label_names for num_labels={num_labels}")
        self.label_names = list(label_names) if label_names else [str(i) for i in range(num_labels)]
        self.save_hyperparameters()
        # from_pretrained returns eval mode, and Lightning keeps each submodule's mode: without this,
        # dropout would be off during training (HF Trainer calls model.train() for the same reason).
        self.model = self._load_model().train()
        metrics = classification_metrics(num_labels)
        # One attribute per stage (a ModuleDict cannot hold the key "train": nn.Module.train exists).
        self.train_metrics, self.val_metrics, self.test_metrics = (metrics.clone() for _ in STAGES)
        from torchmetrics.classification import MulticlassConfusionMatrix

        self.test_confusion = MulticlassConfusionMatrix(num_labels)
        self.test_outputs: list[dict[str, torch.Tensor]] = []

    def _load_model(self) -> nn.Module:
        from transformers import AutoModelForSequenceClassification

        from ftl.models.hub import load_model

        hp = self.hparams
        extra: dict[str, Any] = {}
        if hp.classifier_dropout is not None:
            extra["classifier_dropout"] = hp.classifier_dropout
        return load_model(
            AutoModelForSequenceClassification,
            hp.pretrained,
            num_labels=hp.num_labels,
            id2label=dict(enumerate(self.label_names)),
            label2id={name: i for i, name in enumerate(self.label_names)},
            trust_remote_code=hp.trust_remote_code,
            # a checkpoint fine-tuned on another label set gets a fresh head instead of an error
            ignore_mismatched_sizes=True,
            **extra,
        )

    # ------------------------------------------------------------------ forward and loss
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "row_idx")}
        return self.model(**inputs).logits

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch)
        labels = batch["labels"]
        loss = self.loss(logits, labels)
        getattr(self, f"{stage}_metrics").update(logits.detach(), labels)
        # Logging a tensor defers the host sync to the logger's flush, not every step.
        self.log(f"{stage}/loss", loss.detach(), on_step=stage == "train", on_epoch=True,
                 prog_bar=True, batch_size=labels.shape[0], sync_dist=stage != "train")
        return loss, logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        _, logits = self._step(batch, "test")
        self.test_confusion.update(logits, batch["labels"])
        output = {"probs": logits.float().softmax(-1).cpu(), "labels": batch["labels"].cpu()}
        if "row_idx" in batch:
            output["row_idx"] = batch["row_idx"].cpu()
        self.test_outputs.append(output)

    # PredictionWriter (ftl.callbacks) writes predict_step's records beside the inputs, as CSV.
    prediction_format = "csv"

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> list[dict[str, Any]]:
        """One record per input: the predicted label name and the probability of every label."""
        probs = self(batch).float().softmax(-1).cpu()
        records = []
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            record: dict[str, Any] = {"predicted_label": self.label_names[best]}
            record.update({f"prob_{name}": round(p, 6) for name, p in zip(self.label_names, row, strict=True)})
            records.append(record)
        return records

    # ------------------------------------------------------------------ epoch-end metrics
    def _log_epoch_metrics(self, stage: str) -> None:
        collection = getattr(self, f"{stage}_metrics")
        values = flatten_metrics(stage, collection.compute(), self.label_names)
        collection.reset()
        self.log_dict(values, sync_dist=False)  # already synced by torchmetrics

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_start(self) -> None:
        self.test_outputs = []
        self.test_confusion.reset()

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")
        self.test_outputs = restore_order(self.test_outputs)
        self.confusion_matrix = self.test_confusion.compute().cpu()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict:
        hp = self.hparams
        return configure_adamw(
            self.model,
            learning_rate=hp.learning_rate,
            weight_decay=hp.weight_decay,
            betas=hp.betas,
            eps=hp.eps,
            scheduler=hp.scheduler,
            warmup_steps=hp.warmup_steps,
            warmup_ratio=hp.warmup_ratio,
            total_steps=int(self.trainer.estimated_stepping_batches),
        )
