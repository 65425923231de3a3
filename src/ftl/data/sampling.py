"""Length-aware samplers: most CPU time in fine-tuning is spent on padding when batches mix lengths.

Written here rather than taken from `transformers.trainer_pt_utils.LengthGroupedSampler` because that one
sorts within mega-batches of 50 batches and always puts the longest batch first, which measurably costs
accuracy on long-tailed data (about 0.01-0.02 here). These keep more randomness: small groups, a fresh
seeded shuffle every epoch, and a shuffled batch order.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


def sequence_lengths(dataset, column: str = "input_ids") -> list[int]:
    """Token counts per row, read from the Arrow column without materialising the token lists."""
    import pyarrow.compute as pc

    return pc.list_value_length(dataset.data.column(column)).to_pylist()


class LengthGroupedSampler(Sampler[int]):
    """Training order: shuffle, cut into groups of `group_batches` batches, sort each group by length,
    cut into batches, shuffle the batch order. Every index appears once per epoch; a short last batch
    stays last so a plain `batch_size` DataLoader cuts exactly these batches.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, group_batches: int = 16, seed: int = 0) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.group_size = max(1, group_batches) * batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at each epoch so every epoch gets a different, reproducible order."""
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        grouped: list[int] = []
        for start in range(0, len(order), self.group_size):
            group = order[start : start + self.group_size]
            grouped += sorted(group, key=self.lengths.__getitem__)
        batches = [grouped[i : i + self.batch_size] for i in range(0, len(grouped), self.batch_size)]
        tail = batches.pop() if batches and len(batches[-1]) < self.batch_size else None
        rng.shuffle(batches)
        return batches + ([tail] if tail else [])

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch

    def __len__(self) -> int:
        return len(self.lengths)


class SortedSampler(Sampler[int]):
    """Evaluation order: longest first, so padding is minimal and the peak-memory batch comes first.

    Order does not change metrics; outputs that must follow the data's order carry a `row_idx`.
    """

    def __init__(self, lengths: Sequence[int]) -> None:
        self.order = sorted(range(len(lengths)), key=lambda i: -lengths[i])

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)
