"""Length-aware samplers: most CPU time in fine-tuning is spent on padding when batches mix lengths.

Written here rather than taken from `transformers.trainer_pt_utils.LengthGroupedSampler` because that one
sorts within mega-batches of 50 batches, keeps each mega-batch's batches in order (longest first) and puts the
longest batch first, which measurably costs accuracy on long-tailed data (0.954 vs ftl's 0.979-0.985 test
accuracy on depression_reddit). These group as tightly (64 batches by default) but keep more randomness:
a fresh seeded shuffle every epoch and a shuffled order of all batches.

Both samplers are also the distributed samplers: given `num_replicas`/`rank` each process gets its own shard.
They subclass `DistributedSampler` for that reason: Lightning wraps any other sampler in a
`DistributedSamplerWrapper`, which reshuffles training indices (undoing the length grouping) and pads evaluation
splits with duplicate rows (so validation metrics count some rows twice); an existing `DistributedSampler` it
leaves alone (see `Trainer(use_distributed_sampler=...)`). Neither calls `DistributedSampler.__init__`, which
would query the process group; they only borrow its type.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

from torch.utils.data import DistributedSampler


def sequence_lengths(dataset, column: str = "input_ids") -> list[int]:
    """Token counts per row, read from the Arrow column without materialising the token lists."""
    import pyarrow.compute as pc

    return pc.list_value_length(dataset.data.column(column)).to_pylist()


class LengthGroupedSampler(DistributedSampler):
    """Training order: shuffle, cut into groups of `group_batches` batches, sort each group by length,
    cut into batches, shuffle the batch order. Every index appears once per epoch; a short last batch
    stays last so a plain `batch_size` DataLoader cuts exactly these batches.

    `weights` (one per row) turn the shuffle into a seeded draw of `len(lengths)` rows with replacement,
    in proportion to the weights (oversampling). With `num_replicas` > 1 the epoch's rows are padded by
    repeating the first ones to a multiple of `num_replicas` (as `DistributedSampler` does, so every process
    runs the same number of steps) and process `rank` groups and batches its share `[rank::num_replicas]`.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        group_batches: int = 64,
        seed: int = 0,
        weights: Sequence[float] | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.group_size = max(1, group_batches) * batch_size
        self.seed = seed
        self.epoch = 0
        if weights is not None and len(weights) != len(self.lengths):
            raise ValueError(f"{len(weights)} weights for {len(self.lengths)} rows")
        self.weights = None if weights is None else list(weights)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.num_replicas, self.rank = num_replicas, rank
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Start epoch `epoch` after its first `batches_done` batches: a run resumed from a mid-epoch checkpoint
        (ftl saves one at Ctrl-C) then trains on the rest of that epoch's order, as the unbroken run did."""
        self._resume = (epoch, batches_done)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at each epoch so every epoch gets a different, reproducible order."""
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """This process's batches for the current epoch (same seed and epoch: same batches)."""
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        n = len(self.lengths)
        if self.weights is None:
            order = list(range(n))
            rng.shuffle(order)
        else:
            order = rng.choices(range(n), weights=self.weights, k=n)
        if self.num_replicas > 1 and order:
            total = math.ceil(n / self.num_replicas) * self.num_replicas
            order = (order * math.ceil(total / n))[:total][self.rank :: self.num_replicas]
        grouped: list[int] = []
        for start in range(0, len(order), self.group_size):
            group = order[start : start + self.group_size]
            grouped += sorted(group, key=self.lengths.__getitem__)
        batches = [grouped[i : i + self.batch_size] for i in range(0, len(grouped), self.batch_size)]
        tail = batches.pop() if batches and len(batches[-1]) < self.batch_size else None
        rng.shuffle(batches)
        return batches + ([tail] if tail else [])

    def __iter__(self) -> Iterator[int]:
        batches = self.batches()
        if self._resume is not None and self._resume[0] <= self.epoch:
            if self._resume[0] == self.epoch:
                batches = batches[self._resume[1] :]  # whole batches: the DataLoader cuts the same ones after
            self._resume = None
        for batch in batches:
            yield from batch

    def __len__(self) -> int:
        # the full epoch even when resumed mid-epoch: Lightning counts the batches done before the interrupt
        return math.ceil(len(self.lengths) / self.num_replicas)


class SortedSampler(DistributedSampler):
    """Evaluation order: longest first, so padding is minimal and the peak-memory batch comes first.

    Order does not change metrics; outputs that must follow the data's order carry a `row_idx`.
    With `num_replicas` > 1, process `rank` takes every `num_replicas`-th row of that order and nothing is
    padded: each row is evaluated exactly once, and shares differ by at most one row (safe for evaluation,
    where DDP synchronises nothing per batch after the first; Lightning's `UnrepeatedDistributedSampler`
    relies on the same for prediction).
    """

    def __init__(self, lengths: Sequence[int], num_replicas: int = 1, rank: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.num_replicas, self.rank, self.epoch = num_replicas, rank, 0
        self.order = sorted(range(len(lengths)), key=lambda i: -lengths[i])[rank::num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)
