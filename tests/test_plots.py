"""ftl.reports.plots on their own: PNGs for any number of labels, nothing to draw -> no file."""

from __future__ import annotations

import torch


def _png(path) -> tuple[int, int]:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000
    image = imread(path)
    assert image[..., :3].std() > 0.05  # something is drawn
    return image.shape[0], image.shape[1]


def test_confusion_matrix_grows_with_the_labels(tmp_path):
    from ftl.reports.plots import confusion_matrix

    small = _png(confusion_matrix(torch.tensor([[3, 1], [0, 4]]), ["no", "yes"], tmp_path / "two.png"))
    names = [f"condition_{i}" for i in range(8)]
    big = _png(confusion_matrix(torch.eye(8, dtype=torch.long) * 5, names, tmp_path / "eight.png"))
    assert big[0] > small[0] and big[1] > small[1]


def test_precision_recall_and_loss_curves(tmp_path):
    from ftl.reports.plots import loss_curves, precision_recall

    labels = torch.tensor([0, 0, 1, 1, 0, 1, 1, 0])
    probs = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.6, 0.7])
    _png(precision_recall(probs, labels, "cancer", tmp_path / "pr.png", preds=(probs >= 0.5).long()))
    rows = [{"epoch": 0.0, "step": float(s), "train/loss_step": 1.0 / (s + 1)} for s in range(10)]
    rows += [{"epoch": 0.0, "step": 9.0, "val/loss": 0.3, "train/loss_epoch": 0.4}]
    _png(loss_curves(rows, tmp_path / "loss.png"))
    assert loss_curves([{"epoch": 0.0, "step": 1.0, "val/accuracy": 0.5}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
