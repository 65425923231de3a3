"""A/B on this machine: torch's dropout vs ftl's CPU dropout (`ftl.models.dropout`), on ftl's real training batches.

`benchmarks/step_cost.py` profiles dropout's random masks (`aten::bernoulli_`) at about a quarter of a
training step on CPU, and in training with attention dropout SDPA takes its math path. This script times the
model compute alone (forward, backward, fused AdamW; no Lightning) of the stock model and of the same model
after `enable_fast_cpu_dropout` (ftl's default on CPU, `--cpu_speedups`). It first compares their logits
with dropout dropping nothing. Each mode runs in its own process, alternating, so machine drift hits both
alike. Minutes to run; not run by pytest.

    python benchmarks/dropout_ab.py --data ../shared/data/depression_reddit --steps 30 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build_model(path: str, fast: bool):
    import torch
    from transformers import AutoModelForSequenceClassification

    from ftl.models.dropout import enable_fast_cpu_dropout

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    return enable_fast_cpu_dropout(model) if fast else model


def check(path: str) -> float:
    """Largest logit difference, stock vs ftl's dropout, with the latter's training paths taken but dropping nothing."""
    import torch
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(path)(
        ["a short one", "a longer text with several more tokens in it than the first"],
        padding=True,
        return_tensors="pt",
    )
    stock, fast = build_model(path, False).eval(), build_model(path, True).train()
    for module in fast.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 1e-9  # keeps every value (threshold rounds to 0) but takes the dropout code paths
    with torch.no_grad():
        return (stock(**enc).logits - fast(**enc).logits).abs().max().item()


def time_steps(data: str, model_name: str, steps: int, fast: bool) -> float:
    import torch
    from padding import ftl_training_batches, train_texts_and_lengths  # benchmarks/padding.py
    from transformers import AutoTokenizer

    from ftl.hub import resolve_pretrained

    path = resolve_pretrained(model_name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts, lengths = train_texts_and_lengths(data, tokenizer, 256)
    encoded = ftl_training_batches(texts, lengths, tokenizer, 16, steps + 1, 256, 42)
    model = build_model(path, fast).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    labels = torch.zeros(16, dtype=torch.long)

    def step(enc) -> None:
        model(**enc, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(encoded[0])  # warm-up
    start = time.perf_counter()
    for enc in encoded[1:]:
        step(enc)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "depression_reddit"))
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--one", choices=("stock", "fast"), help=argparse.SUPPRESS)  # a single timed child run
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.one:
        print(f"{time_steps(args.data, args.model, args.steps, args.one == 'fast'):.3f}")
        return
    from ftl.hub import resolve_pretrained

    difference = check(resolve_pretrained(args.model))
    print(f"# logits, stock vs ftl dropout (dropping nothing): max difference {difference:.2e}")
    seconds: dict[str, list[float]] = {"stock": [], "fast": []}
    for repeat in range(args.repeats):
        for mode in ("stock", "fast") if repeat % 2 == 0 else ("fast", "stock"):
            cmd = [sys.executable, __file__, "--data", args.data, "--model", args.model, "--steps", str(args.steps)]
            out = subprocess.run([*cmd, "--one", mode], check=True, capture_output=True, text=True)
            seconds[mode].append(float(out.stdout.strip().splitlines()[-1]))
            print(f"{mode}: {seconds[mode][-1]:.2f} s for {args.steps} steps", flush=True)
    stock, fast = (statistics.median(seconds[m]) for m in ("stock", "fast"))
    print(f"\nmedian of {args.repeats}: stock {stock:.2f} s, ftl dropout {fast:.2f} s, ratio {stock / fast:.2f}x")


if __name__ == "__main__":
    main()
