"""Callbacks that turn a run into files a person can read: metrics.json, the confusion matrix, test predictions,
throughput, summary.md, plots/ and the Hugging Face export hf_model/."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
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

    def _save_metrics(self, trainer: L.Trainer, prefix: str, values: dict | None = None) -> None:
        if not trainer.is_global_zero:
            return
        path = self._run_dir(trainer) / "metrics.json"
        metrics = json.loads(path.read_text()) if path.exists() else {}
        for key, value in (trainer.callback_metrics if values is None else values).items():
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
        if trainer.is_global_zero and trainer.world_size == 1:
            self._save_test_predictions(trainer, pl_module)

    def _save_test_predictions(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """`test_predictions.csv`: per test row the inputs, true and predicted label, every probability (full
        precision), from a classifier's `test_outputs` (`probs`, `labels`, `preds`, rows in data order)."""
        import csv

        outputs, names = getattr(pl_module, "test_outputs", None), getattr(pl_module, "label_names", None)
        if not outputs or not names or not {"probs", "labels"} <= set(outputs[0]):
            return
        merged = {key: torch.cat([o[key] for o in outputs]) for key in ("probs", "labels")}
        if merged["labels"].ndim != 1:  # one label per row only (multi-label rows have a vector)
            return
        preds = torch.cat([o["preds"] for o in outputs]) if "preds" in outputs[0] else merged["probs"].argmax(-1)
        datamodule = trainer.datamodule
        raw = getattr(datamodule, "raw", None)
        inputs = [{}] * len(preds)
        same_rows = raw is not None and "test" in raw and len(raw["test"]) == len(preds)
        if same_rows and hasattr(datamodule, "input_columns"):
            inputs = raw["test"].select_columns(datamodule.input_columns()).to_list()
        path = self._run_dir(trainer) / "test_predictions.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = None
            for inp, label, pred, probs in zip(inputs, merged["labels"].tolist(), preds.tolist(),
                                               merged["probs"].tolist(), strict=True):
                row = {**inp, "label": names[label], "predicted_label": names[pred]}
                row.update({f"prob_{name}": repr(p) for name, p in zip(names, probs, strict=True)})
                if writer is None:
                    writer = csv.DictWriter(f, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(row)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._save_metrics(trainer, "val/")
        elif trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._note_best(trainer)
            values = {k: _scalar(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            self._pending_val = {k: v for k, v in values.items() if v is not None}

    # After fit, metrics.json's val/* are those of the validation that made the best checkpoint (the model
    # that is tested and exported), not of the last epoch: `ftl sweep` ranks trials on them.
    _pending_val: dict | None = None
    _best_val: dict | None = None
    _best_key: tuple | None = None

    _restored = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._restored:  # a resumed run (--ckpt_path) continues the bookkeeping its checkpoint carried
            self._pending_val, self._best_val, self._best_key = None, None, None
        self._restored = False

    def state_dict(self) -> dict[str, Any]:
        key = list(self._best_key) if self._best_key is not None else None
        return {"pending_val": self._pending_val, "best_val": self._best_val, "best_key": key}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_val, self._best_val = state_dict.get("pending_val"), state_dict.get("best_val")
        key = state_dict.get("best_key")
        self._best_key = tuple(key) if key is not None else None
        self._restored = True

    def _note_best(self, trainer: L.Trainer) -> None:
        """ModelCheckpoint runs after this callback, so only a later hook sees whether the last validation
        made a new best checkpoint: its best path or score changed since then."""
        ckpt = trainer.checkpoint_callback
        best = (ckpt.best_model_path, _scalar(ckpt.best_model_score)) if ckpt is not None else None
        if self._pending_val is not None and (best is None or best != self._best_key):
            self._best_val = self._pending_val
        self._best_key, self._pending_val = best, None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._note_best(trainer)
        ckpt = trainer.checkpoint_callback
        if not self._best_val and ckpt is not None and ckpt.monitor and _scalar(ckpt.best_model_score) is not None:
            # resumed, and the best checkpoint predates the resume: only its monitored value is known
            self._best_val = {ckpt.monitor: _scalar(ckpt.best_model_score)}
        if self._best_val:
            self._save_metrics(trainer, "val/", self._best_val)
        self._save_metrics(trainer, "train/")  # final train loss and throughput (Throughput)


class ResumeRandomState(L.Callback):
    """Saves the random generators' state in every checkpoint and restores it when `--ckpt_path` resumes a fit.

    Lightning does not checkpoint them, so a resumed run would draw other dropout masks than the unbroken run.
    With this, and training order seeded per epoch (`ftl.data.sampling`), a run stopped after epoch k and
    resumed ends with the same weights as an unbroken one. (NumPy's generator is left out: HF models and ftl
    draw from torch and Python only.)
    """

    def __init__(self) -> None:
        self._loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        import random

        state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = state_dict

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # applied when training resumes, not on load: the sanity check and setup in between then cannot shift it
        if self._loaded is None:
            return
        import random

        torch.set_rng_state(self._loaded["torch"])
        random.setstate(self._loaded["python"])
        if "cuda" in self._loaded and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self._loaded["cuda"])
        self._loaded = None


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


def _batch_size(batch: Any) -> int:
    """Rows in a batch: the first dimension of its first tensor (ftl batches are dicts of tensors)."""
    # transformers' collators return BatchEncoding, a Mapping that is not a dict
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else [batch]
    for value in values:
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return 0


class Throughput(L.Callback):
    """Logs `<stage>/runtime` (s), `<stage>/samples_per_sec` and `<stage>/steps_per_sec` for train, val and test,
    so they reach every logger, metrics.csv and metrics.json.

    Defined as Hugging Face Trainer defines `train_runtime`/`eval_samples_per_second`, so numbers compare with
    reference runs: train runtime is the wall clock of the training loop so far (validation included; logged
    at every epoch end), train steps are optimizer steps, samples count every row seen (times the number of
    processes); an evaluation's runtime is one pass over its split, its steps are batches.
    Hand-written because Lightning's ThroughputMonitor reports rolling per-step windows, not per-stage totals.
    """

    def __init__(self) -> None:
        self._start: dict[str, float] = {}
        self._samples: dict[str, int] = {}
        self._steps: dict[str, int] = {}
        self._first_step = 0

    def _begin(self, stage: str) -> None:
        self._start[stage], self._samples[stage], self._steps[stage] = time.perf_counter(), 0, 0

    def _count(self, stage: str, batch: Any) -> None:
        if stage in self._start:
            self._samples[stage] += _batch_size(batch)
            self._steps[stage] += 1

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str, steps: int | None = None) -> None:
        if stage not in self._start:
            return
        seconds = max(time.perf_counter() - self._start[stage], 1e-9)
        samples = self._samples[stage] * trainer.world_size
        steps = self._steps[stage] if steps is None else steps
        pl_module.log_dict({f"{stage}/runtime": seconds, f"{stage}/samples_per_sec": samples / seconds,
                            f"{stage}/steps_per_sec": steps / seconds}, on_step=False, on_epoch=True)
        self._last = (stage, samples, seconds)

    def _say(self, trainer: L.Trainer) -> None:
        stage, samples, seconds = getattr(self, "_last", (None, 0, 0.0))
        if stage and trainer.is_global_zero:
            print(f"ftl: {stage}: {samples:,} samples in {seconds:.1f} s ({samples / seconds:.2f} samples/s)")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin("train")
        self._first_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._count("train", batch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "train", steps=trainer.global_step - self._first_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._say(trainer)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._begin("val")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self._count("val", batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, "val")
            self._start.pop("val", None)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin("test")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._count("test", batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "test")
        self._say(trainer)


def flush_csv_logs(trainer: L.Trainer) -> Path:
    """Write the CSV logger's buffered rows now (Lightning finalizes loggers after on_fit_end); metrics.csv path."""
    from lightning.pytorch.loggers import CSVLogger

    path = Path(trainer.default_root_dir) / "metrics.csv"
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            logger.save()
            path = Path(logger.experiment.metrics_file_path)
    return path


def _latest_metrics(trainer: L.Trainer) -> dict[str, float]:
    """metrics.json overlaid with the scalars logged last (whatever order the callbacks run in)."""
    path = Path(trainer.default_root_dir) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    for key, value in trainer.callback_metrics.items():
        number = _scalar(value)
        if number is not None and key.split("/", 1)[0] in ("train", "test"):
            metrics[key] = number
    return metrics


class RunSummary(L.Callback):
    """Writes `summary.md` (see `ftl.summary`) after fit and again after each test, so it holds the latest numbers."""

    def __init__(self) -> None:
        self._fit_seconds: float | None = None
        self._started = None
        self._t0 = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from datetime import datetime

        self._started, self._t0 = datetime.now(), time.perf_counter()

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from ftl.summary import collect, write_summary

        flush_csv_logs(trainer)
        info = collect(trainer, pl_module, _latest_metrics(trainer), self._fit_seconds, self._started)
        write_summary(Path(trainer.default_root_dir) / "summary.md", info)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_seconds = time.perf_counter() - self._t0
        self._write(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module)


class Plots(L.Callback):
    """`plots/loss.png` after fit; after test, for classifiers, `plots/confusion_matrix.png` and, for binary
    tasks, `plots/precision_recall.png` (see `ftl.plots`)."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from ftl import plots
        from ftl.tables import read_metrics_csv

        rows = read_metrics_csv(flush_csv_logs(trainer))
        plots.loss_curves(rows, Path(trainer.default_root_dir) / "plots" / "loss.png")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        matrix, names = getattr(pl_module, "confusion_matrix", None), getattr(pl_module, "label_names", None)
        if not trainer.is_global_zero or matrix is None or not names:
            return
        from ftl import plots

        folder = Path(trainer.default_root_dir) / "plots"
        plots.confusion_matrix(matrix, names, folder / "confusion_matrix.png")
        outputs = getattr(pl_module, "test_outputs", None)
        if len(names) == 2 and outputs and trainer.world_size == 1 and {"probs", "labels"} <= set(outputs[0]):
            probs = torch.cat([o["probs"] for o in outputs])[:, 1]
            labels = torch.cat([o["labels"] for o in outputs])
            preds = torch.cat([o["preds"] for o in outputs]) if "preds" in outputs[0] else None
            if labels.ndim == 1:
                plots.precision_recall(probs, labels, names[1], folder / "precision_recall.png", preds)


class HFExport(L.Callback):
    """At the end of fit, saves the best checkpoint (the last weights if none was saved) as a Hugging Face folder
    `hf_model/` (model, tokenizer, label names) that `transformers.pipeline` loads; see `ftl.export`."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not hasattr(getattr(pl_module, "model", None), "save_pretrained"):
            return
        import shutil

        from ftl.export import module_from_checkpoint, save_hf_folder

        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
        module = module_from_checkpoint(type(pl_module), best) if best else pl_module
        out = Path(trainer.default_root_dir) / "hf_model"
        shutil.rmtree(out, ignore_errors=True)  # a resumed run replaces its export
        save_hf_folder(module, out, getattr(trainer.datamodule, "tokenizer", None))
        print(f"ftl: exported {'the best checkpoint' if best else 'the final weights'} to {out}")
