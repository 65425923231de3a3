"""Where a training step's time goes, and what each batching order must cost: the profile behind the speed limit.

Two measurements on this machine, same model, dropout and optimizer as `ftl fit` (fused AdamW; `--torch-dropout`
for torch's own dropout):

1. Step cost by padded length: forward + backward + optimizer step on batches of `--batch-size` rows of
   length L, for a grid of L. Each batching order's epoch is then priced from its batches' padded lengths
   (interpolated on the grid), so the orders are compared by model compute alone, without run-to-run noise.
2. A `torch.profiler` table over real training batches in ftl's order: the share of the time spent in the
   model's matrix products and attention, in the optimizer and in everything else.

Minutes to run; not run by pytest.

    python benchmarks/step_cost.py --data ../shared/data/depression_reddit
"""

from __future__ import annotations

import argparse
import bisect
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GRID = (8, 16, 32, 48, 64, 96, 128, 192, 256)


def interpolate(grid: list[int], seconds: list[float], length: int) -> float:
    """Piecewise-linear step cost at `length` from costs measured at `grid` (clamped at the ends)."""
    if length <= grid[0]:
        return seconds[0] * length / grid[0]
    if length >= grid[-1]:
        return seconds[-1]
    j = bisect.bisect_left(grid, length)
    lo, hi = grid[j - 1], grid[j]
    return seconds[j - 1] + (seconds[j] - seconds[j - 1]) * (length - lo) / (hi - lo)


def category(op: str) -> str:
    if op.startswith("aten::") and any(k in op for k in ("mm", "linear", "matmul", "baddbmm", "bmm")):
        return "matrix products (linear layers)"
    if "attention" in op or "sdpa" in op or "softmax" in op:
        return "attention"
    if "adam" in op.lower():
        return "optimizer (fused AdamW)"
    return "other ops (norms, GELU, dropout, embeddings, copies)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "depression_reddit"))
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile-steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--torch-dropout", action="store_true",
                        help="torch's own dropout (--cpu_speedups false) instead of ftl's default")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from padding import (  # benchmarks/padding.py
        ftl_training_batches,
        hf_group_by_length_batches,
        train_texts_and_lengths,
    )
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ftl.data.sampling import LengthGroupedSampler
    from ftl.hub import resolve_pretrained

    torch.manual_seed(args.seed)
    path = resolve_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    if not args.torch_dropout:
        from ftl.models.dropout import enable_fast_cpu_dropout

        enable_fast_cpu_dropout(model)  # the model as ftl trains it by default
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    bs = args.batch_size

    def step(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> None:
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def synthetic(length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = torch.randint(1000, model.config.vocab_size, (bs, length))
        return ids, torch.ones_like(ids), torch.randint(0, 2, (bs,))

    # 1. step cost by padded length; grid points interleaved across repeats so drift hits all alike.
    grid = [g for g in GRID if g <= args.max_length]
    step(*synthetic(64))  # warm-up
    costs: dict[int, list[float]] = {g: [] for g in grid}
    for repeat in range(args.repeats):
        for g in grid if repeat % 2 == 0 else reversed(grid):
            batch = synthetic(g)
            start = time.perf_counter()
            step(*batch)
            costs[g].append(time.perf_counter() - start)
    seconds = [sorted(costs[g])[len(costs[g]) // 2] for g in grid]
    print(f"# {args.model}, batch {bs}, forward + backward + fused AdamW; median of {args.repeats}")
    print("\n| padded length | seconds per step | ms per padded token |\n|---:|---:|---:|")
    for g, s in zip(grid, seconds, strict=True):
        print(f"| {g} | {s:.3f} | {1000 * s / (bs * g):.3f} |")

    tokenizer = AutoTokenizer.from_pretrained(path)
    texts, lengths = train_texts_and_lengths(args.data, tokenizer, args.max_length)
    orders = {
        "random batches": LengthGroupedSampler(lengths, bs, 1, seed=args.seed).batches(),
        "ftl (groups of 64 batches)": LengthGroupedSampler(lengths, bs, 64, seed=args.seed).batches(),
        "HF group_by_length": hf_group_by_length_batches(lengths, bs, args.seed),
        "every row sorted (the floor)": LengthGroupedSampler(lengths, bs, len(lengths), seed=args.seed).batches(),
    }
    priced = {
        name: sum(interpolate(grid, seconds, max(lengths[i] for i in b)) * len(b) / bs for b in batches)
        for name, batches in orders.items()
    }
    hf = priced["HF group_by_length"]
    print(f"\n# epoch of {len(lengths)} rows priced from the step costs above (model compute only)")
    print("\n| order | seconds per epoch | samples/s | HF group_by_length time / this |\n|---|---:|---:|---:|")
    for name, total in priced.items():
        print(f"| {name} | {total:.1f} | {len(lengths) / total:.2f} | {hf / total:.3f}x |")

    # 2. profile of real training steps in ftl's order.
    from torch.profiler import ProfilerActivity, profile

    encoded = ftl_training_batches(texts, lengths, tokenizer, bs, args.profile_steps, args.max_length, args.seed)
    batches = [(enc["input_ids"], enc["attention_mask"], torch.randint(0, 2, (bs,))) for enc in encoded]
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches:
            step(*batch)
    wall = time.perf_counter() - start
    shares: dict[str, float] = {}
    for event in prof.key_averages():
        # Top-level time only: self CPU time, so nested ops are not counted twice.
        shares[category(event.key)] = shares.get(category(event.key), 0.0) + event.self_cpu_time_total / 1e6
    print(f"\n# torch.profiler over {len(batches)} of ftl's training steps ({wall:.1f} s wall, "
          f"self CPU time per op, summed by kind)")
    print("\n| kind | seconds | share |\n|---|---:|---:|")
    total = sum(shares.values())
    for kind, s in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {s:.2f} | {s / total:.1%} |")
    print("\n| top ops by self CPU time | kind | seconds | share |\n|---|---|---:|---:|")
    for event in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]:
        s = event.self_cpu_time_total / 1e6
        print(f"| `{event.key}` | {category(event.key).split(' (')[0]} | {s:.2f} | {s / total:.1%} |")


if __name__ == "__main__":
    main()
