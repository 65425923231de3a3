"""Steady-state step timing for `benchmarks/gpu_check.py`, the same for ftl (a Lightning callback) and HF/TRL.

Each framework's own numbers (ftl's metrics.json, HF's `train_samples_per_second`) time the whole training loop,
first steps included; on a GPU those pay for CUDA and cuBLAS start-up, which weighs heavily in a run of a few
hundred 15 ms steps. `StepLog` therefore also times the steps after `warmup` alone, with one device sync at
each end of that span (none per step, so the CPU still runs ahead of the GPU as it does in a plain run), and
counts their rows, non-padding tokens and analytic FLOPs (`ftl.reports.flops`) the same way for every framework.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ftl.reports.flops import batch_length, batch_tokens, flops_per_token, transformer_shape


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepLog:
    """Rows, tokens and FLOPs of every training batch, and the wall time of the steps after `warmup`."""

    def __init__(self, warmup: int, last_step: int) -> None:
        self.warmup, self.last_step = warmup, last_step
        self.rows: list[int] = []
        self.tokens: list[Any] = []  # tensors stay on their device until the end: no sync per step
        self.lengths: list[int] = []
        self.shape: tuple[int, int, int, int] | None = None
        self.marks: dict[str, float] = {}

    def set_model(self, model: torch.nn.Module) -> None:
        self.shape = transformer_shape(model)

    def batch(self, batch: Any) -> None:
        """Count one training batch (called once per optimizer step: no gradient accumulation here)."""
        ids = batch.get("input_ids") if hasattr(batch, "get") else None
        self.rows.append(int(ids.shape[0]) if isinstance(ids, torch.Tensor) else 0)
        self.tokens.append(batch_tokens(batch))
        self.lengths.append(batch_length(batch))

    def step_end(self, step: int) -> None:
        """`step` optimizer steps are done: mark the start (after warmup) and the end of the timed span."""
        if step == self.warmup:
            _sync()
            self.marks["start"] = time.perf_counter()
        if step == self.last_step:
            _sync()
            self.marks["end"] = time.perf_counter()

    def result(self) -> dict[str, Any]:
        """Steady-state samples/s, tokens/s, TFLOP/s over steps warmup+1..last_step, and peak GPU memory."""
        out: dict[str, Any] = {"steps_seen": len(self.rows)}
        if torch.cuda.is_available():
            out["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            out["peak_gpu_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        if "start" not in self.marks or "end" not in self.marks:
            return out
        span = slice(self.warmup, self.last_step)
        seconds = self.marks["end"] - self.marks["start"]
        tokens = [float(t) for t in self.tokens[span]]
        rows, lengths = self.rows[span], self.lengths[span]
        out.update(steady_steps=len(rows), steady_seconds=seconds, steady_samples_per_s=sum(rows) / seconds,
                   steady_tokens_per_s=sum(tokens) / seconds, mean_padded_length=sum(lengths) / max(len(lengths), 1))
        if self.shape is not None:
            flops = sum(t * flops_per_token(self.shape, n, training=True) for t, n in zip(tokens, lengths,
                                                                                        strict=True))
            out["steady_tflops"] = flops / seconds / 1e12
            out["total_flops"] = sum(float(t) * flops_per_token(self.shape, n, training=True)
                                     for t, n in zip(self.tokens, self.lengths, strict=True))
        out["total_tokens"] = sum(float(t) for t in self.tokens)
        return out

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.result(), indent=2))


class StepTimer(L.Callback):
    """`StepLog` for an `ftl fit` run, added with `--trainer.callbacks+=gpu_timer.StepTimer`; its settings come
    from the environment (GPU_CHECK_TIMER_OUT, GPU_CHECK_WARMUP, GPU_CHECK_STEPS) so the command line stays short."""

    def __init__(self) -> None:
        self.out = os.environ["GPU_CHECK_TIMER_OUT"]
        self.steps = StepLog(int(os.environ.get("GPU_CHECK_WARMUP", "10")), int(os.environ["GPU_CHECK_STEPS"]))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = next((m for m in pl_module.modules() if hasattr(m, "config") and m is not pl_module), None)
        if model is not None:
            self.steps.set_model(model)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.steps.batch(batch)
        self.steps.step_end(trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.steps.write(self.out)
