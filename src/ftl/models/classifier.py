"""Sequence classification over any `AutoModelForSequenceClassification`, measured with torchmetrics."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from ftl.errors import FTLError
from ftl.models.base import STAGES, TaskModule
from ftl.models.outputs import ConfusionMatrix, Record, TaskOutputs


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


def head_kwargs(label_names: list[str], classifier_dropout: float | None) -> dict[str, Any]:
    """`from_pretrained` arguments for a classification head over these labels (names saved in config.json)."""
    extra = {} if classifier_dropout is None else {"classifier_dropout": classifier_dropout}
    return {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
        # a checkpoint fine-tuned on another label set gets a fresh head instead of an error
        "ignore_mismatched_sizes": True,
        **extra,
    }


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


ECE_BINS = 15


def calibration_metrics(num_labels: int):
    """Expected calibration error (torchmetrics, 15 equal-width bins of the top label's probability) and the
    Brier score (a mean of `brier_scores`), for `test/ece` and `test/brier`."""
    from torchmetrics.aggregation import MeanMetric
    from torchmetrics.classification import MulticlassCalibrationError

    return MulticlassCalibrationError(num_labels, n_bins=ECE_BINS, norm="l1"), MeanMetric()


def brier_scores(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: the sum over labels of (probability - 1[true label])^2, halved for two labels (scikit-learn's
    `brier_score_loss` convention: binary is (p_positive - y)^2). 0 is perfect."""
    target = F.one_hot(labels.long(), probs.shape[-1]).to(probs.dtype)
    score = ((probs - target) ** 2).sum(-1)
    return score / 2 if probs.shape[-1] == 2 else score


def _gather(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' rows (uneven sizes allowed) under DDP; the tensor itself on one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    from torchmetrics.utilities.distributed import gather_all_tensors

    return torch.cat(gather_all_tensors(tensor))


class SequenceClassifier(TaskModule):
    """Fine-tunes a pretrained encoder with a fresh classification head (one label per row, softmax).

    `num_labels` and `label_names` are linked from the data module by the CLI; configs never repeat them,
    and neither do they repeat `label_counts` (training rows per label, for `class_weights: balanced`).
    Optimizer, schedule, LoRA and loading options are those of `ftl.models.base.TaskModule`.
    """

    auto_class = "AutoModelForSequenceClassification"
    lora_task_type = "SEQ_CLS"  # peft then also trains (and saves) the fresh classification head
    reference_name, prediction_name = "label", "predicted_label"

    def __init__(
        self,
        pretrained: str = "minilm-l6",
        num_labels: int = 2,
        label_names: list[str] | None = None,
        classifier_dropout: float | None = None,
        class_weights: Literal["balanced"] | list[float] | None = None,
        label_counts: list[int] | None = None,
        decision_threshold: float | None = None,
        tune_threshold: ThresholdMethod | None = None,
        calibration: Literal["temperature"] | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            pretrained: hub id, local folder or offline alias (`minilm-l6`) of an encoder.
            num_labels: number of classes (linked from the data).
            label_names: class names in label-id order (linked from the data).
            classifier_dropout: dropout before the classification head (None: the model config's).
            class_weights: "balanced", one weight per label, or None: weights of the cross-entropy loss.
            label_counts: training rows per label (linked from the data; used by class_weights: balanced).
            decision_threshold: binary tasks: predict the second label when its probability is >= this.
            tune_threshold: binary tasks: "f1" or "youden": after each validation, the threshold that maximises
                it on the validation split; validation metrics use it, it is logged (`val/threshold`), saved in
                checkpoints and used for test and predict (`test/threshold` in metrics.json).
            calibration: "temperature": after each validation, fit one temperature T on the validation split
                (LBFGS on the NLL of softmax(logits / T)); it is logged (`val/temperature`), saved in checkpoints
                and divides the logits at test, predict and in the export (folded into the output layer), so
                probabilities are calibrated and the predicted labels unchanged. `test/ece_unscaled` keeps
                the ECE before scaling. Not with a decision threshold (it was chosen on unscaled probabilities).
        """
        super().__init__(pretrained=pretrained, **kwargs)
        self.register_buffer("class_weight", self._class_weight_tensor(), persistent=False)
        self.threshold = self._initial_threshold()
        self._val_scores: list[torch.Tensor] = []
        self.temperature: float | None = self._initial_temperature()
        self._val_logits: list[torch.Tensor] = []
        metrics = classification_metrics(num_labels)
        # One attribute per stage (a ModuleDict cannot hold the key "train": nn.Module.train exists).
        self.train_metrics, self.val_metrics, self.test_metrics = (metrics.clone() for _ in STAGES)
        from torchmetrics.aggregation import MeanMetric
        from torchmetrics.classification import MulticlassConfusionMatrix

        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.test_confusion = MulticlassConfusionMatrix(num_labels)
        self.test_ece, self.test_brier = calibration_metrics(num_labels)
        self.test_ece_unscaled = calibration_metrics(num_labels)[0]

    def model_kwargs(self) -> dict[str, Any]:
        return head_kwargs(self.label_names, self.hparams.classifier_dropout)

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

    def _initial_temperature(self) -> float | None:
        hp = self.hparams
        if hp.calibration is None:
            return None
        if hp.decision_threshold is not None or hp.tune_threshold is not None:
            raise FTLError("calibration: temperature changes the probabilities a decision threshold was chosen on: "
                           "use calibration or decision_threshold/tune_threshold, not both")
        return 1.0

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # kept beside the weights (not a buffer) so checkpoints written before thresholds existed still load
        checkpoint["ftl_threshold"] = self.threshold
        checkpoint["ftl_temperature"] = self.temperature

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("ftl_threshold") is not None:
            self.threshold = float(checkpoint["ftl_threshold"])
        if checkpoint.get("ftl_temperature") is not None and self.hparams.get("calibration"):
            self.temperature = float(checkpoint["ftl_temperature"])

    def export_config(self) -> dict[str, Any]:
        # for the record: pipelines use argmax; a temperature is already folded into the exported weights
        out: dict[str, Any] = {} if self.threshold is None else {"ftl_decision_threshold": float(self.threshold)}
        if self.temperature is not None:
            out["ftl_temperature"] = float(self.temperature)
        return out

    def exported_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to export with the temperature folded in: the output layer's weight and bias divided by T,
        so the exported logits are `logits / T` and a pipeline's probabilities are the calibrated ones."""
        if self.temperature is None or self.temperature == 1.0:
            return model
        import copy

        if model is self.model:
            model = copy.deepcopy(model)
        k = len(self.label_names)
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == k]
        if not head:
            raise FTLError(f"no output layer with {len(self.label_names)} outputs to fold the temperature into: "
                           "export without calibration")
        with torch.no_grad():
            head[-1].weight.div_(self.temperature)
            if head[-1].bias is not None:
                head[-1].bias.div_(self.temperature)
        return model

    def scaled(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits divided by the fitted temperature (unchanged without calibration)."""
        return logits if self.temperature is None else logits / self.temperature

    # ------------------------------------------------------------------ loss and decisions
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
        if stage == "val" and self.temperature is not None:  # the temperature is fitted on these
            self._val_logits.append(torch.cat([logits.detach().float(), labels[:, None].float()], dim=1))
        if stage == "test":
            self._unscaled_probs = logits.detach().float().softmax(-1)
            logits = self.scaled(logits)
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

    def _rows_from_logits(self, logits: torch.Tensor, labels: torch.Tensor | None, digits: int | None) -> list[Record]:
        names = self.label_names
        probs = logits.float().softmax(-1).cpu().tolist()
        preds = self.predict_labels(logits).tolist()
        refs = labels.tolist() if labels is not None else [None] * len(preds)
        records = [Record(reference=None if ref is None else names[ref], prediction=names[pred],
                          scores={f"prob_{n}": (p if digits is None else round(p, digits))
                                  for n, p in zip(names, row, strict=True)})
                   for row, pred, ref in zip(probs, preds, refs, strict=True)]
        if labels is not None:  # each row's cross-entropy (weighted by its label's class weight, as the loss is)
            losses = F.cross_entropy(logits.float(), labels, reduction="none").cpu().tolist()
            weights = self.class_weight[labels].cpu().tolist() if self.class_weight is not None else None
            for i, record in enumerate(records):
                record.metrics["loss"] = losses[i]
                if weights is not None:
                    record.weights["loss"] = weights[i]
        return records

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        _, logits = self._step(batch, "test")
        self.test_confusion.update(self.predict_labels(logits), batch["labels"])
        probs = logits.detach().float().softmax(-1)
        self.test_ece.update(probs, batch["labels"])
        if self.temperature is not None:
            self.test_ece_unscaled.update(self._unscaled_probs, batch["labels"])
        self.test_brier.update(brier_scores(probs, batch["labels"]))
        # full-precision probabilities, and the model's own decisions (threshold included)
        self.add_records(batch, self._rows_from_logits(logits, batch["labels"], digits=None))

    def predict_records(self, batch: dict[str, torch.Tensor]) -> list[Record]:
        """The predicted label name and the probability of every label, per row."""
        return self._rows_from_logits(self.scaled(self(batch)), None, digits=6)

    def outputs_for(self, records: list[Record]) -> TaskOutputs:
        outputs = super().outputs_for(records)
        names = self.label_names
        counts = [[int(v) for v in row] for row in self.test_confusion.compute().tolist()]
        self.test_confusion.reset()
        outputs.confusion_matrix = ConfusionMatrix(rows=names, columns=names, counts=counts)
        outputs.positive_label = names[1] if len(names) == 2 else None
        return outputs

    # ------------------------------------------------------------------ epoch-end metrics
    def epoch_end(self, stage: str) -> None:
        if self._tuning(stage):
            self._tune_threshold()
        collection = getattr(self, f"{stage}_metrics")
        values = flatten_metrics(stage, collection.compute(), self.label_names)
        collection.reset()
        self.log_dict(values, sync_dist=False)  # already synced by torchmetrics
        if stage == "test":
            self.log_dict({"test/ece": self.test_ece.compute(), "test/brier": self.test_brier.compute()},
                          sync_dist=False)
            self.test_ece.reset()
            self.test_brier.reset()
            if self.temperature is not None:
                self.log_dict({"test/ece_unscaled": self.test_ece_unscaled.compute(),
                               "test/temperature": float(self.temperature)}, sync_dist=False)
                self.test_ece_unscaled.reset()
        if stage == "val" and self.temperature is not None:
            self._fit_temperature()
        if stage == "test" and self.threshold is not None:
            self.log("test/threshold", float(self.threshold), sync_dist=False)

    def on_validation_epoch_start(self) -> None:
        self._val_scores = []
        self._val_logits = []

    def _fit_temperature(self) -> None:
        """One temperature for the model as it is now, from every rank's validation logits (see `calibration`)."""
        from ftl.models.calibration import fit_temperature

        k = len(self.label_names)
        local = torch.cat(self._val_logits) if self._val_logits else torch.zeros(0, k + 1, device=self.device)
        rows = _gather(local).cpu().double()
        self._val_logits = []
        if len(rows) == 0:
            return
        logits, labels = rows[:, :k], rows[:, k].long()
        self.temperature = fit_temperature(logits.numpy(), labels.numpy())
        nll = float(F.cross_entropy(logits / self.temperature, labels))
        if self._trainer is not None:
            self.log_dict({"val/temperature": self.temperature, "val/nll_scaled": nll}, sync_dist=False)

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
