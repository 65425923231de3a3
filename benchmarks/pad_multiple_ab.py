"""A/B timing on this machine: the same batches padded exactly vs to a multiple of 8.

Times forward+backward on 60 of ftl's training batches and the forward pass on the whole length-sorted test
split, alternating the two paddings batch by batch (which goes first swaps every repeat), so the drift of a
shared machine hits both alike. It decided `data.pad_to_multiple_of`'s CPU default. Not run by pytest.

    python benchmarks/pad_multiple_ab.py --data ../shared/data/depression_reddit
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "depression_reddit"))
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--train-batches", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    from ftl.data.classification import TextClassificationDataModule
    from ftl.data.sampling import LengthGroupedSampler, SortedSampler, sequence_lengths
    from ftl.hub import resolve_pretrained

    path = resolve_pretrained(args.model)
    dm = TextClassificationDataModule(data_dir=args.data, tokenizer=path, max_length=256, batch_size=16, seed=42)
    dm.prepare_data()
    dm.setup("fit")
    collators = {
        1: DataCollatorWithPadding(dm.tokenizer, return_tensors="pt"),
        8: DataCollatorWithPadding(dm.tokenizer, pad_to_multiple_of=8, return_tensors="pt"),
    }

    def rows(split: str, indices: list[int]) -> list[dict]:
        ds = dm.datasets[split]
        cols = [c for c in ("input_ids", "attention_mask", "token_type_ids", "labels") if c in ds.column_names]
        return [{c: ds[i][c] for c in cols} for i in indices]

    train = dm.datasets["train"]
    train_batches = [rows("train", b) for b in
                     LengthGroupedSampler(sequence_lengths(train), 16, 64, seed=42).batches()[: args.train_batches]]
    order = SortedSampler(sequence_lengths(dm.datasets["test"])).order
    eval_batches = [rows("test", order[i : i + 32]) for i in range(0, len(order), 32)]
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=dm.num_labels)

    seconds = {(phase, m): 0.0 for phase in ("train", "eval") for m in (1, 8)}
    for batch in train_batches[:3]:  # warm-up
        model(**collators[8](batch)).loss.backward()
    for repeat in range(args.repeats):
        multiples = (1, 8) if repeat % 2 == 0 else (8, 1)
        model.train()
        for batch in train_batches:
            for m in multiples:
                inputs = collators[m](batch)
                start = time.perf_counter()
                model(**inputs).loss.backward()
                seconds["train", m] += time.perf_counter() - start
            model.zero_grad()
        model.eval()
        with torch.inference_mode():
            for batch in eval_batches:
                for m in multiples:
                    inputs = collators[m](batch)
                    start = time.perf_counter()
                    model(**inputs)
                    seconds["eval", m] += time.perf_counter() - start
    for phase in ("train", "eval"):
        exact, rounded = seconds[phase, 1], seconds[phase, 8]
        print(f"{phase}: exact padding {exact:.2f} s, multiple of 8 {rounded:.2f} s, ratio {rounded / exact:.3f}")


if __name__ == "__main__":
    main()
