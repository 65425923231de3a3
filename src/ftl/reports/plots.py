"""PNG plots of a run (`plots/`): loss curves, confusion matrix with label names, precision-recall curve (binary).

Figures are built with `matplotlib.figure.Figure` and rendered by the Agg canvas: no pyplot state, no
display, safe in worker threads and on headless machines. Each function writes one file and returns its path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


def _figure(width: float = 6.4, height: float = 4.8):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def loss_curves(rows: list[dict[str, float]], path: str | Path) -> Path | None:
    """Train loss per logged step (and per-epoch mean) and val loss per validation, against the global step.

    `rows` are metrics.csv rows (`ftl.reports.tables.read_metrics_csv`). Returns None when there is no loss to draw.
    """
    def series(key: str) -> tuple[list[float], list[float]]:
        points = [(row["step"], row[key]) for row in rows if key in row and "step" in row]
        return [p[0] for p in points], [p[1] for p in points]

    curves = {key: series(key) for key in ("train/loss_step", "train/loss_epoch", "val/loss")}
    if not any(xs for xs, _ in curves.values()):
        return None
    fig = _figure()
    ax = fig.subplots()
    style = {"train/loss_step": ("train loss (step)", "-", None, 0.6),
             "train/loss_epoch": ("train loss (epoch mean)", "--", "s", 1.0),
             "val/loss": ("val loss", "-", "o", 1.0)}
    for key, (xs, ys) in curves.items():
        if xs:
            label, line, marker, alpha = style[key]
            if marker is None and len(xs) < 30:  # a few logged steps: show each one
                marker = "."
            ax.plot(xs, ys, linestyle=line, marker=marker, alpha=alpha, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, Path(path))


def confusion_matrix(matrix: torch.Tensor, label_names: Sequence[str], path: str | Path) -> Path:
    """Counts per (true, predicted) label, with label names on both axes (torchmetrics' plot)."""
    from torchmetrics.utilities.plot import plot_confusion_matrix

    n = len(label_names)
    size = max(4.8, 1.0 + 0.9 * n)
    fig = _figure(size, size)
    ax = fig.subplots()
    plot_confusion_matrix(torch.as_tensor(matrix).long().cpu(), ax=ax, labels=list(label_names))
    ax.set_title("Confusion matrix (test)")
    return _save(fig, Path(path))


def precision_recall(probs: torch.Tensor, labels: torch.Tensor, positive: str, path: str | Path,
                     preds: torch.Tensor | None = None) -> Path:
    """Precision-recall curve of the positive label (binary tasks), its average precision, and the model's
    operating point (its own decisions, `preds`) when given."""
    from torchmetrics.functional.classification import binary_average_precision, binary_precision_recall_curve

    probs, labels = torch.as_tensor(probs).float().cpu(), torch.as_tensor(labels).long().cpu()
    precision, recall, _ = binary_precision_recall_curve(probs, labels)
    ap = float(binary_average_precision(probs, labels))
    fig = _figure()
    ax = fig.subplots()
    ax.step(recall.numpy(), precision.numpy(), where="post", label=f"{positive} (AP={ap:.3f})")
    prevalence = float(labels.float().mean()) if labels.numel() else 0.0
    ax.axhline(prevalence, color="grey", linestyle=":", label=f"chance ({prevalence:.2f})")
    if preds is not None:
        preds = torch.as_tensor(preds).long().cpu()
        tp = int(((preds == 1) & (labels == 1)).sum())
        p = tp / max(int((preds == 1).sum()), 1)
        r = tp / max(int((labels == 1).sum()), 1)
        ax.plot([r], [p], "o", color="black", label=f"model's decisions (P={p:.2f}, R={r:.2f})")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"Precision-recall, positive label: {positive}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    return _save(fig, Path(path))


def reliability(confidence: Sequence[float], correct: Sequence[float], path: str | Path, n_bins: int = 15,
                ece: float | None = None) -> Path:
    """Reliability diagram: per confidence bin (the top label's probability, torchmetrics' 15 bins), the share of
    rows predicted right against the bin's mean confidence, with each bin's row count; the diagonal is perfect
    calibration."""
    import numpy as np

    from ftl.reports.stats import ece_bins

    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    bins = np.minimum(ece_bins(confidence, n_bins), n_bins - 1)  # 1.0 drawn in the top bin
    width = 1.0 / n_bins
    fig = _figure()
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect calibration")
    for b in range(n_bins):
        inside = bins == b
        count = int(inside.sum())
        if not count:
            continue
        accuracy = float(correct[inside].mean())
        ax.bar(b * width, accuracy, width=width, align="edge", edgecolor="black", color="tab:blue", alpha=0.7,
               label="accuracy in bin" if not ax.containers else None)
        ax.plot([confidence[inside].mean()], [accuracy], "k.")
        ax.text((b + 0.5) * width, min(accuracy + 0.02, 0.97), str(count), ha="center", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (probability of the predicted label)")
    ax.set_ylabel("accuracy")
    title = "Reliability (test; numbers: rows per bin)"
    ax.set_title(title + (f", ECE {ece:.3f}" if ece is not None else ""))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    return _save(fig, Path(path))


def regression_scatter(targets: Sequence[float], predictions: Sequence[float], path: str | Path,
                       pearson: float | None = None, spearman: float | None = None) -> Path:
    """Predicted against true value per test row (regression tasks), with the diagonal of perfect predictions
    and a least-squares line; the title gives Pearson's r and Spearman's rho when known."""
    import numpy as np

    t, p = np.asarray(targets, dtype=float), np.asarray(predictions, dtype=float)
    fig = _figure(5.6, 5.2)
    ax = fig.subplots()
    ax.scatter(t, p, s=12, alpha=0.6, edgecolors="none", label=f"test rows ({len(t)})")
    if len(t):
        low, high = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        ax.plot([low, high], [low, high], linestyle=":", color="grey", label="perfect prediction")
        if len(t) > 1 and float(np.ptp(t)) > 0:
            slope, intercept = np.polyfit(t, p, 1)
            xs = np.array([float(t.min()), float(t.max())])
            line = f"fit: {slope:.2f} x {'+' if intercept >= 0 else '-'} {abs(intercept):.2f}"
            ax.plot(xs, slope * xs + intercept, color="tab:red", label=line)
    ax.set_xlabel("true value")
    ax.set_ylabel("predicted value")
    parts = [f"Pearson r {pearson:.3f}" if pearson is not None else None,
             f"Spearman rho {spearman:.3f}" if spearman is not None else None]
    ax.set_title("Predicted vs true (test)" + (": " + ", ".join(x for x in parts if x) if any(parts) else ""))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    return _save(fig, Path(path))
