"""Length-grouped training order and length-sorted evaluation order."""

from __future__ import annotations

import random

from ftl.data.sampling import LengthGroupedSampler, SortedSampler


def padded_tokens(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(max(lengths[i] for i in b) * len(b) for b in batches)


def lengths_long_tailed(n: int = 1000, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [min(512, int(rng.paretovariate(1.2) * 20)) for _ in range(n)]


def test_every_index_once_and_only_the_last_batch_is_short():
    lengths = lengths_long_tailed(1003)
    sampler = LengthGroupedSampler(lengths, batch_size=16, group_batches=8, seed=1)
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(1003))
    assert all(len(b) == 16 for b in batches[:-1]) and len(batches[-1]) == 1003 % 16
    assert list(sampler) == [i for b in batches for i in b]


def test_grouping_cuts_padding_versus_random_batches():
    lengths = lengths_long_tailed()
    rng = random.Random(0)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    random_batches = [order[i : i + 16] for i in range(0, len(order), 16)]
    grouped = LengthGroupedSampler(lengths, batch_size=16, group_batches=16, seed=0).batches()
    assert padded_tokens(grouped, lengths) < 0.6 * padded_tokens(random_batches, lengths)


def test_seeded_per_epoch_and_still_random():
    lengths = lengths_long_tailed()
    a = LengthGroupedSampler(lengths, 16, seed=3)
    b = LengthGroupedSampler(lengths, 16, seed=3)
    assert a.batches() == b.batches()
    first = a.batches()
    a.set_epoch(1)
    assert a.batches() != first
    # batch order is shuffled: batch lengths are not monotonic
    maxima = [max(lengths[i] for i in batch) for batch in first[:-1]]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_sorted_sampler_is_longest_first_permutation():
    lengths = [3, 9, 1, 9, 4]
    order = list(SortedSampler(lengths))
    assert sorted(order) == list(range(5))
    assert [lengths[i] for i in order] == [9, 9, 4, 3, 1]
