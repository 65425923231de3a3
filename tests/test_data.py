"""TextDataModule / TextClassificationDataModule: sources, labels, splits, caching, padding, bad input."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from ftl.data.classification import CancerDataModule, TextClassificationDataModule
from ftl.errors import FTLError


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def labelled_rows(n: int, labels: list, prefix: str = "text") -> list[dict]:
    return [{"text": f"{prefix} number {i} about {labels[i % len(labels)]}", "label": labels[i % len(labels)]}
            for i in range(n)]


def make_dm(tokenizer, **kwargs) -> TextClassificationDataModule:
    kwargs.setdefault("tokenizer", str(tokenizer))
    return TextClassificationDataModule(**kwargs)


def test_reads_shared_format_and_names_labels_from_label_name_column(tiny_data_dir, tiny_bert):
    from ftl.data.synthetic import LABEL_NAMES

    dm = make_dm(tiny_bert, data_dir=str(tiny_data_dir))
    assert dm.label_names == LABEL_NAMES
    assert dm.num_labels == len(LABEL_NAMES)
    assert {split: len(ds) for split, ds in dm.raw.items()} == {"train": 64, "val": 32, "test": 32}


def test_string_labels_are_inferred_in_sorted_order_and_encoded(tmp_path, tiny_bert):
    rows = labelled_rows(30, ["zeta", "alpha", "mid"])
    write_csv(tmp_path / "d" / "train.csv", rows)
    write_csv(tmp_path / "d" / "test.csv", rows[:9])
    write_csv(tmp_path / "d" / "val.csv", rows[:9])
    dm = make_dm(tiny_bert, data_dir=str(tmp_path / "d"))
    assert dm.label_names == ["alpha", "mid", "zeta"]
    encoded = dm.raw["train"]["labels"]
    assert [dm.label_names[i] for i in encoded] == [r["label"] for r in rows]


def test_given_label_names_fix_the_order(tmp_path, tiny_bert):
    rows = labelled_rows(20, ["pos", "neg"])
    write_csv(tmp_path / "d" / "train.csv", rows)
    dm = make_dm(tiny_bert, data_dir=str(tmp_path / "d"), label_names=["pos", "neg"])
    train = dm.raw["train"]
    assert all(text.endswith(("pos", "neg")[label]) for text, label in zip(train["text"], train["labels"], strict=True))


def test_missing_splits_are_stratified_seeded_and_disjoint(tmp_path, tiny_bert):
    rows = labelled_rows(200, [0, 0, 0, 1])  # 75% / 25%
    write_csv(tmp_path / "d" / "train.csv", rows)
    dm = make_dm(tiny_bert, data_dir=str(tmp_path / "d"), seed=7)
    sizes = {split: len(ds) for split, ds in dm.raw.items()}
    assert sizes == {"train": 160, "val": 20, "test": 20}
    for split in ("val", "test"):
        counts = Counter(dm.raw[split]["labels"])
        assert counts == {0: 15, 1: 5}, (split, counts)
    texts = {split: set(ds["text"]) for split, ds in dm.raw.items()}
    assert not texts["train"] & texts["val"] and not texts["train"] & texts["test"] and not texts["val"] & texts["test"]
    again = make_dm(tiny_bert, data_dir=str(tmp_path / "d"), seed=7)
    other = make_dm(tiny_bert, data_dir=str(tmp_path / "d"), seed=8)
    assert again.raw["test"]["text"] == dm.raw["test"]["text"]
    assert other.raw["test"]["text"] != dm.raw["test"]["text"]


def test_jsonl_and_data_files_sources(tmp_path, tiny_bert):
    rows = labelled_rows(40, ["a", "b"])
    path = tmp_path / "all.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = make_dm(tiny_bert, data_files=str(path))
    assert sum(len(ds) for ds in dm.raw.values()) == 40
    assert set(dm.raw) == {"train", "val", "test"}


def test_max_samples_caps_every_split(tiny_data_dir, tiny_bert):
    dm = make_dm(tiny_bert, data_dir=str(tiny_data_dir), max_samples=10)
    assert {split: len(ds) for split, ds in dm.raw.items()} == {"train": 10, "val": 10, "test": 10}


@pytest.mark.parametrize("pad_to_multiple_of", [None, 8])
def test_batches_are_padded_per_batch_never_to_max_length(tiny_data_dir, tiny_bert, pad_to_multiple_of):
    """Default: no rounding on a machine without CUDA (CPU gains nothing from it), 8 where CUDA is available."""
    import torch

    dm = make_dm(tiny_bert, data_dir=str(tiny_data_dir), max_length=128, batch_size=4, eval_batch_size=4,
                 pad_to_multiple_of=pad_to_multiple_of)
    dm.prepare_data()
    dm.setup("fit")
    multiple = pad_to_multiple_of or (8 if torch.cuda.is_available() else 1)
    lengths = set()
    for batch in dm.val_dataloader():
        assert set(batch) >= {"input_ids", "attention_mask", "labels"}
        width = batch["input_ids"].shape[1]
        longest = int(batch["attention_mask"].sum(1).max())
        assert width % multiple == 0 and longest <= width < longest + multiple
        lengths.add(width)
    assert max(lengths) < 128
    assert len(lengths) > 1


def test_tokenization_is_cached_across_instances(tiny_data_dir, tiny_bert):
    calls = []

    class Counting(TextClassificationDataModule):
        def _tokenize_batch(self, batch):
            calls.append(len(batch["text"]))
            return super()._tokenize_batch(batch)

    first = Counting(data_dir=str(tiny_data_dir), tokenizer=str(tiny_bert), max_length=40)
    first.prepare_data()
    assert sum(calls) == 128
    second = Counting(data_dir=str(tiny_data_dir), tokenizer=str(tiny_bert), max_length=40)
    second.prepare_data()
    second.setup("fit")
    assert sum(calls) == 128, "second run re-tokenized instead of reading the cache"
    third = Counting(data_dir=str(tiny_data_dir), tokenizer=str(tiny_bert), max_length=24)
    third.prepare_data()
    assert sum(calls) == 256, "a different max_length must not reuse the cache"
    assert max(len(ids) for ids in third.datasets.get("train", third.tokenize_split("train"))["input_ids"]) <= 24


# ---------------------------------------------------------------------- bad input: one clear line each
def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_path(tmp_path, tiny_bert):
    with pytest.raises(FTLError) as err:
        make_dm(tiny_bert, data_dir=str(tmp_path / "nope")).raw  # noqa: B018
    assert "does not exist" in one_line(err)


def test_missing_text_column_lists_columns(tmp_path, tiny_bert):
    write_csv(tmp_path / "d" / "train.csv", [{"body": "x", "label": 0}, {"body": "y", "label": 1}])
    with pytest.raises(FTLError) as err:
        make_dm(tiny_bert, data_dir=str(tmp_path / "d")).raw  # noqa: B018
    message = one_line(err)
    assert "'text'" in message and "body, label" in message and "data.text_column" in message


def test_unknown_label(tmp_path, tiny_bert):
    write_csv(tmp_path / "d" / "train.csv", labelled_rows(20, ["cancer", "non_cancer", "maybe"]))
    with pytest.raises(FTLError) as err:
        CancerDataModule(data_dir=str(tmp_path / "d"), tokenizer=str(tiny_bert)).raw  # noqa: B018
    assert "'maybe'" in one_line(err) and "label_names" in one_line(err)


def test_empty_split(tmp_path, tiny_bert):
    write_csv(tmp_path / "d" / "train.csv", labelled_rows(20, ["a", "b"]))
    (tmp_path / "d" / "test.csv").write_text("text,label\n")
    with pytest.raises(FTLError) as err:
        make_dm(tiny_bert, data_dir=str(tmp_path / "d")).raw  # noqa: B018
    assert "test split is empty" in one_line(err)


def test_split_too_small_to_stratify(tmp_path, tiny_bert):
    write_csv(tmp_path / "d" / "train.csv", labelled_rows(20, ["a"] * 19 + ["b"]))
    with pytest.raises(FTLError) as err:
        make_dm(tiny_bert, data_dir=str(tmp_path / "d")).raw  # noqa: B018
    assert "stratified" in one_line(err)


def test_max_length_above_model_limit(tiny_data_dir, tiny_bert):
    dm = make_dm(tiny_bert, data_dir=str(tiny_data_dir), max_length=4096)
    with pytest.raises(FTLError) as err:
        dm.prepare_data()
    assert "above the model's limit of 512" in one_line(err)


def test_other_layouts_sharded_subfolders_tsv_and_save_to_disk(tmp_path, tiny_bert):
    import datasets

    rows = labelled_rows(40, ["yes", "no"])
    # sharded files in the Hub's data/ layout
    write_csv(tmp_path / "hub" / "data" / "train-00000-of-00002.csv", rows[:20])
    write_csv(tmp_path / "hub" / "data" / "train-00001-of-00002.csv", rows[20:])
    write_csv(tmp_path / "hub" / "data" / "validation-00000-of-00001.csv", rows[:10])
    dm = make_dm(tiny_bert, data_dir=str(tmp_path / "hub"))
    assert len(dm.raw["train"]) + len(dm.raw["test"]) == 40 and len(dm.raw["val"]) == 10
    # split sub-folders and tab-separated files
    for split, part in (("train", rows), ("test", rows[:8])):
        folder = tmp_path / "tsv" / split
        folder.mkdir(parents=True)
        (folder / "part.tsv").write_text("text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in part))
    dm = make_dm(tiny_bert, data_dir=str(tmp_path / "tsv"))
    assert dm.label_names == ["no", "yes"] and len(dm.raw["test"]) == 8
    # a folder written by DatasetDict.save_to_disk
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "disk"))
    dm = make_dm(tiny_bert, data_dir=str(tmp_path / "disk"))
    assert sum(len(ds) for ds in dm.raw.values()) == 40


def test_float_labels_from_a_csv_with_gaps_are_ints(tmp_path, tiny_bert):
    rows = [{"text": f"row {i}", "label": float(i % 2), "extra": "" if i % 3 else "x"} for i in range(30)]
    write_csv(tmp_path / "d" / "train.csv", rows)
    dm = make_dm(tiny_bert, data_dir=str(tmp_path / "d"))
    assert dm.label_names == ["0", "1"]


def test_batch_order_follows_seed_everything_and_the_splits_follow_data_seed(tmp_path, tiny_bert, monkeypatch):
    """Runs that differ only in `seed_everything` must not train on the same batch order (a model without
    dropout would repeat itself exactly), and must still be tested on the same rows."""
    import lightning as L

    rows = labelled_rows(40, ["a", "b"])
    write_csv(tmp_path / "d" / "train.csv", rows)  # no val/test file: both carved from train with data.seed
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # restored after the test

    def order_and_test_rows(seed: int) -> tuple[list[int], list[str]]:
        L.seed_everything(seed, verbose=False)
        dm = make_dm(tiny_bert, data_dir=str(tmp_path / "d"), batch_size=4, group_by_length=False)
        dm.setup("fit")
        order = [int(i) for batch in dm.train_dataloader() for i in batch["row_idx"]]
        return order, sorted(dm.raw["test"]["text"])

    first, test_rows = order_and_test_rows(1)
    assert order_and_test_rows(1) == (first, test_rows)  # same seed: same order
    other, other_test_rows = order_and_test_rows(2)
    assert other != first and sorted(other) == sorted(first)  # another seed: the same rows, another order
    assert other_test_rows == test_rows  # and the same test split
