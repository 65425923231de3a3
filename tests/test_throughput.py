"""Throughput as users compare it: tokens/s counts exactly the non-padding tokens seen, FLOPs follow the analytic
count of `ftl.reports.flops`, and MFU is achieved FLOP/s over the given peak."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.helpers import ROOT


def test_flops_per_token_is_the_analytic_count():
    from ftl.reports.flops import flops_per_token

    shape = (1_000_000, 1_000_000, 6, 384)  # N, trainable, layers, width
    forward = 2 * 1_000_000 + 4 * 6 * 384 * 128
    assert flops_per_token(shape, 128, training=False) == forward
    assert flops_per_token(shape, 128, training=True) == 3 * forward  # full fine-tuning: forward + 2x backward
    frozen = (1_000_000, 10_000, 6, 384)  # LoRA: 1% trainable
    assert flops_per_token(frozen, 128, training=True) == pytest.approx(2.01 * forward)


def test_transformer_shape_counts_the_parameters_outside_the_embeddings(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    from ftl.reports.flops import transformer_shape

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=5)
    d, ff, layers = 32, 64, 2
    per_layer = 4 * (d * d + d) + 2 * d + (d * ff + ff) + (ff * d + d) + 2 * d  # attention, 2 LayerNorms, MLP
    expected = layers * per_layer + 2 * d + (d * d + d) + (d * 5 + 5)  # + embedding LayerNorm, pooler, head
    assert transformer_shape(model) == (expected, expected, layers, d)
    model.bert.encoder.requires_grad_(False)
    assert transformer_shape(model)[1] == expected - layers * per_layer


def test_a_run_reports_tokens_per_second_of_exactly_the_tokens_it_saw_and_mfu_against_the_peak(
        tmp_path, tiny_data_dir, tiny_bert, cli):
    from transformers import AutoTokenizer

    run = tmp_path / "run"
    cli("fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--model.pretrained", str(tiny_bert),
        "--data.class_path", "ftl.data.classification.TextClassificationDataModule",
        "--data.data_dir", str(tiny_data_dir), "--data.max_length", "24", "--data.batch_size", "8",
        "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--throughput.peak_tflops", "0.5",
        "--run_dir", str(run))
    metrics = json.loads((run / "metrics.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)

    def tokens(split: str) -> int:
        with open(tiny_data_dir / f"{split}.csv", newline="") as f:
            texts = [row["text"] for row in csv.DictReader(f)]
        return sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=24)["input_ids"])

    for stage in ("train", "test"):  # one epoch: every training row once; the test split once
        seen = metrics[f"{stage}/tokens_per_sec"] * metrics[f"{stage}/runtime"]
        assert seen == pytest.approx(tokens(stage), rel=1e-6), stage
        assert metrics[f"{stage}/mfu"] == pytest.approx(metrics[f"{stage}/tflops"] / 0.5, rel=1e-9)
    assert 0 < metrics["train/tflops"] and "val/tokens_per_sec" in metrics
    summary = (run / "summary.md").read_text()
    assert f"**Train tokens/s (non-padding)**: {metrics['train/tokens_per_sec']:.2f}" in summary
    assert f"**Train model TFLOP/s (without validation)**: {metrics['train/tflops']:.4f}" in summary
    assert f"**Train MFU**: {metrics['train/mfu']:.4f}" in summary


def test_without_a_known_peak_there_is_no_mfu(tmp_path, tiny_data_dir, tiny_bert, cli):
    run = tmp_path / "run"
    cli("test", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--model.pretrained", str(tiny_bert),
        "--data.class_path", "ftl.data.classification.TextClassificationDataModule",
        "--data.data_dir", str(tiny_data_dir), "--data.max_length", "24", "--trainer.enable_progress_bar", "false",
        "--run_dir", str(run))
    metrics = json.loads(Path(run / "metrics.json").read_text())
    assert "test/tflops" in metrics and "test/mfu" not in metrics  # a CPU has no entry in the peak table
