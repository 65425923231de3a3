"""Tokens each batching order makes the model process in one epoch: the work behind the throughput numbers.

On a CPU a step costs about its batch size x padded length, so the padded tokens of an epoch show what
length grouping can save and where its floor is (every row sorted by length). Compares ftl's
`LengthGroupedSampler` at several group sizes (with and without padding to a multiple of 8) against random
batches and HF Trainer's `group_by_length` order. Seconds to run; not run by pytest.

    python benchmarks/padding.py --data ../shared/data/depression_reddit
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def padded_tokens(lengths: list[int], batches: list[list[int]], multiple: int = 1) -> int:
    """Sum over batches of rows x (longest row rounded up to `multiple`)."""
    total = 0
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        total += len(batch) * (-(-longest // multiple) * multiple)
    return total


def train_texts_and_lengths(data: str, tokenizer, max_length: int) -> tuple[list[str], list[int]]:
    """The training split's texts and their token counts after truncation (what the collator pads)."""
    with open(Path(data) / "train.csv", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    return texts, [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]


def hf_group_by_length_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """HF Trainer's `group_by_length` order (mega-batches of 50 batches, longest first), cut into batches."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    order = get_length_grouped_indices(lengths, batch_size, generator=torch.Generator().manual_seed(seed))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def ftl_training_batches(
    texts: list[str], lengths: list[int], tokenizer, batch_size: int, count: int, max_length: int, seed: int
) -> list:
    """The first `count` full batches of ftl's training order (groups of 64 batches), tokenized and padded."""
    from ftl.data.sampling import LengthGroupedSampler

    batches = LengthGroupedSampler(lengths, batch_size, 64, seed=seed).batches()
    full = [b for b in batches if len(b) == batch_size][:count]
    return [
        tokenizer([texts[i] for i in b], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        for b in full
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "depression_reddit"))
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from transformers import AutoTokenizer

    from ftl.data.sampling import LengthGroupedSampler
    from ftl.hub import resolve_pretrained

    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(args.model))
    _, lengths = train_texts_and_lengths(args.data, tokenizer, args.max_length)
    real, bs = sum(lengths), args.batch_size
    print(f"# {len(lengths)} training rows, {real} real tokens (mean {real / len(lengths):.1f}), batch {bs}")
    print("\n| order | padded tokens | x real tokens |\n|---|---:|---:|")

    def row(name: str, batches: list[list[int]], multiple: int = 1) -> None:
        tokens = padded_tokens(lengths, batches, multiple)
        print(f"| {name} | {tokens:,} | {tokens / real:.3f} |")

    for group in (1, 16, 64, len(lengths)):
        batches = LengthGroupedSampler(lengths, bs, group, seed=args.seed).batches()
        name = "random batches" if group == 1 else f"ftl, groups of {group} batches"
        if group == len(lengths):
            name = "ftl, every row sorted (the floor)"
        row(name, batches)
        if group in (16, 64):
            row(name + ", padded to a multiple of 8", batches, 8)
    row("HF Trainer group_by_length (mega-batches of 50)", hf_group_by_length_batches(lengths, bs, args.seed))


if __name__ == "__main__":
    main()
