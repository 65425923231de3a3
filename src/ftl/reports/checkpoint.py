"""`RunCheckpoint`: Lightning's ModelCheckpoint, except that a `last.ckpt` of the same step as the checkpoint just
saved (the best one, when the last epoch is the best) is a hard link to it instead of a second copy.

Why: a run's last epoch is often its best, and both files then hold the same state: 2 x 272 MB for MiniLM with
optimizer state, 2 x 1.6 GB for SmolLM2. A hard link costs no space, survives the removal of the best file
when a better one replaces it, and is removed (never written through) before a later `last.ckpt` is saved,
so the two never change each other. Where links are impossible (another filesystem), it saves a copy as
Lightning does.

Every checkpoint file is written under a temporary name and renamed into place, so an interrupt or a crash
during a save never leaves a half-written `*.ckpt` that looks valid (Lightning writes the final path directly).
"""

from __future__ import annotations

import os
from weakref import proxy

from lightning.pytorch.callbacks import ModelCheckpoint


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose last.ckpt shares the file of a same-step checkpoint (see the module docstring)."""

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        if not self.save_last:
            return
        filepath = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
        same = self._last_checkpoint_saved
        shares = bool(same) and self._last_global_step_saved == trainer.global_step \
            and os.path.abspath(same) != os.path.abspath(filepath)
        if trainer.is_global_zero and os.path.lexists(filepath):
            os.remove(filepath)  # never write through a link into the best checkpoint
        trainer.strategy.barrier()
        previous, self.last_model_path = self.last_model_path, filepath
        linked = False
        if shares and trainer.is_global_zero:
            try:
                os.link(same, filepath)
                linked = True
            except OSError:
                linked = False
        linked = trainer.strategy.broadcast(linked)
        if not linked:
            self._save_checkpoint(trainer, filepath)
        if previous and self._should_remove_checkpoint(trainer, previous, filepath):
            self._remove_checkpoint(trainer, previous)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        """Lightning's save, through a temporary file renamed into place (see the module docstring)."""
        folder, name = os.path.split(filepath)
        tmp = os.path.join(folder, f".{name}.tmp")
        trainer.save_checkpoint(tmp, self.save_weights_only)
        if trainer.is_global_zero:
            if os.path.isdir(tmp):  # a sharded (FSDP) checkpoint is a folder: replace it whole
                if os.path.isdir(filepath):
                    import shutil

                    shutil.rmtree(filepath)
            os.replace(tmp, filepath)
        trainer.strategy.barrier()
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
