"""Callbacks that turn a run into files a person can read: metrics.json, the confusion matrix, test records,
predictions, throughput, summary.md, plots/ and the Hugging Face export hf_model/.

What they know of a task is the contract of `ftl.models.outputs` (`TaskModule.test_outputs` after test, the
records `predict_step` returns) and the metrics it logged; nothing else is looked up on a task or data module.
"""

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

from ftl.data.text import TextDataModule
from ftl.models.base import TaskModule, gather_records
from ftl.models.outputs import Record, TaskOutputs
from ftl.reports.checkpoint import read_checkpoint_lazily


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


def write_text_atomic(path: Path, text: str) -> Path:
    """Write via a temporary sibling and a rename, so a crash never leaves half a file that looks valid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_json(path: Path, data: dict) -> None:
    """metrics.json and friends, written atomically (see `write_text_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_rows(path: Path, rows: list[dict[str, Any]], fmt: str) -> Path:
    """Rows as CSV (header from the first row) or JSONL, atomically."""
    import csv
    import io

    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return write_text_atomic(path, buffer.getvalue())
    return write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def task_outputs(pl_module: L.LightningModule) -> TaskOutputs | None:
    """The task contract of the test that just ended (None for modules that are not ftl tasks)."""
    return pl_module.test_outputs if isinstance(pl_module, TaskModule) else None


def confusion_csv(outputs: TaskOutputs) -> str:
    matrix = outputs.confusion_matrix
    corner = "true\\pred" if matrix.square else "label"
    lines = [",".join([corner, *matrix.columns])]
    for name, row in zip(matrix.rows, matrix.counts, strict=True):
        lines.append(",".join([name, *(str(int(v)) for v in row)]))
    return "\n".join(lines) + "\n"


class RunOutputs(L.Callback):
    """Writes `metrics.json` (final metrics of the stage that ran) and, from the task's `TaskOutputs`,
    `confusion_matrix.csv` and the test records (`test_predictions.csv` / `generations.jsonl`) to the run dir."""

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
        outputs = task_outputs(pl_module)
        if not trainer.is_global_zero or outputs is None:
            return
        run_dir = self._run_dir(trainer)
        if outputs.confusion_matrix is not None:
            write_text_atomic(run_dir / "confusion_matrix.csv", confusion_csv(outputs))
        if outputs.records:
            # per test row, in the data's order: inputs, reference, prediction, scores (full precision)
            write_rows(run_dir / outputs.records_file, outputs.rows(), outputs.records_format)
            # test_rows.json and a 95% interval beside each test metric in metrics.json (ftl.reports.intervals)
            from ftl.reports.intervals import settings_of, with_intervals
            from ftl.reports.records import ROWS_FILE

            path = run_dir / "metrics.json"
            rows_text, metrics = with_intervals(outputs, json.loads(path.read_text()) if path.is_file() else {},
                                                settings_of(trainer))
            write_text_atomic(run_dir / ROWS_FILE, rows_text)
            write_json(path, metrics)

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
        # final train loss and metrics of the last epoch, and throughput (Throughput); a run resumed after its
        # training had ended (killed during test) trains nothing in this session: its logged values stand. Values
        # of the last batch alone (`*_step`) stay in metrics.csv: they are one batch's noise, not a result.
        train = {**logged_metrics(trainer, "train/"),
                 **{key: value for key, value in trainer.callback_metrics.items() if key.startswith("train/")}}
        self._save_metrics(trainer, "train/", {key: value for key, value in train.items() if not key.endswith("_step")})


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
        self._apply()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._apply()  # a run resumed mid-epoch (Ctrl-C) gets no on_train_epoch_start for that epoch

    def _apply(self) -> None:
        # applied when training resumes, not on load: the sanity check and setup in between then cannot shift it
        if self._loaded is None:
            return
        import random

        torch.set_rng_state(self._loaded["torch"])
        random.setstate(self._loaded["python"])
        if "cuda" in self._loaded and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self._loaded["cuda"])
        self._loaded = None


class PredictionWriter(BasePredictionWriter):
    """Writes the records `predict_step` returns (`TaskModule`: one `Record` per input, with the input columns)
    to `predictions.csv` or `.jsonl` (the task's `records_format`), in the data's order."""

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        if not isinstance(pl_module, TaskModule):
            return
        records: list[Record] = gather_records([record for batch in predictions or [] for record in batch])
        if not trainer.is_global_zero or not records:
            return
        outputs = pl_module.plain_outputs(records)
        path = Path(trainer.default_root_dir) / f"predictions.{outputs.records_format}"
        write_rows(path, outputs.rows(), outputs.records_format)
        print(f"ftl: wrote {len(records)} predictions to {path}")


def batch_rows(batch: Any) -> int:
    """Rows in a batch: the first dimension of its first tensor (ftl batches are dicts of tensors)."""
    # transformers' collators return BatchEncoding, a Mapping that is not a dict
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else [batch]
    for value in values:
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return 0


class Throughput(L.Callback):
    """Logs, for train, val and test: `<stage>/runtime` (s), `samples_per_sec`, `steps_per_sec`, `tokens_per_sec`
    (non-padding tokens), `tflops` (achieved model TFLOP/s) and, where the device's peak is known, `mfu` (model
    FLOPs utilisation, 0-1), so they reach every logger, metrics.csv and metrics.json. FLOPs and peaks:
    `ftl.reports.flops`.

    Defined as Hugging Face Trainer defines `train_runtime`/`eval_samples_per_second`, so numbers compare with
    reference runs: train runtime is the wall clock of the training loop so far (validation included; logged
    at every epoch end), train steps are optimizer steps, samples and tokens count every row seen (times the
    number of processes); an evaluation's runtime is one pass over its split, its steps are batches. Train
    `tflops` and `mfu` leave the validation passes out of the time: they measure the training computation.
    Hand-written because Lightning's ThroughputMonitor reports rolling per-step windows, not per-stage totals.

    Args:
        peak_tflops: the peak TFLOP/s of one device at the run's precision, for MFU where ftl's table (Lightning's,
            by GPU name) has none, e.g. 989 for an H100 SXM in bf16; CPUs have no entry.
    """

    def __init__(self, peak_tflops: float | None = None) -> None:
        self.peak_tflops = peak_tflops
        self._start: dict[str, float] = {}
        self._samples: dict[str, int] = {}
        self._steps: dict[str, int] = {}
        self._tokens: dict[str, Any] = {}
        self._slots: dict[str, int] = {}  # token positions of the padded batches, padding included
        self._flops: dict[str, Any] = {}
        self._shape: tuple[int, int, int, int] | None = None
        self._first_step = 0
        self._validating = 0.0  # seconds of validation inside the training loop so far
        # train tokens and padded slots counted before a resume (from the checkpoint), so tokens per step and the
        # padding share, which do not depend on time, cover the whole run as in an unbroken one
        self._earlier: tuple[float, int] = (0, 0)

    def _begin(self, stage: str, pl_module: L.LightningModule) -> None:
        from ftl.reports.flops import transformer_shape

        self._start[stage], self._samples[stage], self._steps[stage] = time.perf_counter(), 0, 0
        self._tokens[stage], self._flops[stage], self._slots[stage] = 0, 0.0, 0
        # the outermost module with a transformers config: the model (or its LoRA wrapper) the task trains
        model = next((m for m in pl_module.modules() if hasattr(m, "config") and m is not pl_module), None)
        self._shape = transformer_shape(model) if model is not None else None

    def _count(self, stage: str, batch: Any) -> None:
        if stage not in self._start:
            return
        from ftl.reports.flops import batch_length, batch_tokens, flops_per_token

        self._samples[stage] += batch_rows(batch)
        self._steps[stage] += 1
        tokens = batch_tokens(batch)
        self._tokens[stage] = self._tokens[stage] + tokens
        ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
        self._slots[stage] += int(ids.numel()) if isinstance(ids, torch.Tensor) else 0
        if self._shape is not None:
            per_token = flops_per_token(self._shape, batch_length(batch), training=stage == "train")
            self._flops[stage] = self._flops[stage] + tokens * per_token

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str, steps: int | None = None) -> None:
        if stage not in self._start:
            return
        from ftl.reports.flops import peak_flops

        seconds = max(time.perf_counter() - self._start[stage], 1e-9)
        samples = self._samples[stage] * trainer.world_size
        steps = self._steps[stage] if steps is None else steps
        tokens, flops = (float(value) * trainer.world_size for value in (self._tokens[stage], self._flops[stage]))
        values = {f"{stage}/runtime": seconds, f"{stage}/samples_per_sec": samples / seconds,
                  f"{stage}/steps_per_sec": steps / seconds, f"{stage}/tokens_per_sec": tokens / seconds}
        all_tokens, all_slots, all_steps = tokens, self._slots[stage], steps
        if stage == "train":  # the whole run's, a resumed one included
            all_tokens += float(self._earlier[0]) * trainer.world_size
            all_slots, all_steps = all_slots + self._earlier[1], trainer.global_step
        if all_steps and all_slots:  # what packing and length grouping change
            values[f"{stage}/tokens_per_step"] = all_tokens / all_steps
            values[f"{stage}/padding_share"] = 1.0 - all_tokens / (all_slots * trainer.world_size)
        if self._shape is not None:
            computing = max(seconds - (self._validating if stage == "train" else 0.0), 1e-9)
            values[f"{stage}/tflops"] = flops / computing / 1e12
            peak = peak_flops(pl_module.device, trainer.precision, self.peak_tflops)
            if peak:
                values[f"{stage}/mfu"] = flops / computing / (peak * trainer.world_size)
        pl_module.log_dict(values, on_step=False, on_epoch=True)
        self._last = (stage, samples, seconds, tokens)

    def _say(self, trainer: L.Trainer) -> None:
        stage, samples, seconds, tokens = getattr(self, "_last", (None, 0, 0.0, 0.0))
        if stage and trainer.is_global_zero:
            print(f"ftl: {stage}: {samples:,} samples in {seconds:.1f} s ({samples / seconds:.2f} samples/s, "
                  f"{tokens / seconds:,.0f} tokens/s)")

    def state_dict(self) -> dict[str, Any]:
        """This rank's train tokens and padded slots so far (a checkpoint carries them into a resumed run)."""
        if "train" not in self._start:
            return {}
        return {"train_tokens": float(self._earlier[0] + self._tokens["train"]),
                "train_slots": int(self._earlier[1] + self._slots["train"])}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._earlier = (state_dict.get("train_tokens", 0), state_dict.get("train_slots", 0))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin("train", pl_module)
        self._first_step, self._validating = trainer.global_step, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._count("train", batch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "train", steps=trainer.global_step - self._first_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._say(trainer)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._begin("val", pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self._count("val", batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, "val")
            if "train" in self._start:
                self._validating += time.perf_counter() - self._start["val"]
            self._start.pop("val", None)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin("test", pl_module)

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


def logged_metrics(trainer: L.Trainer, prefix: str) -> dict[str, float]:
    """The last value logged under each `prefix` key in the CSV log (metrics.csv, earlier sessions of a resumed
    run included); `<key>_epoch` is also given as `<key>`, as Lightning's callback_metrics do at an epoch's end."""
    from ftl.reports.tables import read_metrics_csv

    values: dict[str, float] = {}
    if not trainer.is_global_zero:  # (other ranks' CSV loggers hold no file: only rank 0 writes metrics.json)
        return values
    for row in read_metrics_csv(flush_csv_logs(trainer)):
        values.update({key: value for key, value in row.items() if key.startswith(prefix)})
    values.update({key[: -len("_epoch")]: value for key, value in list(values.items()) if key.endswith("_epoch")})
    return values


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
    """Writes `summary.md` (see `ftl.reports.summary`) after fit and again after each test: the latest numbers."""

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
        from ftl.reports.summary import collect, write_summary

        flush_csv_logs(trainer)
        info = collect(trainer, pl_module, _latest_metrics(trainer), self._fit_seconds, self._started)
        write_summary(Path(trainer.default_root_dir) / "summary.md", info)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_seconds = time.perf_counter() - self._t0
        self._write(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module)


class Plots(L.Callback):
    """`plots/loss.png` after fit; after test, for classifiers, `plots/confusion_matrix.png`,
    `plots/reliability.png` and, for binary tasks, `plots/precision_recall.png`; for regression tasks (numbers
    as references and predictions), `plots/regression_scatter.png` (see `ftl.reports.plots`)."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from ftl.reports import plots
        from ftl.reports.tables import read_metrics_csv

        rows = read_metrics_csv(flush_csv_logs(trainer))
        plots.loss_curves(rows, Path(trainer.default_root_dir) / "plots" / "loss.png")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        outputs = task_outputs(pl_module)
        if not trainer.is_global_zero or outputs is None:
            return
        from ftl.reports import plots

        folder = Path(trainer.default_root_dir) / "plots"
        matrix = outputs.confusion_matrix
        if matrix is not None and matrix.square:
            plots.confusion_matrix(torch.tensor(matrix.counts), matrix.rows, folder / "confusion_matrix.png")
        positive = outputs.positive_label
        key = f"prob_{positive}"
        if positive and outputs.records and all(key in r.scores for r in outputs.records):
            probs = torch.tensor([r.scores[key] for r in outputs.records])
            labels = torch.tensor([int(r.reference == positive) for r in outputs.records])
            preds = torch.tensor([int(r.prediction == positive) for r in outputs.records])
            plots.precision_recall(probs, labels, positive, folder / "precision_recall.png", preds)
        names = outputs.label_names or []
        columns = [f"prob_{name}" for name in names]
        if matrix is not None and matrix.square and outputs.records and \
                all(all(c in r.scores for c in columns) and r.reference in names for r in outputs.records):
            probs = torch.tensor([[r.scores[c] for c in columns] for r in outputs.records])
            truth = torch.tensor([names.index(r.reference) for r in outputs.records])
            ece = _scalar(trainer.callback_metrics.get("test/ece"))
            plots.reliability(probs.max(-1).values.tolist(), (probs.argmax(-1) == truth).float().tolist(),
                              folder / "reliability.png", ece=ece)
        numbers = outputs.numeric_pairs()
        if numbers is not None:  # regression: predicted vs true per test row
            plots.regression_scatter(*numbers, folder / "regression_scatter.png",
                                     pearson=_scalar(trainer.callback_metrics.get("test/pearson")),
                                     spearman=_scalar(trainer.callback_metrics.get("test/spearman")))


class HFExport(L.Callback):
    """At the end of fit, saves the best checkpoint (the last weights if none was saved) as a Hugging Face folder
    `hf_model/` (model, tokenizer with the run's max_length, label names) that `transformers.pipeline` loads;
    see `ftl.reports.export`.

    A best checkpoint of the step training ended at holds the weights in memory, so those are exported without
    loading it: loading builds a second model and reads the whole file, optimizer state included (smollm2-135m,
    benchmarks/results/sft_peer_memory.txt: the fit's peak RSS 5,777 -> 5,345 MB).
    """

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not isinstance(pl_module, TaskModule):
            return
        from ftl.reports.export import export_module, module_from_checkpoint

        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
        in_memory = not best or _checkpoint_step(best) == trainer.global_step  # the weights are those of `best`
        module = pl_module if in_memory else module_from_checkpoint(type(pl_module), best)
        datamodule = trainer.datamodule
        tokenizer, max_length = (datamodule.tokenizer, datamodule.max_length) \
            if isinstance(datamodule, TextDataModule) else (None, None)
        out = Path(trainer.default_root_dir) / "hf_model"
        export_module(module, out, tokenizer, max_length=max_length, overwrite=True)  # a resumed run replaces it
        print(f"ftl: exported {'the best checkpoint' if best else 'the final weights'} to {out}")


def _checkpoint_step(path: str) -> int | None:
    """The `global_step` a checkpoint was saved at, read without loading its tensors."""
    try:
        return int(read_checkpoint_lazily(path).get("global_step", -1))
    except (OSError, RuntimeError, ValueError, TypeError):
        return None
