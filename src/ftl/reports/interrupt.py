"""`SaveOnInterrupt`: Ctrl-C during training finishes the running step, saves it as `last.ckpt`, then stops.

Python raises KeyboardInterrupt wherever the signal lands (inside backward, halfway through an optimizer step),
so the state at that instant is not one to resume from, and Lightning's `ModelCheckpoint(save_on_exception=True)`
saves it anyway. Here the first Ctrl-C during training is only noted: the step (and any gradient accumulation)
completes, `last.ckpt` is written with the full state (weights, optimizer, schedule, loop counters, random state,
and the position in the epoch's seeded data order: `TextDataModule.state_dict`), and the run stops before the
next step. `--ckpt_path last` then continues with the next batch, to the same final model as an unbroken run.

The checkpoint also carries what the epoch has accumulated so far for its epoch-level training metrics: the
states of the module's torchmetrics and Lightning's running means of values logged with `on_epoch=True`
(Lightning saves neither: a run resumed mid-epoch would report `train/loss` and `train/accuracy` over the rest of
the epoch only). They are put back before (torchmetrics) and after (Lightning's means, which exist only once the
first resumed step has logged) the first resumed step.

A second Ctrl-C exits at once (saving nothing more). Outside training steps (start-up, validation, test), on an
epoch's last batch (the epoch's own checkpoint comes right after it) and with several processes (every DDP rank
would have to save at the same step) Ctrl-C interrupts at once, as Python's default does; the last saved state is
then the last epoch's.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import lightning as L

from ftl.reports.checkpoint import RunCheckpoint

_KEY = "ftl_epoch_accumulators"  # in a mid-epoch checkpoint: the running training aggregates of its epoch


class SaveOnInterrupt(L.Callback):
    """Defers a training-time Ctrl-C to the end of the running step and saves that step as `last.ckpt`."""

    def __init__(self) -> None:
        self._previous: Any = None  # the SIGINT handler to put back
        self._deferring = False  # inside a training step that is not the epoch's last: defer a Ctrl-C
        self._requested = False
        self._saved = False
        self._accumulated: dict[str, Any] | None = None  # loaded from a mid-epoch checkpoint, put back on resume

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._requested:
            os._exit(130)  # a second Ctrl-C: at once
        if not self._deferring:
            raise KeyboardInterrupt
        self._requested = True
        print("ftl: Ctrl-C: finishing this training step and saving it, then stopping (Ctrl-C again stops at once, "
              "without saving)", file=sys.stderr, flush=True)

    def _install(self, trainer: L.Trainer) -> None:
        self._requested = self._saved = False
        if (trainer.world_size == 1 and isinstance(trainer.checkpoint_callback, RunCheckpoint)
                and trainer.checkpoint_callback.save_last and threading.current_thread() is threading.main_thread()):
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._saved:
            raise KeyboardInterrupt  # here, not right after the save, so the saved step's metrics get logged
        self._deferring = self._previous is not None and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if self._requested and not self._deferring:  # still accumulating when the epoch's last batch came
            raise KeyboardInterrupt

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stepped = (batch_idx + 1) % max(1, trainer.accumulate_grad_batches) == 0  # not mid-accumulation
        if self._accumulated is not None:
            self._restore_logged(trainer)
        if self._requested and not self._saved and self._deferring and stepped:
            trainer.checkpoint_callback.save_last_now(trainer)
            self._saved = True

    # ------------------------------------------------------------------ the epoch's running training aggregates
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if not (trainer.state.fn == "fit" and 0 < trainer.fit_loop.epoch_loop.batch_progress.current.processed
                < trainer.num_training_batches):  # (a validation inside the epoch saves a checkpoint too)
            return  # at an epoch's end the next epoch starts from zero anyway
        from torchmetrics import Metric

        metrics = {name: {"states": {state: _copy(getattr(module, state)) for state in module._defaults},
                          "updates": int(module._update_count)}
                   for name, module in pl_module.named_modules()
                   if isinstance(module, Metric) and module._update_count > 0}
        logged = {}  # Lightning's ResultCollection: the running sums behind `self.log(..., on_epoch=True)` values
        for key, result in trainer.fit_loop.epoch_loop._results.items():
            if result.is_tensor and result.meta.on_epoch:
                logged[key] = {state: _copy(getattr(result, state)) for state in result._defaults}
        checkpoint[_KEY] = {"metrics": metrics, "logged": logged}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._accumulated = checkpoint.get(_KEY)

    def _restore_metrics(self, pl_module: L.LightningModule) -> None:
        modules = dict(pl_module.named_modules())
        for name, saved in self._accumulated.pop("metrics", {}).items():
            metric = modules.get(name)
            if metric is None:
                continue
            for state, value in saved["states"].items():
                setattr(metric, state, _copy(value, metric.device))
            metric._update_count, metric._computed = saved["updates"], None

    def _restore_logged(self, trainer: L.Trainer) -> None:
        results = trainer.fit_loop.epoch_loop._results
        for key, saved in self._accumulated.pop("logged", {}).items():
            if key in results:  # logged again by the first resumed step: add what came before it
                for state, value in saved.items():
                    current = getattr(results[key], state)
                    setattr(results[key], state, current + _copy(value, current.device))
        self._accumulated = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._accumulated:
            self._restore_metrics(pl_module)
        self._install(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._deferring = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._deferring = False

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        self._deferring = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()
        if isinstance(exception, KeyboardInterrupt):
            # Lightning now shuts down gracefully and ignores SIGINT meanwhile: a second Ctrl-C exits at once
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, lambda *_: os._exit(130))


def _copy(value: Any, device: Any = "cpu") -> Any:
    """A detached copy on `device` of a metric state (a tensor, or a list of tensors for cat-states)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().to(device, copy=True)
    if isinstance(value, list):
        return [_copy(item, device) for item in value]
    return value
