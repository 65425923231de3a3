"""Tests for ftl.data.synthetic: the offline dataset must be deterministic, balanced, leak-free and hard
enough that no keyword solves it (otherwise the quickstart's before/after numbers mean nothing)."""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from pathlib import Path

import pytest

from ftl.data.synthetic import LABEL_NAMES, add_label_noise, make_examples, write_splits

SPLITS = ("train", "val", "test")


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def _read(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_label_names_are_distinct_identifiers():
    assert len(LABEL_NAMES) >= 4
    assert len(set(LABEL_NAMES)) == len(LABEL_NAMES)
    assert all(re.fullmatch(r"[a-z_]+", name) for name in LABEL_NAMES)


def test_rows_have_text_and_label_in_range():
    rows = make_examples(300, seed=1)
    assert len(rows) == 300
    for row in rows:
        assert set(row) == {"text", "label"}
        assert isinstance(row["text"], str) and len(row["text"].split()) >= 4
        assert isinstance(row["label"], int) and 0 <= row["label"] < len(LABEL_NAMES)
    assert len({row["label"] for row in rows}) == len(LABEL_NAMES) >= 3


def test_same_seed_same_rows_different_seed_different_rows():
    assert make_examples(200, seed=7) == make_examples(200, seed=7)
    a = [row["text"] for row in make_examples(200, seed=7)]
    b = [row["text"] for row in make_examples(200, seed=8)]
    assert a != b
    assert len(set(a) & set(b)) < 20  # not just a reshuffle of the same texts


def test_texts_are_unique():
    rows = make_examples(2000, seed=0)
    assert len({row["text"] for row in rows}) == len(rows)


@pytest.mark.parametrize("n", [0, 1, 7, 503])
def test_clean_labels_are_balanced(n):
    counts = Counter(row["label"] for row in make_examples(n, seed=2, label_noise=0.0))
    assert sum(counts.values()) == n
    per_class = [counts.get(c, 0) for c in range(len(LABEL_NAMES))]
    assert max(per_class) - min(per_class) <= 1


def test_noisy_labels_stay_roughly_balanced():
    n = 1000
    counts = Counter(row["label"] for row in make_examples(n, seed=2))  # default noise 0.05
    expected = n / len(LABEL_NAMES)
    assert all(abs(counts[c] - expected) <= 0.05 * n for c in range(len(LABEL_NAMES)))


@pytest.mark.parametrize("noise", [0.05, 0.1, 0.3])
def test_noise_changes_the_requested_fraction_of_labels_only(noise):
    clean = make_examples(1000, seed=5, label_noise=0.0)
    noisy = make_examples(1000, seed=5, label_noise=noise)
    assert [r["text"] for r in clean] == [r["text"] for r in noisy]
    flipped = sum(c["label"] != d["label"] for c, d in zip(clean, noisy, strict=True))
    assert math.isclose(flipped / len(clean), noise, abs_tol=0.01)
    assert all(0 <= r["label"] < len(LABEL_NAMES) for r in noisy)


def test_zero_noise_is_the_clean_data_and_noise_pass_does_not_mutate_input():
    clean = make_examples(100, seed=3, label_noise=0.0)
    snapshot = [dict(r) for r in clean]
    assert add_label_noise(clean, 0.0, seed=3) == clean
    noisy = add_label_noise(clean, 0.5, seed=3)
    assert clean == snapshot
    assert noisy == add_label_noise(clean, 0.5, seed=3)
    assert sum(a["label"] != b["label"] for a, b in zip(clean, noisy, strict=True)) == 50


@pytest.mark.parametrize("kwargs", [{"n": -1}, {"n": 10, "label_noise": -0.1}, {"n": 10, "label_noise": 1.5}])
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        make_examples(**kwargs)


def test_no_single_word_gives_a_class_away():
    rows = make_examples(2000, seed=0, label_noise=0.0)
    token_sets = [_tokens(r["text"]) for r in rows]
    for label, name in enumerate(LABEL_NAMES):
        mine = [t for t, r in zip(token_sets, rows, strict=True) if r["label"] == label]
        others = [t for t, r in zip(token_sets, rows, strict=True) if r["label"] != label]
        in_mine = Counter(tok for toks in mine for tok in toks)
        in_others = Counter(tok for toks in others for tok in toks)
        for tok, count in in_mine.items():
            shortcut = count / len(mine) >= 0.9 and in_others[tok] / len(others) < 0.02
            assert not shortcut, f"{tok!r} nearly identifies {name}"


def test_write_splits_files_header_sizes_and_label_names(tmp_path):
    out = write_splits(tmp_path / "synth", n_train=120, n_val=30, n_test=40, seed=1)
    assert out == tmp_path / "synth"
    for split, n in zip(SPLITS, (120, 30, 40), strict=True):
        path = out / f"{split}.csv"
        assert path.read_bytes().split(b"\n", 1)[0] == b"text,label,label_name"
        rows = _read(path)
        assert len(rows) == n
        for row in rows:
            label = int(row["label"])
            assert 0 <= label < len(LABEL_NAMES)
            assert row["label_name"] == LABEL_NAMES[label]
            assert row["text"].strip()


def test_write_splits_no_text_in_two_splits_and_eval_splits_balanced(tmp_path):
    out = write_splits(tmp_path, n_train=600, n_val=150, n_test=150, seed=0)
    texts = {split: [r["text"] for r in _read(out / f"{split}.csv")] for split in SPLITS}
    for split in SPLITS:
        assert len(set(texts[split])) == len(texts[split])
    assert not set(texts["train"]) & set(texts["val"])
    assert not set(texts["train"]) & set(texts["test"])
    assert not set(texts["val"]) & set(texts["test"])
    for split in ("val", "test"):
        counts = Counter(r["label"] for r in _read(out / f"{split}.csv"))
        assert len(counts) == len(LABEL_NAMES) and max(counts.values()) - min(counts.values()) <= 1


def test_write_splits_is_byte_identical_on_rewrite(tmp_path):
    first = {s: (write_splits(tmp_path / "a", seed=4) / f"{s}.csv").read_bytes() for s in SPLITS}
    write_splits(tmp_path / "a", seed=4)  # overwrite in place
    write_splits(tmp_path / "b", seed=4)  # fresh folder
    for split in SPLITS:
        assert (tmp_path / "a" / f"{split}.csv").read_bytes() == first[split]
        assert (tmp_path / "b" / f"{split}.csv").read_bytes() == first[split]
    write_splits(tmp_path / "c", seed=5)
    assert (tmp_path / "c" / "train.csv").read_bytes() != first["train"]


def test_write_splits_noise_only_touches_train(tmp_path):
    clean = write_splits(tmp_path / "clean", seed=2, label_noise=0.0)
    noisy = write_splits(tmp_path / "noisy", seed=2, label_noise=0.2)
    for split in ("val", "test"):
        assert (clean / f"{split}.csv").read_bytes() == (noisy / f"{split}.csv").read_bytes()
    a, b = _read(clean / "train.csv"), _read(noisy / "train.csv")
    assert [r["text"] for r in a] == [r["text"] for r in b]
    flipped = sum(x["label"] != y["label"] for x, y in zip(a, b, strict=True))
    assert math.isclose(flipped / len(a), 0.2, abs_tol=0.01)


def test_bag_of_words_learns_it_but_does_not_solve_it(tmp_path):
    """Naive Bayes on word counts (stdlib only) must beat chance by far yet stay below perfect."""
    out = write_splits(tmp_path, seed=0)
    train, test = _read(out / "train.csv"), _read(out / "test.csv")
    k = len(LABEL_NAMES)
    word_counts = [Counter() for _ in range(k)]
    docs = Counter()
    for row in train:
        label = int(row["label"])
        docs[label] += 1
        word_counts[label].update(re.findall(r"[a-z0-9]+", row["text"].lower()))
    vocab = set().union(*word_counts)
    totals = [sum(c.values()) for c in word_counts]

    def predict(text: str) -> int:
        words = re.findall(r"[a-z0-9]+", text.lower())
        scores = [
            math.log(docs[c] / len(train))
            + sum(math.log((word_counts[c][w] + 1) / (totals[c] + len(vocab))) for w in words if w in vocab)
            for c in range(k)
        ]
        return max(range(k), key=scores.__getitem__)

    accuracy = sum(predict(r["text"]) == int(r["label"]) for r in test) / len(test)
    assert 2.5 / k < accuracy < 0.95, accuracy
