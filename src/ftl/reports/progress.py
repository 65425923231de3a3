"""`ProgressLines`: a plain progress line every N seconds, for output that is not a terminal (nohup, a cluster
job's log file), where a live progress bar writes nothing readable until the run ends.

    ftl: epoch 1/3, step 120/306 (39%), loss 0.4127, 24.1 samples/s, elapsed 1:19, ETA 2:03
"""

from __future__ import annotations

import sys
import time

import lightning as L
import torch

from ftl.reports.callbacks import batch_rows


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressLines(L.Callback):
    """Prints training progress as one line every `every_s` seconds (and at each epoch end) to stderr.

    Args:
        every_s: seconds between lines (0: every step).
        enabled: off until the CLI sees that output is not a terminal.
    """

    def __init__(self, every_s: float = 30.0, enabled: bool = False) -> None:
        self.every_s = every_s
        self.enabled = enabled
        self._start = self._last = 0.0
        self._samples = 0
        self._first_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.perf_counter()
        self._samples, self._first_step = 0, trainer.global_step

    def _line(self, trainer: L.Trainer, batch_idx: int) -> str:
        elapsed = time.perf_counter() - self._start
        total = int(trainer.estimated_stepping_batches)
        done = trainer.global_step - self._first_step
        remaining = max(0, total - trainer.global_step)
        eta = elapsed / done * remaining if done else 0.0
        batches = trainer.num_training_batches
        share = f" ({100 * (batch_idx + 1) / batches:.0f}%)" if isinstance(batches, int) and batches else ""
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}",
                 f"step {batch_idx + 1}/{batches}{share}"]
        loss = trainer.callback_metrics.get("train/loss_step", trainer.callback_metrics.get("train/loss"))
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            parts.append(f"loss {float(loss):.4f}")
        parts += [f"{self._samples * trainer.world_size / max(elapsed, 1e-9):.1f} samples/s",
                  f"elapsed {_clock(elapsed)}", f"ETA {_clock(eta)}"]
        return "ftl: " + ", ".join(parts)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._samples += batch_rows(batch)
        now = time.perf_counter()
        if self.enabled and trainer.is_global_zero and now - self._last >= self.every_s:
            self._last = now
            print(self._line(trainer, batch_idx), file=sys.stderr, flush=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """One line per epoch with its validation metrics (validation runs before this hook)."""
        if not self.enabled or not trainer.is_global_zero:
            return
        values = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/") and k.count("/") == 1
                  and isinstance(v, torch.Tensor) and v.numel() == 1}  # not the per-label ones
        order = sorted(values, key=lambda k: (k != "val/loss", k))[:5]
        shown = ", ".join(f"{k} {float(values[k]):.4f}" for k in order) or "no validation"
        print(f"ftl: epoch {trainer.current_epoch + 1}/{trainer.max_epochs} done: {shown}, elapsed "
              f"{_clock(time.perf_counter() - self._start)}", file=sys.stderr, flush=True)
