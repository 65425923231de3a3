"""Multi-label sequence classification: the model half of the extension example in docs/extending.md.

A new task in ftl is one LightningModule named by `class_path` in a YAML; nothing is registered anywhere.
This one differs from `SequenceClassifier` where multi-label differs: one sigmoid per label instead of a
softmax over labels, binary cross-entropy, and torchmetrics' multi-label metrics (per-label and macro F1,
exact match). What it shares it imports: the hub loader, the AdamW setup, LoRA and metric naming.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from ftl.models.classifier import STAGES, flatten_metrics
from ftl.models.dropout import enable_fast_cpu_dropout
from ftl.models.lora import LoraSettings, apply_lora, as_hparam, log_parameter_counts
from ftl.models.optim import SchedulerName, configure_module_adamw


def multilabel_metrics(num_labels: int, threshold: float):
    """Per-label and macro/micro F1, per-label precision/recall, exact match (every label right) and
    label-wise accuracy; one collection, cloned per stage."""
    from torchmetrics import MetricCollection
    from torchmetrics.classification import (
        MultilabelAccuracy,
        MultilabelExactMatch,
        MultilabelF1Score,
        MultilabelPrecision,
        MultilabelRecall,
    )

    kw = {"num_labels": num_labels, "threshold": threshold}
    return MetricCollection(
        {
            "f1_macro": MultilabelF1Score(**kw, average="macro"),
            "f1_micro": MultilabelF1Score(**kw, average="micro"),
            "f1": MultilabelF1Score(**kw, average=None),
            "precision": MultilabelPrecision(**kw, average=None),
            "recall": MultilabelRecall(**kw, average=None),
            "exact_match": MultilabelExactMatch(**kw),
            "accuracy": MultilabelAccuracy(**kw, average="micro"),
        }
    )


class MultiLabelClassifier(L.LightningModule):
    """Each label is predicted on its own (sigmoid >= `threshold`); a row may get none, one or several.

    `num_labels`/`label_names` are linked from the data module by the CLI, as for every classifier.
    `fast_cpu_dropout` as in `SequenceClassifier`.
    """

    prediction_format = "csv"  # ftl.callbacks.PredictionWriter writes predict_step's records as CSV

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
        threshold: float = 0.5,
        lora: LoraSettings | None = None,
        fast_cpu_dropout: bool = True,
    ) -> None:
        super().__init__()
        self.label_names = list(label_names) if label_names else [str(i) for i in range(num_labels)]
        lora = as_hparam(lora)
        self.save_hyperparameters()
        self.model = self._load_model().train()  # from_pretrained returns eval mode (dropout off)
        if fast_cpu_dropout:
            self.model = enable_fast_cpu_dropout(self.model)
        if lora:
            self.model = apply_lora(self.model, lora, task_type="SEQ_CLS")
        metrics = multilabel_metrics(num_labels, threshold)
        self.train_metrics, self.val_metrics, self.test_metrics = (metrics.clone() for _ in STAGES)
        from torchmetrics.aggregation import MeanMetric

        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()

    def _load_model(self):
        from transformers import AutoModelForSequenceClassification

        from ftl.models.hub import load_model

        return load_model(
            AutoModelForSequenceClassification,
            self.hparams.pretrained,
            num_labels=self.hparams.num_labels,
            problem_type="multi_label_classification",  # saved in config.json: pipelines then apply sigmoid
            id2label=dict(enumerate(self.label_names)),
            label2id={name: i for i, name in enumerate(self.label_names)},
            ignore_mismatched_sizes=True,
        )

    def on_fit_start(self) -> None:
        log_parameter_counts(self)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "row_idx")}
        return self.model(**inputs).logits

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self(batch).float()
        labels = batch["labels"].float()
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        getattr(self, f"{stage}_metrics").update(logits.detach().sigmoid(), labels.long())
        if stage == "train":
            self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True,
                     batch_size=labels.shape[0])
        else:  # a torchmetrics mean: exact across DDP processes with uneven shares (see SequenceClassifier)
            meter = getattr(self, f"{stage}_loss")
            meter.update(loss.detach(), weight=labels.shape[0])
            self.log(f"{stage}/loss", meter, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> list[dict[str, Any]]:
        """One record per input: the predicted labels ("a|b", empty for none) and each label's probability."""
        probs = self(batch).float().sigmoid().cpu().tolist()
        threshold = self.hparams.threshold
        return [
            {"predicted_labels": "|".join(n for n, p in zip(self.label_names, row, strict=True) if p >= threshold),
             **{f"prob_{n}": round(p, 6) for n, p in zip(self.label_names, row, strict=True)}}
            for row in probs
        ]

    def _log_epoch_metrics(self, stage: str) -> None:
        collection = getattr(self, f"{stage}_metrics")
        self.log_dict(flatten_metrics(stage, collection.compute(), self.label_names))
        collection.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def configure_optimizers(self) -> dict:
        return configure_module_adamw(self)
