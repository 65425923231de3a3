"""Sequence classification over any `AutoModelForSequenceClassification`, measured with torchmetrics."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from ftl.errors import FTLError
from ftl.models.dropout import enable_fast_cpu_dropout
from ftl.models.lora import LoraSettings, apply_lora, as_hparam, log_parameter_counts
from ftl.models.optim import SchedulerName, configure_module_adamw

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


def balanced_weights(counts: list[int]) -> list[float]:
    """`n_rows / (n_labels * rows_of_label)` per label (scikit-learn's "balanced"): every label then carries the
    same total weight in the loss. A label with no training rows gets 0 (it never occurs in the loss anyway)."""
    total, k = sum(counts), len(counts)
    return [total / (k * c) if c else 0.0 for c in counts]


ThresholdMethod = Literal["f1", "youden"]


def choose_threshold(probs: torch.Tensor, labels: torch.Tensor, method: ThresholdMethod) -> float | None:
    """The probability cut for the positive label that maximises `method` on these rows (None if one class only).

    "f1": F1 of the positive label (precision-recall curve); "youden": sensitivity + specificity - 1 (ROC).
    A row is positive when its probability is >= the returned value.
    """
    from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc

    labels = labels.long()
    if labels.numel() == 0 or labels.min() == labels.max():
        return None
    probs = probs.float()
    if method == "f1":
        precision, recall, thresholds = binary_precision_recall_curve(probs, labels)
        precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
        score = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    else:
        fpr, tpr, thresholds = binary_roc(probs, labels)
        score = tpr - fpr
    return float(thresholds[int(score.argmax())].clamp(0.0, 1.0))


def _gather(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' rows (uneven sizes allowed) under DDP; the tensor itself on one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    from torchmetrics.utilities.distributed import gather_all_tensors

    return torch.cat(gather_all_tensors(tensor))


class SequenceClassifier(L.LightningModule):
    """Fine-tunes a pretrained encoder with a fresh classification head.

    `num_labels` and `label_names` are linked from the data module by the CLI; configs never repeat them,
    and neither do they repeat `label_counts` (training rows per label, for `class_weights: balanced`).

    - `class_weights`: "balanced", one weight per label, or None: weights of the cross-entropy loss (all stages).
    - `decision_threshold` (binary): predict the second label when its probability is >= this value.
    - `tune_threshold` (binary): "f1" or "youden": after each validation, the threshold that maximises it on the
      validation split; validation metrics use it, it is logged (`val/threshold`), saved in checkpoints and used
      for test and predict (`test/threshold` in metrics.json).
    - `lora`: train LoRA adapters (and the head) instead of every weight; see `ftl.models.lora`.
    - `fast_cpu_dropout`: on CPU, draw dropout masks from 16-bit random integers (`ftl.models.dropout`): same
      keep rate, 1.1-1.2x faster training steps on MiniLM here; False gives torch's own dropout.
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
        class_weights: Literal["balanced"] | list[float] | None = None,
        label_counts: list[int] | None = None,
        decision_threshold: float | None = None,
        tune_threshold: ThresholdMethod | None = None,
        lora: LoraSettings | None = None,
        fast_cpu_dropout: bool = True,
    ) -> None:
        super().__init__()
        if label_names is not None and len(label_names) != num_labels:
            raise ValueError(f"{len(label_names)} label_names for num_labels={num_labels}")
        self.label_names = list(label_names) if label_names else [str(i) for i in range(num_labels)]
        lora = as_hparam(lora)  # a plain dict in the checkpoint, so it loads with weights_only=True
        self.save_hyperparameters()
        # from_pretrained returns eval mode, and Lightning keeps each submodule's mode: without this,
        # dropout would be off during training (HF Trainer calls model.train() for the same reason).
        self.model = self._load_model().train()
        if fast_cpu_dropout:
            self.model = enable_fast_cpu_dropout(self.model)
        if lora:
            self.model = apply_lora(self.model, lora, task_type="SEQ_CLS")
        self.register_buffer("class_weight", self._class_weight_tensor(), persistent=False)
        self.threshold = self._initial_threshold()
        self._val_scores: list[torch.Tensor] = []
        metrics = classification_metrics(num_labels)
        # One attribute per stage (a ModuleDict cannot hold the key "train": nn.Module.train exists).
        self.train_metrics, self.val_metrics, self.test_metrics = (metrics.clone() for _ in STAGES)
        from torchmetrics.aggregation import MeanMetric
        from torchmetrics.classification import MulticlassConfusionMatrix

        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
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

    def _class_weight_tensor(self) -> torch.Tensor | None:
        hp = self.hparams
        weights = hp.class_weights
        if weights is None:
            return None
        if weights == "balanced":
            counts = hp.label_counts
            if not counts or len(counts) != hp.num_labels:
                raise FTLError(
                    "class_weights: balanced needs the training rows per label, which a classification data module "
                    "provides (the CLI links data.train_label_counts): use one, or give one weight per label"
                )
            weights = balanced_weights(list(counts))
        if isinstance(weights, str) or len(weights) != hp.num_labels:
            raise FTLError(
                f"class_weights {weights!r} does not give one weight per label ({hp.num_labels}: "
                f"{', '.join(self.label_names)}): use 'balanced' or a list of {hp.num_labels} numbers"
            )
        return torch.tensor([float(w) for w in weights])

    def _initial_threshold(self) -> float | None:
        hp = self.hparams
        if hp.decision_threshold is None and hp.tune_threshold is None:
            return None
        if hp.num_labels != 2:
            raise FTLError(
                f"decision_threshold/tune_threshold apply to binary tasks, but the data has {hp.num_labels} labels: "
                "remove them"
            )
        threshold = 0.5 if hp.decision_threshold is None else float(hp.decision_threshold)
        if not 0.0 <= threshold <= 1.0:
            raise FTLError(f"decision_threshold must be a probability in [0, 1], got {threshold}")
        return threshold

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # kept beside the weights (not a buffer) so checkpoints written before thresholds existed still load
        checkpoint["ftl_threshold"] = self.threshold

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("ftl_threshold") is not None:
            self.threshold = float(checkpoint["ftl_threshold"])

    def on_fit_start(self) -> None:
        log_parameter_counts(self)

    # ------------------------------------------------------------------ forward and loss
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "row_idx")}
        return self.model(**inputs).logits

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, weight=self.class_weight)

    def predict_labels(self, logits: torch.Tensor) -> torch.Tensor:
        """Label ids: the most probable label, or for binary tasks with a threshold, positive when p >= it."""
        if self.threshold is None:
            return logits.argmax(-1)
        return (logits.float().softmax(-1)[:, 1] >= self.threshold).long()

    def _tuning(self, stage: str) -> bool:
        return stage == "val" and self.hparams.tune_threshold is not None

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch)
        labels = batch["labels"]
        loss = self.loss(logits, labels)
        if self._tuning(stage):  # metrics wait for the threshold chosen on the whole split
            probs = logits.detach().float().softmax(-1)[:, 1]
            self._val_scores.append(torch.stack([probs, labels.float()], dim=1))
        else:
            getattr(self, f"{stage}_metrics").update(self.predict_labels(logits.detach()), labels)
        if stage == "train":
            # Logging a tensor defers the host sync to the logger's flush, not every step.
            self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True,
                     batch_size=labels.shape[0])
        else:
            # A torchmetrics mean, not `self.log(..., sync_dist=True)`: with gloo, Lightning averages the summed
            # batch sizes across processes in integer arithmetic, which skews the loss whenever the rows do not
            # split evenly (ftl's evaluation shards never pad, so they often do not).
            meter = getattr(self, f"{stage}_loss")
            meter.update(loss.detach().float(), weight=labels.shape[0])
            self.log(f"{stage}/loss", meter, on_step=False, on_epoch=True, prog_bar=True)
        return loss, logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        _, logits = self._step(batch, "test")
        preds = self.predict_labels(logits)
        self.test_confusion.update(preds, batch["labels"])
        # preds: the model's own decisions (threshold included) for test_predictions.csv and plots
        output = {"probs": logits.float().softmax(-1).cpu(), "labels": batch["labels"].cpu(), "preds": preds.cpu()}
        if "row_idx" in batch:
            output["row_idx"] = batch["row_idx"].cpu()
        self.test_outputs.append(output)

    # PredictionWriter (ftl.callbacks) writes predict_step's records beside the inputs, as CSV.
    prediction_format = "csv"

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> list[dict[str, Any]]:
        """One record per input: the predicted label name and the probability of every label."""
        logits = self(batch)
        probs = logits.float().softmax(-1).cpu()
        records = []
        for row, best in zip(probs.tolist(), self.predict_labels(logits).tolist(), strict=True):
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

    def on_validation_epoch_start(self) -> None:
        self._val_scores = []

    def on_validation_epoch_end(self) -> None:
        if self._tuning("val"):
            self._tune_threshold()
        self._log_epoch_metrics("val")

    def _tune_threshold(self) -> None:
        """Choose the threshold on every rank's validation rows, then score this rank's rows with it."""
        local = torch.cat(self._val_scores) if self._val_scores else torch.zeros(0, 2, device=self.device)
        scores = _gather(local)
        chosen = choose_threshold(scores[:, 0], scores[:, 1], self.hparams.tune_threshold)
        if chosen is not None:
            self.threshold = chosen
        self.val_metrics.update((local[:, 0] >= self.threshold).long(), local[:, 1].long())
        self.log("val/threshold", float(self.threshold), sync_dist=False)
        self._val_scores = []

    def _all_ranks(self, outputs: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        """Under DDP each process scored its own shard of the test rows: every process gets all of them."""
        if not outputs or self.trainer.world_size == 1:
            return outputs
        merged = {key: torch.cat([o[key] for o in outputs]) for key in outputs[0]}
        return [{key: _gather(value.to(self.device)).cpu() for key, value in merged.items()}]

    def on_test_epoch_start(self) -> None:
        self.test_outputs = []
        self.test_confusion.reset()

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")
        if self.threshold is not None:
            self.log("test/threshold", float(self.threshold), sync_dist=False)
        self.test_outputs = restore_order(self._all_ranks(self.test_outputs))
        self.confusion_matrix = self.test_confusion.compute().cpu()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict:
        return configure_module_adamw(self)
