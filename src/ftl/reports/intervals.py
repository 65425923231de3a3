"""Confidence intervals on every test metric of a run, from its per-row records (see `ftl.reports.stats`).

After each test, `save_intervals` writes `test_rows.json` (the per-row columns) and adds `<key>_ci_low` /
`<key>_ci_high` beside each `test/<key>` of `metrics.json` that the rows can reproduce. `summary.md` shows them as
`0.955 [0.925, 0.980]`; W&B's summary gets them with metrics.json. The number of resamples is the CLI's
`--ci_resamples` (0 = off), handed to the trainer as the `CISettings` callback.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L

from ftl.models.outputs import TaskOutputs
from ftl.reports import stats
from ftl.reports.records import rows_from_outputs, write_rows_file
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


def save_intervals(run_dir: str | Path, outputs: TaskOutputs, settings: CISettings) -> dict[str, float]:
    """Write `test_rows.json` and add the intervals to `run_dir/metrics.json`; returns the interval keys."""
    from ftl.reports.callbacks import write_json

    rows = rows_from_outputs(outputs)
    write_rows_file(Path(run_dir), rows)
    path = Path(run_dir) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    metrics = {key: value for key, value in metrics.items() if not (key.startswith("test/") and is_interval_key(key))}
    added = interval_keys(metrics, rows, settings.resamples, settings.seed) if settings.resamples else {}
    metrics.update(added)
    write_json(path, metrics)
    return added
