"""Packing: training sequences placed best-fit into rows of `max_length` tokens, attention kept inside each sequence.

A packed row holds several whole sequences (a sequence is never split: ftl's sequences are at most `max_length`
long already) and carries `seq_lengths`; the collator turns them into `position_ids` that restart at 0 for every
sequence and passes no attention mask, which is how transformers recognises packed rows
(`masking_utils.find_packed_sequence_indices`): each token attends only to earlier tokens of its own sequence,
on the eager and SDPA paths alike, and flash-attention kernels read the same boundaries. Rows stay separate
(batch x row length) rather than being flattened into one row of the whole batch: on SDPA without a varlen
kernel the attention cost grows with the square of the row, so short rows are cheaper. Labels are the
unpacked ones with the first token of every sequence unscored, so the loss covers the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

IGNORE_INDEX = -100


def best_fit_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins of at most `capacity` tokens, best-fit decreasing: longest first, each into the
    fullest bin it still fits (a new bin when none). Within about 11/9 of the fewest bins possible; deterministic.

    Free space is bucketed by size, so a placement scans at most `capacity` buckets (fast for the row lengths
    of fine-tuning; TRL uses a segment tree for the same search)."""
    if capacity < 1:
        raise ValueError(f"capacity must be positive, got {capacity}")
    bins: list[list[int]] = []
    by_space: list[list[int]] = [[] for _ in range(capacity + 1)]  # free space -> bins with exactly that much
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = min(int(lengths[index]), capacity)
        target = next((space for space in range(length, capacity + 1) if by_space[space]), None)
        if target is None:
            bins.append([index])
            by_space[capacity - length].append(len(bins) - 1)
        else:
            b = by_space[target].pop()
            bins[b].append(index)
            by_space[target - length].append(b)
    return bins


def pack_dataset(dataset: Any, capacity: int) -> Any:
    """A `datasets.Dataset` of packed rows (input_ids, labels, seq_lengths) from a tokenized one.

    Reads the token columns once as Python lists: packing is for SFT-sized data (thousands to a few hundred
    thousand rows); each packed row keeps its sequences in bin order."""
    import datasets

    from ftl.data.sampling import sequence_lengths

    lengths = sequence_lengths(dataset)
    columns = dataset.select_columns(["input_ids", "labels"]).to_dict()
    packed: dict[str, list] = {"input_ids": [], "labels": [], "seq_lengths": []}
    for members in best_fit_bins(lengths, capacity):
        ids: list[int] = []
        labels: list[int] = []
        for i in members:
            ids += columns["input_ids"][i]
            labels += [IGNORE_INDEX] + list(columns["labels"][i][1:])  # never predicted from the previous sequence
        packed["input_ids"].append(ids)
        packed["labels"].append(labels)
        packed["seq_lengths"].append([lengths[i] for i in members])
    return datasets.Dataset.from_dict(packed)


def position_ids(seq_lengths: Sequence[int], row_length: int) -> list[int]:
    """Positions restarting at 0 for each sequence; the row's padding tail counts as one more sequence, so it
    is kept apart like any other."""
    out = [p for n in seq_lengths for p in range(int(n))]
    return out + list(range(row_length - len(out)))


def padding_share(real_tokens: int, rows: int, row_length: int) -> float:
    """Share of a (rows x row_length) batch that is padding."""
    slots = rows * row_length
    return 1.0 - real_tokens / slots if slots else 0.0
