"""Callbacks that turn a run into files a person can read: metrics.json and the confusion matrix."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch


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
