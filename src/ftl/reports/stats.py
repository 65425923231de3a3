"""Statistics over test rows: bootstrap confidence intervals, paired tests between two models, calibration.

The one statistics module the reports use (`metrics.json` CIs, `compare`, `compare --runs`). Everything starts
from `Rows`: per-row columns of one model's test pass (true and predicted label ids, probabilities, per-row
metric values), built from the task contract (`ftl.reports.records`).

Every metric here is a function of **sums of per-row columns** (accuracy: sum of `correct`; precision of a
label: its true positives and predicted positives; a token-weighted loss: sum of loss x tokens and of tokens;
ECE: per-bin sums of confidence minus correctness). So a bootstrap resample is one vector of row counts, and
all resamples of all metrics are one matrix product `counts @ columns`. A paired permutation (swap the two
models' outputs on a random subset of rows) is linear in the same columns too.

Why hand-written rather than `scipy.stats.bootstrap`: scipy calls the statistic once per metric, and once per
resample for statistics that are not a plain mean (per-label F1...). Measured here (1,000 resamples, percentile,
one statistic per metric, `vectorized=False`): a binary 200-row test, 11 metrics, 0.31 s with scipy vs 0.011 s
here; 5 labels and 2,000 rows, 20 metrics, 1.37 s vs 0.033 s. The paired permutation test reuses the same
per-row sums. scipy is used where it fits: the exact binomial test (McNemar) and the t quantile across seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ftl.errors import FTLError

CONFIDENCE = 0.95
ALPHA = 0.05
DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0  # bootstrap and permutation draws are seeded: the same rows give the same intervals
# Permutations per paired test (at least): a permutation p-value is never below 1/(N+1), and Holm multiplies the
# smallest p by the number of tests (~15 for a binary table), so 1,000 would floor every verdict at ~0.015.
MIN_PERMUTATIONS = 9999
# Calibration error is tested by the paired bootstrap instead: swapping rows between two models mixes their
# confidences, which shrinks |confidence - accuracy| per bin for both, so the permutation test rejects whenever
# the confidences differ at all (measured: two seeds with identical predictions, ECE +0.021 with a paired interval
# of [-0.018, +0.030], permutation p = 0.0001, bootstrap p = 0.15).
BOOTSTRAP_TESTED = ("ece", "ece_unscaled")
ECE_BINS = 15
# metrics (the name after `test/`) for which a decrease is the improvement; a task adds its own in the contract
# (`TaskOutputs.lower_is_better`)
LOWER_IS_BETTER = ("loss", "perplexity", "ece", "ece_unscaled", "brier", "mse", "mae", "rmse")
# 5e6 float64 counts (40 MB) per chunk of resamples, whatever the number of rows
_CHUNK_CELLS = 5_000_000


@dataclass
class Rows:
    """Per-row columns of one model's test pass, in the data's order.

    Args:
        keys: one identity per row (a hash of its inputs and reference): two runs are paired only when equal.
        label_names: the labels of a single-label task (None otherwise).
        y: true label ids (single-label tasks).
        p: predicted label ids (the model's decisions, a tuned threshold included).
        probs: (rows, labels) probabilities, for calibration (ECE, Brier).
        values: per-row values of metrics that are (weighted) means over rows, e.g. `loss`, `rouge1`;
            NaN where a row has none (e.g. no generated answer).
        weights: weights of those means where not 1 (e.g. answer tokens of a token-weighted loss).
        lower_is_better: the task's own metrics for which lower is better (beside `LOWER_IS_BETTER`).
        label_sets: (true, predicted) 0/1 matrices of shape (rows, labels) of a multi-label task, for per-label
            and macro/micro precision, recall and F1.
        targets: true numbers (regression tasks), for Pearson, Spearman and R².
        predictions: predicted numbers (regression tasks).
    """

    keys: list[str]
    label_names: list[str] | None = None
    y: np.ndarray | None = None
    p: np.ndarray | None = None
    probs: np.ndarray | None = None
    values: dict[str, np.ndarray] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    lower_is_better: list[str] = field(default_factory=list)
    label_sets: tuple[np.ndarray, np.ndarray] | None = None
    targets: np.ndarray | None = None
    predictions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys)


Metric = Callable[[dict[str, np.ndarray]], np.ndarray]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den is 0 (torchmetrics' zero_division=0)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def ece_bins(confidence: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin of each confidence exactly as torchmetrics' `CalibrationError` (float32 boundaries, right-closed
    search; a confidence of exactly 1.0 gets a bin of its own)."""
    boundaries = np.linspace(0, 1, n_bins + 1, dtype=np.float32)
    return np.searchsorted(boundaries, confidence.astype(np.float32), side="right") - 1


def brier_per_row(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Brier score per row, scikit-learn's convention: sum over labels of (p - 1[label])^2, halved for two
    labels (so binary is the familiar (p_positive - y)^2). 0 is perfect."""
    target = np.zeros_like(probs)
    target[np.arange(len(y)), y] = 1.0
    score = ((probs - target) ** 2).sum(1)
    return score / 2 if probs.shape[1] == 2 else score


def columns_and_metrics(rows: Rows, available: Sequence[str] | None = None
                        ) -> tuple[dict[str, np.ndarray], dict[str, Metric]]:
    """The per-row columns and the metrics (by key after `test/`) computed from their sums.

    `available`: the value names to use (the ones both sides of a comparison have); default all of `rows`.
    """
    cols: dict[str, np.ndarray] = {"one": np.ones(len(rows))}
    metrics: dict[str, Metric] = {}
    if rows.y is not None and rows.p is not None and rows.label_names:
        y, p = rows.y, rows.p
        cols["correct"] = (y == p).astype(float)
        metrics["accuracy"] = lambda s: _ratio(s["correct"], s["one"])
        k = len(rows.label_names)
        for c in range(k):
            cols[f"tp{c}"] = ((y == c) & (p == c)).astype(float)
            cols[f"pred{c}"] = (p == c).astype(float)
            cols[f"true{c}"] = (y == c).astype(float)

        def per_label(kind: str, c: int) -> Metric:
            if kind == "precision":
                return lambda s: _ratio(s[f"tp{c}"], s[f"pred{c}"])
            if kind == "recall":
                return lambda s: _ratio(s[f"tp{c}"], s[f"true{c}"])
            return lambda s: _ratio(2 * s[f"tp{c}"], s[f"pred{c}"] + s[f"true{c}"])

        def macro(kind: str) -> Metric:
            # labels neither present nor predicted in the (re)sample are left out, as torchmetrics' macro does
            def fn(s: dict[str, np.ndarray]) -> np.ndarray:
                used = np.stack([(s[f"pred{c}"] + s[f"true{c}"]) > 0 for c in range(k)])
                vals = np.stack([per_label(kind, c)(s) for c in range(k)])
                return _ratio((vals * used).sum(0), used.sum(0))
            return fn

        for kind in ("precision", "recall", "f1"):
            for c, name in enumerate(rows.label_names):
                metrics[f"{kind}/{name}"] = per_label(kind, c)
            metrics[f"{kind}_macro"] = macro(kind)
        if rows.probs is not None:
            probs = rows.probs.astype(float)
            confidence = probs.max(1)
            hit = (probs.argmax(1) == y).astype(float)  # calibration is of the top label, as torchmetrics
            bins = ece_bins(confidence)
            for b in range(ECE_BINS + 1):
                cols[f"gap{b}"] = np.where(bins == b, confidence - hit, 0.0)
            metrics["ece"] = lambda s: sum(np.abs(s[f"gap{b}"]) for b in range(ECE_BINS + 1)) / s["one"]
            cols["brier"] = brier_per_row(probs, y)
            metrics["brier"] = lambda s: _ratio(s["brier"], s["one"])
    if rows.label_sets is not None and rows.label_names:
        multilabel_columns(rows.label_sets, rows.label_names, cols, metrics)
    if rows.targets is not None and rows.predictions is not None:
        regression_columns(rows.targets, rows.predictions, cols, metrics)
    names = rows.values if available is None else [n for n in rows.values if n in available]
    for name in names:
        value = rows.values[name].astype(float)
        weight = rows.weights.get(name, np.ones(len(rows))).astype(float)
        weight = np.where(np.isnan(value), 0.0, weight)
        cols[f"v:{name}"] = np.nan_to_num(value) * weight
        cols[f"w:{name}"] = weight
        metrics[name] = (lambda n: lambda s: _ratio(s[f"v:{n}"], s[f"w:{n}"]))(name)
    if "loss" in metrics and "perplexity" not in metrics:
        loss = metrics["loss"]
        metrics["perplexity"] = lambda s: np.exp(np.minimum(loss(s), 700.0))
    return cols, metrics


def multilabel_columns(label_sets: tuple[np.ndarray, np.ndarray], names: list[str], cols: dict[str, np.ndarray],
                       metrics: dict[str, Metric]) -> None:
    """Per-label true/false positives and false negatives of a multi-label task, and torchmetrics' multi-label
    precision/recall/F1 from their sums: per label, macro (the plain mean over labels, a label with nothing to
    score counting 0, as torchmetrics' multi-label macro does) and micro F1 (over all label cells)."""
    true, pred = (np.asarray(m, dtype=bool) for m in label_sets)
    k = len(names)
    for c in range(k):
        cols[f"mtp{c}"] = (true[:, c] & pred[:, c]).astype(float)
        cols[f"mfp{c}"] = (~true[:, c] & pred[:, c]).astype(float)
        cols[f"mfn{c}"] = (true[:, c] & ~pred[:, c]).astype(float)

    def per_label(kind: str, c: int) -> Metric:
        if kind == "precision":
            return lambda s: _ratio(s[f"mtp{c}"], s[f"mtp{c}"] + s[f"mfp{c}"])
        if kind == "recall":
            return lambda s: _ratio(s[f"mtp{c}"], s[f"mtp{c}"] + s[f"mfn{c}"])
        return lambda s: _ratio(2 * s[f"mtp{c}"], 2 * s[f"mtp{c}"] + s[f"mfp{c}"] + s[f"mfn{c}"])

    def macro(kind: str) -> Metric:
        return lambda s: sum(per_label(kind, c)(s) for c in range(k)) / k

    for kind in ("precision", "recall", "f1"):
        for c, name in enumerate(names):
            metrics[f"{kind}/{name}"] = per_label(kind, c)
        metrics[f"{kind}_macro"] = macro(kind)

    def micro_f1(s: dict[str, np.ndarray]) -> np.ndarray:
        tp = sum(s[f"mtp{c}"] for c in range(k))
        wrong = sum(s[f"mfp{c}"] + s[f"mfn{c}"] for c in range(k))
        return _ratio(2 * tp, 2 * tp + wrong)

    metrics["f1_micro"] = micro_f1


def _evaluate(metrics: dict[str, Metric], names: list[str], sums: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric over sums of shape (..., columns)."""
    by_name = {name: sums[..., i] for i, name in enumerate(names)}
    return {key: np.asarray(fn(by_name), dtype=float) for key, fn in metrics.items()}


def resample_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n): how often each row is drawn in each bootstrap resample of n rows with replacement."""
    draws = rng.integers(0, n, size=(resamples, n)) + (np.arange(resamples) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n).astype(float)


def _chunks(n: int, total: int) -> list[int]:
    size = max(1, _CHUNK_CELLS // max(n, 1))
    return [min(size, total - start) for start in range(0, total, size)]


def point_values(rows: Rows) -> dict[str, float]:
    """Every metric on all rows (the numbers the intervals are around)."""
    cols, metrics = columns_and_metrics(rows)
    names = list(cols)
    sums = np.stack([cols[c] for c in names], 1).sum(0)
    values = _evaluate(metrics, names, sums)
    values.update(rank_metrics(rows, np.ones((1, len(rows)))))
    return {key: float(np.asarray(v).reshape(-1)[0]) for key, v in values.items()}


def bootstrap_intervals(rows: Rows, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                        confidence: float = CONFIDENCE) -> dict[str, tuple[float, float]]:
    """95% percentile bootstrap interval of every metric: `{"accuracy": (low, high), ...}` ({} for no rows)."""
    n = len(rows)
    if n == 0 or resamples <= 0:
        return {}
    cols, metrics = columns_and_metrics(rows)
    names = list(cols)
    matrix = np.stack([cols[c] for c in names], 1)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {key: [] for key in metrics}
    for size in _chunks(n, resamples):
        counts = resample_counts(n, size, rng)
        values = _evaluate(metrics, names, counts @ matrix)
        values.update(rank_metrics(rows, counts))  # (Spearman: ranks within each resample)
        for key, value in values.items():
            draws.setdefault(key, []).append(value)
    tail = 100 * (1 - confidence) / 2
    out = {}
    for key, parts in draws.items():
        low, high = np.percentile(np.concatenate(parts), [tail, 100 - tail])
        out[key] = (float(low), float(high))
    return out


# ---------------------------------------------------------------------------------------------- paired tests
def mcnemar_p(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact McNemar test: two-sided binomial test (p = 1/2) on the rows exactly one of the two models gets right.

    1.0 when no row is discordant (nothing to tell the models apart).
    """
    from scipy.stats import binomtest

    a_only = int(np.sum((correct_a > 0) & (correct_b == 0)))
    b_only = int(np.sum((correct_b > 0) & (correct_a == 0)))
    if a_only + b_only == 0:
        return 1.0
    return float(binomtest(a_only, a_only + b_only, 0.5, alternative="two-sided").pvalue)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (family-wise error) of the p-values given; None entries stay None.

    Hand-written: scipy has Benjamini-Hochberg (`false_discovery_control`) but not Holm, and statsmodels is not
    worth a dependency for six lines.
    """
    tested = [(p, i) for i, p in enumerate(p_values) if p is not None]
    m = len(tested)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(tested)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def verdict(change: float, p_adjusted: float | None, metric: str, alpha: float = ALPHA,
            lower_is_better: Sequence[str] = (), interval: tuple[float | None, float | None] | None = None
            ) -> str | None:
    """`better` / `worse` (for the second model) when the Holm-adjusted p is below alpha and the paired interval of
    the change (when there is one) excludes 0, else `no_difference`: a verdict never contradicts its interval.

    `metric` is a key such as `test/loss` or `test/f1/<label>`; its name after the stage (`loss`, `f1`) says
    whether lower is better (`LOWER_IS_BETTER`, plus the task's own `lower_is_better`).
    """
    if p_adjusted is None:
        return None
    if p_adjusted >= alpha or change == 0:
        return "no_difference"
    low, high = interval if interval is not None else (None, None)
    if low is not None and high is not None and low <= 0 <= high:
        return "no_difference"
    parts = metric.split("/")
    name = parts[1] if len(parts) > 1 else parts[0]
    lower = name in LOWER_IS_BETTER or name in lower_is_better
    return "better" if (change < 0) == lower else "worse"


@dataclass
class Change:
    """The paired change (B - A) of one metric: point value, bootstrap interval, p-value and its test."""

    change: float
    low: float | None
    high: float | None
    p_value: float | None
    test: str | None


def check_paired(a: Rows, b: Rows, name_a: str = "A", name_b: str = "B") -> None:
    """Two passes compare row by row only on the very same rows in the same order: else one clear error."""
    if len(a) != len(b):
        raise FTLError(f"{name_a} has {len(a)} test rows and {name_b} has {len(b)}: paired statistics need the same "
                       "test split (same data, same split settings)")
    differing = sum(x != y for x, y in zip(a.keys, b.keys, strict=True))
    if differing:
        raise FTLError(f"{name_a} and {name_b} differ in {differing} of {len(a)} test rows (text or reference): "
                       "compare runs tested on the same data and split")
    if (a.label_names or b.label_names) and list(a.label_names or []) != list(b.label_names or []):
        raise FTLError(f"{name_a} has labels {a.label_names} and {name_b} has {b.label_names}: compare runs of the "
                       "same task")


def paired_changes(a: Rows, b: Rows, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                   confidence: float = CONFIDENCE, permutations: int | None = None) -> dict[str, Change]:
    """Change B - A of every metric both have, on the same rows: a paired bootstrap interval (the same resampled
    rows for both models) and a p-value: exact McNemar for accuracy, a paired permutation test (each row's two
    outputs swapped at random, `permutations` times: default the larger of `resamples` and 9,999) for every
    other metric. Without resamples, only accuracy gets a p-value and no metric an interval."""
    check_paired(a, b)
    shared = [name for name in a.values if name in b.values]
    cols_a, metrics = columns_and_metrics(a, shared)
    cols_b, metrics_b = columns_and_metrics(b, shared)
    keys = [key for key in metrics if key in metrics_b]
    metrics = {key: metrics[key] for key in keys}
    names = [c for c in cols_a if c in cols_b]
    xa = np.stack([cols_a[c] for c in names], 1)
    xb = np.stack([cols_b[c] for c in names], 1)
    point_a, point_b = _evaluate(metrics, names, xa.sum(0)), _evaluate(metrics, names, xb.sum(0))
    ranked = [key for key in rank_metrics(a, np.ones((1, len(a)))) if key in rank_metrics(b, np.ones((1, len(b))))]
    keys += ranked
    point_a.update({k: v[0] for k, v in rank_metrics(a, np.ones((1, len(a)))).items()})
    point_b.update({k: v[0] for k, v in rank_metrics(b, np.ones((1, len(b)))).items()})
    observed = {key: float(point_b[key] - point_a[key]) for key in keys}
    n = len(a)
    intervals: dict[str, tuple[float, float]] = {}
    p_values: dict[str, float] = {}
    if resamples > 0 and n > 0:
        rng = np.random.default_rng(seed)
        diffs: dict[str, list[np.ndarray]] = {key: [] for key in keys}
        for size in _chunks(n, resamples):
            counts = resample_counts(n, size, rng)
            va, vb = _evaluate(metrics, names, counts @ xa), _evaluate(metrics, names, counts @ xb)
            if ranked:
                va.update(rank_metrics(a, counts))
                vb.update(rank_metrics(b, counts))
            for key in keys:
                diffs[key].append(vb[key] - va[key])
        tail = 100 * (1 - confidence) / 2
        boot_p: dict[str, float] = {}
        for key in keys:
            drawn = np.concatenate(diffs[key])
            low, high = np.percentile(drawn, [tail, 100 - tail])
            intervals[key] = (float(low), float(high))
            if key in BOOTSTRAP_TESTED:  # two-sided: how often a resampled change falls on either side of 0
                side = min(np.sum(drawn <= 0), np.sum(drawn >= 0))
                boot_p[key] = min(1.0, 2 * (1 + int(side)) / (1 + len(drawn)))
        # paired permutation: under "no difference" each row's two outputs are exchangeable
        permutations = max(resamples, MIN_PERMUTATIONS) if permutations is None else permutations
        delta = xb - xa
        total_a, total_b = xa.sum(0), xb.sum(0)
        extreme = {key: 0 for key in keys}
        for size in _chunks(n, permutations):
            mask = rng.random((size, n)) < 0.5
            swap = mask.astype(float) @ delta
            va, vb = _evaluate(metrics, names, total_a + swap), _evaluate(metrics, names, total_b - swap)
            if ranked:  # rank metrics of the swapped predictions themselves (not linear in the rows)
                ones = np.ones((size, n))
                va.update(rank_metrics(a, ones, np.where(mask, b.predictions, a.predictions)))
                vb.update(rank_metrics(b, ones, np.where(mask, a.predictions, b.predictions)))
            for key in keys:
                tolerance = 1e-12 * max(1.0, abs(observed[key]))
                extreme[key] += int(np.sum(np.abs(vb[key] - va[key]) >= abs(observed[key]) - tolerance))
        p_values = {key: (1 + extreme[key]) / (1 + permutations) for key in keys}
    out = {}
    for key in keys:
        low, high = intervals.get(key, (None, None))
        if key == "accuracy":
            p, test = mcnemar_p(cols_a["correct"], cols_b["correct"]), "mcnemar"
        elif key in BOOTSTRAP_TESTED and key in p_values:
            p, test = boot_p[key], "bootstrap"
        elif key in p_values:
            p, test = p_values[key], "permutation"
        else:
            p, test = None, None
        out[key] = Change(change=observed[key], low=low, high=high, p_value=p, test=test)
    return out


def across_runs(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, float | None]:
    """Mean, sample standard deviation and the t interval of the mean of one metric over several runs (seeds)."""
    from scipy import stats as sps

    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return {"mean": None, "std": None, "ci_low": None, "ci_high": None, "n": 0}
    mean = float(arr.mean())
    if arr.size < 2:
        return {"mean": mean, "std": None, "ci_low": None, "ci_high": None, "n": 1}
    std = float(arr.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, arr.size - 1)) * std / math.sqrt(arr.size)
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "n": int(arr.size)}


# ---------------------------------------------------------------------------------------------- regression
def regression_columns(targets: np.ndarray, predictions: np.ndarray, cols: dict[str, np.ndarray],
                       metrics: dict[str, Metric]) -> None:
    """Pearson's r and R² of predictions against targets, both functions of five sums (of t, q, t², q², tq), so
    they resample like every other metric. Both are centred on the targets' mean first (the same shift for two
    models on the same rows, so paired swaps stay valid) to keep the sums' differences accurate."""
    centre = float(np.mean(targets)) if len(targets) else 0.0
    t, q = np.asarray(targets, dtype=float) - centre, np.asarray(predictions, dtype=float) - centre
    cols.update({"reg:t": t, "reg:q": q, "reg:tt": t * t, "reg:qq": q * q, "reg:tq": t * q})

    def spread(s: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = s["one"]
        cov = s["reg:tq"] - _ratio(s["reg:t"] * s["reg:q"], n)
        return cov, s["reg:tt"] - _ratio(s["reg:t"] ** 2, n), s["reg:qq"] - _ratio(s["reg:q"] ** 2, n)

    def pearson(s: dict[str, np.ndarray]) -> np.ndarray:
        cov, var_t, var_q = spread(s)
        return _ratio(cov, np.sqrt(np.clip(var_t, 0, None) * np.clip(var_q, 0, None)))

    def r2(s: dict[str, np.ndarray]) -> np.ndarray:
        sse = s["reg:tt"] - 2 * s["reg:tq"] + s["reg:qq"]
        return 1.0 - _ratio(sse, spread(s)[1])

    metrics["pearson"], metrics["r2"] = pearson, r2


def mean_ranks(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(resamples, rows): each row's rank among the values of a resample in which row i appears `counts[r, i]`
    times (ranks from 1; tied values share their mean rank, as scipy's `rankdata` and torchmetrics do)."""
    counts = np.asarray(counts, dtype=float)
    values = np.broadcast_to(np.asarray(values, dtype=float), counts.shape)
    m, n = counts.shape
    order = np.argsort(values, axis=1, kind="stable")
    v, c = np.take_along_axis(values, order, 1), np.take_along_axis(counts, order, 1)
    starts = np.ones((m, n), dtype=bool)
    starts[:, 1:] = v[:, 1:] != v[:, :-1]
    group = np.cumsum(starts, axis=1) - 1 + (np.arange(m) * n)[:, None]  # one id per (resample, tied value)
    size = np.bincount(group.ravel(), weights=c.ravel(), minlength=m * n)
    ends = np.ones((m, n), dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    through = np.zeros(m * n)
    through[group[ends]] = np.cumsum(c, axis=1)[ends]  # rows drawn up to the end of each tie group
    ranks = np.empty((m, n))
    np.put_along_axis(ranks, order, through[group] - size[group] + (size[group] + 1) / 2, 1)
    return ranks


def spearman_values(targets: np.ndarray, predictions: np.ndarray, counts: np.ndarray,
                    block: int = 256) -> np.ndarray:
    """Spearman's rank correlation in each resample (rows of `counts`: how often each row is drawn), exactly as
    computed on the resampled rows themselves: ranks are taken within each resample. `predictions` may give one
    row of predictions per resample (a permutation test's swapped outputs). Blocks of resamples bound memory."""
    counts = np.atleast_2d(np.asarray(counts, dtype=float))
    predictions = np.asarray(predictions, dtype=float)
    out = []
    for start in range(0, len(counts), block):
        w = counts[start:start + block]
        pred = predictions[start:start + block] if predictions.ndim == 2 else predictions
        rt, rp = mean_ranks(targets, w), mean_ranks(pred, w)
        total = w.sum(1, keepdims=True)
        dt = rt - (w * rt).sum(1, keepdims=True) / total
        dp = rp - (w * rp).sum(1, keepdims=True) / total
        out.append(_ratio((w * dt * dp).sum(1), np.sqrt((w * dt * dt).sum(1) * (w * dp * dp).sum(1))))
    return np.concatenate(out) if out else np.zeros(0)


def rank_metrics(rows: Rows, counts: np.ndarray, predictions: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Metrics that are not functions of column sums, per resample: Spearman's rank correlation of a regression
    task ({} for other tasks). `predictions` replaces the rows' own (paired permutations)."""
    if rows.targets is None or rows.predictions is None or len(rows) == 0:
        return {}
    return {"spearman": spearman_values(rows.targets, rows.predictions if predictions is None else predictions,
                                        counts)}
