"""The metric tables a person reads (compare.md, summary.md): which metrics, in which order, under which name.

Rows come from the metric keys a module logs (`test/accuracy`, `test/f1/<label>`, `test/perplexity`, ...), so
any module works: known keys get a readable name and a fixed place, unknown ones follow under their own name.
Also reads Lightning's `metrics.csv` (one row per logging call, empty cells elsewhere) into per-epoch rows.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

# beside a metric key: the bounds of its 95% confidence interval (ftl.reports.intervals)
CI_LOW, CI_HIGH = "_ci_low", "_ci_high"


def is_interval_key(key: str) -> bool:
    """`test/accuracy_ci_low` and `_ci_high` keys are a metric's interval, not metrics of their own."""
    return key.endswith(CI_LOW) or key.endswith(CI_HIGH)

# (key after the stage prefix, display name); "{label}" expands to every label name, in label order.
_ROWS: list[tuple[str, str]] = [
    ("accuracy", "Accuracy"),
    ("recall/{label}", "Accuracy on {label}"),  # per-class accuracy: the share of <label> rows predicted as <label>
    ("precision/{label}", "Precision ({label})"),
    ("recall/{label}", "Recall ({label})"),
    ("f1/{label}", "F1 ({label})"),
    ("precision_macro", "Precision (macro)"),
    ("recall_macro", "Recall (macro)"),
    ("f1_macro", "F1 (macro)"),
    ("loss", "Eval loss"),
    ("ece", "ECE (15 bins)"),
    ("ece_unscaled", "ECE before temperature scaling"),
    ("brier", "Brier score"),
    ("temperature", "Temperature"),
    ("perplexity", "Perplexity"),
    ("rouge1", "ROUGE-1"),
    ("rouge2", "ROUGE-2"),
    ("rougeL", "ROUGE-L"),
    ("mse", "MSE"),
    ("mae", "MAE"),
    ("pearson", "Pearson r"),
    ("spearman", "Spearman rho"),
    ("r2", "R²"),
    ("runtime", "Eval runtime (s)"),
    ("samples_per_sec", "Eval samples/s"),
    ("steps_per_sec", "Eval steps/s"),
    ("tokens_per_sec", "Eval tokens/s"),
    ("tokens_per_step", "Eval tokens per batch"),
    ("padding_share", "Eval padding share"),
    ("tflops", "Eval TFLOP/s"),
    ("mfu", "Eval MFU"),
    ("gen_tokens", "Generated tokens"),
    ("gen_tokens_per_sec", "Generated tokens/s"),
]
# shown with 2 decimals (TFLOP/s and MFU keep 4: a tiny model on a CPU reaches ~0.0003 TFLOP/s)
_SPEED = ("runtime", "samples_per_sec", "steps_per_sec", "tokens_per_sec", "tokens_per_step", "gen_tokens",
          "gen_tokens_per_sec")


def label_names_in(keys: Iterable[str], stage: str = "test") -> list[str]:
    """Label names found in per-label keys (`test/f1/<label>`), in order of first appearance."""
    names: dict[str, None] = {}
    for key in keys:
        if is_interval_key(key):
            continue
        parts = key.split("/", 2)
        if len(parts) == 3 and parts[0] == stage:
            names.setdefault(parts[2], None)
    return list(names)


def metric_rows(keys: Iterable[str], stage: str = "test", label_names: Sequence[str] | None = None,
                ) -> list[tuple[str, str]]:
    """(metric key, display name) for every `<stage>/` key in `keys`: known metrics first, in reading order."""
    present = [k for k in keys if k.startswith(f"{stage}/") and not is_interval_key(k)]  # intervals ride along
    available = set(present)
    labels = list(label_names) if label_names else label_names_in(present, stage)
    rows: list[tuple[str, str]] = []
    for pattern, name in _ROWS:
        for label in labels if "{label}" in pattern else [None]:
            key = f"{stage}/" + (pattern.format(label=label) if label is not None else pattern)
            if key in available:
                rows.append((key, name.format(label=label) if label is not None else name))
    shown = {key for key, _ in rows}
    rows += [(key, key.split("/", 1)[1]) for key in sorted(available - shown)]
    return rows


def format_value(key: str, value: float | None, signed: bool = False) -> str:
    """Speed rows (seconds, per-second rates) with 2 decimals, everything else with 4; n/a when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    digits = 2 if key.rsplit("/", 1)[-1] in _SPEED else 4
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_with_interval(key: str, metrics: dict, signed: bool = False) -> str:
    """`0.9550 [0.9250, 0.9800]` when `metrics` hold the key's interval, else the value alone."""
    text = format_value(key, metrics.get(key), signed=signed)
    low, high = metrics.get(key + CI_LOW), metrics.get(key + CI_HIGH)
    if low is None or high is None or text == "n/a":
        return text
    return f"{text} [{format_value(key, low, signed)}, {format_value(key, high, signed)}]"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str | None = None) -> str:
    """A GitHub-flavoured markdown table; `align` is one character per column ('l' or 'r')."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "|".join(rule) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- metrics.csv
def read_metrics_csv(path: str | Path) -> list[dict[str, float]]:
    """Lightning CSVLogger rows as dicts of the cells that hold a number (epoch and step included)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            row = {}
            for key, cell in raw.items():
                try:
                    row[key] = float(cell)
                except (TypeError, ValueError):
                    continue
            rows.append(row)
    return rows


# The per-epoch columns of a run summary, in order; a column appears when some epoch has it.
EPOCH_COLUMNS: list[tuple[str, str]] = [
    ("train/loss_epoch", "train loss"),
    ("val/loss", "val loss"),
    ("val/accuracy", "val accuracy"),
    ("val/f1_macro", "val F1 (macro)"),
    ("val/perplexity", "val perplexity"),
    ("val/rougeL", "val ROUGE-L"),
    ("val/pearson", "val Pearson r"),
]


def epoch_table(rows: list[dict[str, float]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (epoch, step, train loss, val loss, val accuracy/perplexity...) from metrics.csv rows.

    `step` is the step Lightning logged at the end of the epoch (0-based, as in metrics.csv and the plots).
    When validation runs several times per epoch, the epoch shows the last one.
    """
    keys = [key for key, _ in EPOCH_COLUMNS if any(key in row for row in rows)]
    epochs: dict[int, dict[str, float]] = {}
    for row in rows:
        if "epoch" not in row or not any(key in row for key in keys):
            continue
        entry = epochs.setdefault(int(row["epoch"]), {})
        entry.update({key: row[key] for key in keys if key in row})
        if "step" in row:
            entry["step"] = max(entry.get("step", 0.0), row["step"])
    names = dict(EPOCH_COLUMNS)
    header = ["epoch", "step"] + [names[key] for key in keys]
    table = []
    for epoch in sorted(epochs):
        entry = epochs[epoch]
        step = str(int(entry["step"])) if "step" in entry else ""
        table.append([str(epoch), step] + [format_value(key, entry.get(key)) for key in keys])
    return header, table
