"""Packing: best-fit rows and per-sequence positions (packed vs unpacked loss: not yet equal, see
benchmarks/results/medquad_base_chat.txt)."""

from __future__ import annotations

import random

from ftl.data.packing import best_fit_bins, position_ids


def test_best_fit_bins_place_every_sequence_once_within_capacity():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(300)]
    bins = best_fit_bins(lengths, 128)
    placed = sorted(i for b in bins for i in b)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    assert len(bins) <= -(-sum(lengths) * 11 // 9) // 128 + 1  # best-fit decreasing: within 11/9 of optimal
    assert bins == best_fit_bins(lengths, 128)  # deterministic


def test_position_ids_restart_for_every_sequence_and_the_padding_tail():
    assert position_ids([3, 2], 7) == [0, 1, 2, 0, 1, 0, 1]
