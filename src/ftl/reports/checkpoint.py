"""`RunCheckpoint`: Lightning's ModelCheckpoint, except that a `last.ckpt` of the same step as the checkpoint just
saved (the best one, when the last epoch is the best) is a hard link to it instead of a second copy.

Why: a run's last epoch is often its best, and both files then hold the same state: 2 x 272 MB for MiniLM with
optimizer state, 2 x 1.6 GB for SmolLM2. A hard link costs no space, survives the removal of the best file
when a better one replaces it, and is removed (never written through) before a later `last.ckpt` is saved,
so the two never change each other. Where links are impossible (another filesystem), it saves a copy as
Lightning does.
"""

from __future__ import annotations

import os

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
