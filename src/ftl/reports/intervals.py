"""Confidence intervals on every test metric of a run, from its per-row records (see `ftl.reports.stats`).

After each test, `RunOutputs` writes what `with_intervals` returns: `test_rows.json` (the per-row columns) and
`metrics.json` with `<key>_ci_low` / `<key>_ci_high` beside each `test/<key>` that the rows can reproduce.
`summary.md` shows them as `0.955 [0.925, 0.980]`; W&B's summary gets them with metrics.json. The number of
resamples is the CLI's `--ci_resamples` (0 = off), handed to the trainer as the `CISettings` callback.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L

from ftl.models.outputs import TaskOutputs
from ftl.reports import stats
from ftl.reports.records import rows_file_text, rows_from_outputs
from ftl.reports.tables import CI_HIGH as HIGH
from ftl.reports.tables import CI_LOW as LOW
from ftl.reports.tables import is_interval_key


class CISettings(L.Callback):
    """Holds the run's confidence-interval settings for the callbacks that write test results."""

    def __init__(self, resamples: int = stats.DEFAULT_RESAMPLES, seed: int = stats.DEFAULT_SEED) -> None:
        """
        Args:
            resamples: bootstrap resamples of the test rows for each 95% interval (0: no intervals).
            seed: seed of the resampling (the same rows then give the same intervals).
        """
        if resamples < 0:
            from ftl.errors import FTLError

            raise FTLError(f"--ci_resamples must be 0 (off) or a positive number, got {resamples}")
        self.resamples, self.seed = int(resamples), int(seed)


def settings_of(trainer: L.Trainer) -> CISettings:
    """The trainer's `CISettings` callback, or the defaults (1,000 resamples) when it has none."""
    return next((cb for cb in trainer.callbacks if isinstance(cb, CISettings)), CISettings())


def interval_keys(metrics: dict[str, Any], rows: stats.Rows, resamples: int, seed: int,
                  stage: str = "test") -> dict[str, float]:
    """`{"test/accuracy_ci_low": ..., "test/accuracy_ci_high": ...}` for every `<stage>/` metric the rows give."""
    intervals = stats.bootstrap_intervals(rows, resamples, seed)
    out: dict[str, float] = {}
    for key, (low, high) in intervals.items():
        name = f"{stage}/{key}"
        if name in metrics and math.isfinite(low) and math.isfinite(high):
            out[name + LOW], out[name + HIGH] = low, high
    return out


def with_intervals(outputs: TaskOutputs, metrics: dict[str, Any], settings: CISettings
                   ) -> tuple[str, dict[str, Any]]:
    """(the text of `test_rows.json`, `metrics` with this test's intervals in place of any earlier ones)."""
    rows = rows_from_outputs(outputs)
    metrics = {key: value for key, value in metrics.items() if not (key.startswith("test/") and is_interval_key(key))}
    if settings.resamples:
        metrics.update(interval_keys(metrics, rows, settings.resamples, settings.seed))
    return rows_file_text(rows), metrics
