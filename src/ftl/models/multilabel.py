"""Multi-label sequence classification: the model half of the extension example in docs/extending.md.

A new task in ftl is one LightningModule named by `class_path` in a YAML; nothing is registered anywhere.
This one differs from `SequenceClassifier` where multi-label differs: one sigmoid per label instead of a
softmax over labels, binary cross-entropy, and torchmetrics' multi-label metrics (per-label and macro F1,
exact match). Loading, LoRA, the optimizer and the per-row records come from `ftl.models.base.TaskModule`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ftl.models.base import STAGES, TaskModule
from ftl.models.classifier import flatten_metrics, head_kwargs
from ftl.models.outputs import ConfusionMatrix, Record, TaskOutputs


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


class MultiLabelClassifier(TaskModule):
    """Each label is predicted on its own (sigmoid >= `threshold`); a row may get none, one or several.

    `num_labels`/`label_names` are linked from the data module by the CLI, as for every classifier.
    Test records give each row's true and predicted label sets ("a|b") and every label's probability; the
    confusion matrix has one row per label: true negatives, false positives, false negatives, true positives.
    """

    auto_class = "AutoModelForSequenceClassification"
    lora_task_type = "SEQ_CLS"
    reference_name, prediction_name = "labels", "predicted_labels"

    def __init__(
        self,
        pretrained: str = "minilm-l6",
        num_labels: int = 2,
        label_names: list[str] | None = None,
        threshold: float = 0.5,
        classifier_dropout: float | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            pretrained: hub id, local folder or offline alias (`minilm-l6`) of an encoder.
            num_labels: number of labels (linked from the data).
            label_names: label names in id order (linked from the data).
            threshold: a label is predicted when its probability is >= this.
            classifier_dropout: dropout before the classification head (None: the model config's).
        """
        super().__init__(pretrained=pretrained, **kwargs)
        metrics = multilabel_metrics(num_labels, threshold)
        self.train_metrics, self.val_metrics, self.test_metrics = (metrics.clone() for _ in STAGES)
        from torchmetrics.aggregation import MeanMetric
        from torchmetrics.classification import MultilabelConfusionMatrix

        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.test_confusion = MultilabelConfusionMatrix(num_labels, threshold=threshold)

    def model_kwargs(self) -> dict[str, Any]:
        # problem_type is saved in config.json: pipelines then apply a sigmoid per label
        return {**head_kwargs(self.label_names, self.hparams.classifier_dropout),
                "problem_type": "multi_label_classification"}

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
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
        return loss, logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def _label_set(self, flags: list[bool]) -> str:
        return "|".join(name for name, on in zip(self.label_names, flags, strict=True) if on)

    def _rows_from_logits(self, logits: torch.Tensor, labels: torch.Tensor | None, digits: int | None) -> list[Record]:
        probs = logits.float().sigmoid().cpu().tolist()
        threshold = self.hparams.threshold
        refs = labels.cpu().tolist() if labels is not None else [None] * len(probs)
        records = [Record(reference=None if ref is None else self._label_set([v >= 0.5 for v in ref]),
                          prediction=self._label_set([p >= threshold for p in row]),
                          scores={f"prob_{n}": (p if digits is None else round(p, digits))
                                  for n, p in zip(self.label_names, row, strict=True)})
                   for row, ref in zip(probs, refs, strict=True)]
        if labels is not None:  # per-row shares of the test metrics that are means over rows (for intervals)
            target = labels.float()
            loss = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").mean(-1)
            right = (logits.float().sigmoid() >= threshold) == (target >= 0.5)
            for record, row_loss, share, exact in zip(records, loss.tolist(), right.float().mean(-1).tolist(),
                                                      right.all(-1).tolist(), strict=True):
                record.metrics.update(loss=row_loss, accuracy=share, exact_match=float(exact))
        return records

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        _, logits = self._step(batch, "test")
        self.test_confusion.update(logits.sigmoid(), batch["labels"].long())
        self.add_records(batch, self._rows_from_logits(logits, batch["labels"], digits=None))

    def predict_records(self, batch: dict[str, torch.Tensor]) -> list[Record]:
        """The predicted labels ("a|b", empty for none) and each label's probability, per row."""
        return self._rows_from_logits(self(batch), None, digits=6)

    def outputs_for(self, records: list[Record]) -> TaskOutputs:
        outputs = super().outputs_for(records)
        per_label = self.test_confusion.compute().cpu()  # (labels, 2, 2): [[tn, fp], [fn, tp]]
        self.test_confusion.reset()
        outputs.confusion_matrix = ConfusionMatrix(
            rows=self.label_names, columns=["true_negative", "false_positive", "false_negative", "true_positive"],
            counts=[[int(v) for v in m.flatten().tolist()] for m in per_label])
        return outputs

    def epoch_end(self, stage: str) -> None:
        collection = getattr(self, f"{stage}_metrics")
        self.log_dict(flatten_metrics(stage, collection.compute(), self.label_names))
        collection.reset()
