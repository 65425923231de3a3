"""Sequence regression: one number per text (or text pair) from a pretrained encoder, trained with MSE.

A one-output `AutoModelForSequenceClassification` head (`problem_type: regression`, so a `text-classification`
pipeline on the export returns the raw number). With `standardize_targets`, the model learns `(y - mean) / std`
with the training split's mean and std (linked from the data as `target_stats`) and answers in the data's own
units: the two numbers are kept in every checkpoint, and the export folds them into its output layer
(`std * (w x + b) + mean`), so the exported model answers in the data's units too (`config.json` records them).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ftl.errors import FTLError
from ftl.models.base import STAGES, TaskModule
from ftl.models.outputs import Record

# test metrics in the order they are reported; each is a torchmetrics metric in the data's units
REGRESSION_METRICS = ("mse", "mae", "pearson", "spearman", "r2")


def regression_metrics():
    """MSE, MAE, Pearson and Spearman correlation and R² (torchmetrics), one collection cloned per stage."""
    import warnings

    from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection, PearsonCorrCoef, R2Score
    from torchmetrics.regression import SpearmanCorrCoef

    with warnings.catch_warnings():  # "will save all targets and predictions": one float pair per row, as intended
        warnings.filterwarnings("ignore", message=".*SpearmanCorrcoef.*")
        spearman = SpearmanCorrCoef()
    return MetricCollection({"mse": MeanSquaredError(), "mae": MeanAbsoluteError(), "pearson": PearsonCorrCoef(),
                             "spearman": spearman, "r2": R2Score()})


class SequenceRegressor(TaskModule):
    """Fine-tunes a pretrained encoder with a fresh one-output head on a number per row (MSE loss).

    Logs `<stage>/loss` (the training objective: MSE on standardised targets when `standardize_targets`) and,
    for val and test, `mse`, `mae`, `pearson`, `spearman` and `r2` in the data's units. Test records give each
    row's target, prediction and its squared and absolute error (the per-row values behind the intervals).
    """

    auto_class = "AutoModelForSequenceClassification"
    lora_task_type = "SEQ_CLS"
    reference_name, prediction_name = "target", "predicted"

    def __init__(
        self,
        pretrained: str = "minilm-l6",
        standardize_targets: bool = False,
        target_stats: list[float] | None = None,
        classifier_dropout: float | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            pretrained: hub id, local folder or offline alias (`minilm-l6`) of an encoder.
            standardize_targets: learn (target - mean) / std with the training split's mean and std; predictions,
                metrics and the export stay in the data's units.
            target_stats: [mean, std] of the training targets (linked from the data).
            classifier_dropout: dropout before the regression head (None: the model config's).
        """
        super().__init__(pretrained=pretrained, **kwargs)
        self.target_mean, self.target_std = 0.0, 1.0
        if standardize_targets:
            if not target_stats or len(target_stats) != 2:
                raise FTLError("standardize_targets needs the training targets' mean and std, which "
                               "TextRegressionDataModule links in (data.target_stats): use it, or set "
                               "model.target_stats [mean, std]")
            mean, std = (float(v) for v in target_stats)
            if not std > 0:
                raise FTLError(f"every training target is {mean}: nothing to standardise or learn; check the label "
                               "column, or set model.standardize_targets false")
            self.target_mean, self.target_std = mean, std
        metrics = regression_metrics()  # (no train metrics: train/loss is the MSE)
        self.val_metrics, self.test_metrics = (metrics.clone() for stage in STAGES if stage != "train")
        from torchmetrics.aggregation import MeanMetric

        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()

    def model_kwargs(self) -> dict[str, Any]:
        dropout = self.hparams.classifier_dropout
        extra = {} if dropout is None else {"classifier_dropout": dropout}
        # a checkpoint with another head (a classifier's) gets a fresh one-output head instead of an error
        return {"num_labels": 1, "problem_type": "regression", "ignore_mismatched_sizes": True, **extra}

    # ------------------------------------------------------------------ standardisation, kept in checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ftl_target_stats"] = [self.target_mean, self.target_std]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the weights were trained in the checkpoint's units, whatever data the config links in now
        stats = checkpoint.get("ftl_target_stats")
        if stats is not None:
            self.target_mean, self.target_std = float(stats[0]), float(stats[1])

    def export_config(self) -> dict[str, Any]:
        return {"problem_type": "regression", "ftl_target_mean": self.target_mean, "ftl_target_std": self.target_std}

    def exported_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to export with the standardisation folded into its one-output layer: weight and bias times
        std, plus mean on the bias, so the exported output is the prediction in the data's units."""
        if self.target_mean == 0.0 and self.target_std == 1.0:
            return model
        import copy

        if model is self.model:
            model = copy.deepcopy(model)
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1]
        if not head or head[-1].bias is None:
            raise FTLError("no one-output layer with a bias to fold the target standardisation into: export without "
                           "standardize_targets")
        with torch.no_grad():
            head[-1].weight.mul_(self.target_std)
            head[-1].bias.mul_(self.target_std).add_(self.target_mean)
        return model

    # ------------------------------------------------------------------ steps
    def raw_outputs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The head's output per row (standardised units when standardising), float32."""
        return self(batch).squeeze(-1).float()

    def to_units(self, outputs: torch.Tensor) -> torch.Tensor:
        """Head outputs -> predictions in the data's units."""
        return outputs * self.target_std + self.target_mean

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        outputs = self.raw_outputs(batch)
        targets = batch["labels"].float()
        loss = F.mse_loss(outputs, (targets - self.target_mean) / self.target_std)
        n = targets.shape[0]
        if stage == "train":
            self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        else:
            predictions = self.to_units(outputs.detach())
            getattr(self, f"{stage}_metrics").update(predictions, targets)
            meter = getattr(self, f"{stage}_loss")  # a torchmetrics mean: exact across processes (as the classifier)
            meter.update(loss.detach(), weight=n)
            self.log(f"{stage}/loss", meter, on_step=False, on_epoch=True, prog_bar=True)
        return loss, outputs.detach(), targets

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        _, outputs, targets = self._step(batch, "test")
        predictions = self.to_units(outputs)
        scaled = (targets - self.target_mean) / self.target_std
        records = []
        for p, t, o, s in zip(predictions.tolist(), targets.tolist(), outputs.tolist(), scaled.tolist(), strict=True):
            # each row's share of test/loss, test/mse and test/mae (means over rows): their intervals; the reference
            # (the target as the data has it, not as float32) comes from the data module
            records.append(Record(prediction=p,
                                  metrics={"loss": (o - s) ** 2, "mse": (p - t) ** 2, "mae": abs(p - t)}))
        self.add_records(batch, records)

    def predict_records(self, batch: dict[str, torch.Tensor]) -> list[Record]:
        """The predicted number per row, in the data's units."""
        return [Record(prediction=p) for p in self.to_units(self.raw_outputs(batch)).tolist()]

    def epoch_end(self, stage: str) -> None:
        if stage == "train":
            return
        collection = getattr(self, f"{stage}_metrics")
        values = {f"{stage}/{key}": value for key, value in collection.compute().items()}
        collection.reset()
        self.log_dict(values, sync_dist=False)  # already synced by torchmetrics
