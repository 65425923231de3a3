"""Callbacks that turn a run into files a person can read: metrics.json and the confusion matrix."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


def write_json(path: Path, data: dict) -> None:
    """Write via a temporary file so a crash never leaves half a metrics file behind."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


class RunOutputs(L.Callback):
    """Writes `metrics.json` (final metrics of the stage that ran) and `confusion_matrix.csv` to the run dir."""

    def _run_dir(self, trainer: L.Trainer) -> Path:
        return Path(trainer.default_root_dir)

    def _save_metrics(self, trainer: L.Trainer, prefix: str) -> None:
        if not trainer.is_global_zero:
            return
        path = self._run_dir(trainer) / "metrics.json"
        metrics = json.loads(path.read_text()) if path.exists() else {}
        for key, value in trainer.callback_metrics.items():
            number = _scalar(value)
            if key.startswith(prefix) and number is not None:
                metrics[key] = number
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, metrics)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_metrics(trainer, "test/")
        matrix = getattr(pl_module, "confusion_matrix", None)
        names = getattr(pl_module, "label_names", None)
        if trainer.is_global_zero and matrix is not None and names:
            rows = ["true\\pred," + ",".join(names)]
            for name, row in zip(names, matrix.tolist(), strict=True):
                rows.append(f"{name}," + ",".join(str(int(v)) for v in row))
            (self._run_dir(trainer) / "confusion_matrix.csv").write_text("\n".join(rows) + "\n")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._save_metrics(trainer, "val/")


def _dataset_indices(batch_indices: Any, n_batches: int) -> list[int]:
    """Flatten Lightning's per-batch sampler indices (one dataloader) into one list."""
    per_loader = batch_indices[0] if batch_indices else []
    if per_loader and isinstance(per_loader[-1], list) and per_loader[-1] and isinstance(per_loader[-1][0], list):
        per_loader = per_loader[-1]  # Lightning stores references to its growing list of seen batches
    return [int(i) for batch in per_loader[:n_batches] for i in batch]


class PredictionWriter(BasePredictionWriter):
    """Writes `predict_step`'s records (one dict per input) beside the inputs to `predictions.csv` or `.jsonl`.

    The module chooses the format with a `prediction_format` attribute ("csv" or "jsonl"); the data module
    supplies the inputs in the same order through `predict_inputs()`.
    """

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        if not trainer.is_global_zero or not predictions:
            return
        records = [record for batch in predictions for record in batch]
        order = _dataset_indices(batch_indices, len(predictions))
        if len(order) == len(records):  # evaluation batches are sorted by length: put rows back in data order
            restored: list[Any] = [None] * len(records)
            for position, record in zip(order, records, strict=True):
                restored[position] = record
            records = restored
        datamodule = trainer.datamodule
        inputs = datamodule.predict_inputs() if hasattr(datamodule, "predict_inputs") else [{}] * len(records)
        rows = [{**inp, **rec} for inp, rec in zip(inputs, records, strict=True)]
        fmt = getattr(pl_module, "prediction_format", "jsonl")
        path = Path(trainer.default_root_dir) / f"predictions.{fmt}"
        if fmt == "csv":
            import csv

            with open(path, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        else:
            path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        print(f"ftl: wrote {len(rows)} predictions to {path}")
