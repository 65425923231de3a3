"""Multi-label text classification data: the data half of the extension example in docs/extending.md.

Nothing in ftl's framework knows about this module: the YAML names it by `class_path`, the base class
`TextDataModule` does loading, splitting, tokenization and batching, and this file fills in the three hooks
(`required_columns`, `_tokenize_batch`, `collate`) plus `num_labels`/`label_names`, which the CLI links into the
model. A row's labels are one column: a list, or a string joined by `label_separator` ("cardiovascular|respiratory";
an empty cell means no label).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from ftl.data.text import TextDataModule, check_text_column, column, column_error, write_csv_splits
from ftl.errors import FTLError
from ftl.hub import cache_root


class MultiLabelDataModule(TextDataModule):
    """Rows with zero or more labels each; batches carry `labels` as a float 0/1 matrix (rows x labels)."""

    def __init__(
        self,
        *args: Any,
        text_column: str = "text",
        label_column: str = "labels",
        label_separator: str = "|",
        label_names: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.text_column = text_column
        self.label_column = label_column
        self.label_separator = label_separator
        self._label_names = list(label_names) if label_names else None

    # ------------------------------------------------------------------ linked into the model by the CLI
    @property
    def label_names(self) -> list[str]:
        self.raw  # noqa: B018 - loading the data is what fixes the label names
        return list(self._label_names)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    # ------------------------------------------------------------------ hooks of TextDataModule
    def required_columns(self) -> list[str]:
        return [self.text_column, self.label_column]

    def _split_labels(self, value: Any) -> list[str]:
        if value is None:
            return []
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
        text = str(value).strip()
        if text.startswith("["):  # a JSON list in a CSV cell
            return [str(v) for v in json.loads(text)]
        return [part.strip() for part in text.split(self.label_separator) if part.strip()]

    def _prepare_raw(self, raw):
        import datasets

        for split, ds in raw.items():
            for kind, name, option in (("text", self.text_column, "data.text_column"),
                                       ("label", self.label_column, "data.label_column")):
                if name not in ds.column_names:
                    raise column_error(kind, name, split, ds.column_names, option)
            check_text_column(ds, self.text_column, split, "--data.text_column")
        parsed = {split: [self._split_labels(v) for v in column(ds, self.label_column)] for split, ds in raw.items()}
        if self._label_names is None:
            self._label_names = sorted({label for rows in parsed.values() for labels in rows for label in labels})
        if len(self._label_names) < 2:
            raise FTLError(f"found {len(self._label_names)} label(s) {self._label_names}: multi-label needs at least 2")
        index = {name: i for i, name in enumerate(self._label_names)}
        out = {}
        for split, ds in raw.items():
            matrix = []
            for labels in parsed[split]:
                unknown = [label for label in labels if label not in index]
                if unknown:
                    raise FTLError(f"label '{unknown[0]}' in the {split} split is not in label_names "
                                   f"{self._label_names}: add it to data.label_names or fix the data")
                row = [0.0] * len(index)
                for label in labels:
                    row[index[label]] = 1.0
                matrix.append(row)
            ds = ds.remove_columns([c for c in {self.label_column, "labels"} if c in ds.column_names])
            out[split] = ds.add_column("labels", matrix)
        return datasets.DatasetDict(out)

    def _tokenize_batch(self, batch: dict[str, list]) -> dict[str, list]:
        texts = ["" if t is None else str(t) for t in batch[self.text_column]]
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        if "labels" in batch:  # prediction inputs have none
            encoded["labels"] = batch["labels"]
        return encoded

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(features)
        if "labels" in batch:
            batch["labels"] = batch["labels"].float()
        return batch


def make_multilabel_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` rows `{"text", "labels"}` built from ftl's synthetic notes: about 60% one note (one label), 40% two
    notes of different conditions joined (two labels), in a seeded, deterministic order."""
    from ftl.data.synthetic import LABEL_NAMES, make_examples

    notes = make_examples(2 * n, seed=seed, label_noise=0.0)
    rng = random.Random(seed)
    rows, i = [], 0
    while len(rows) < n and i < len(notes):
        first = notes[i]
        second = notes[i + 1] if i + 1 < len(notes) else None
        if second is not None and second["label"] != first["label"] and rng.random() < 0.4:
            labels = sorted({LABEL_NAMES[first["label"]], LABEL_NAMES[second["label"]]})
            rows.append({"text": f"{first['text']} {second['text']}", "labels": "|".join(labels)})
            i += 2
        else:
            rows.append({"text": first["text"], "labels": LABEL_NAMES[first["label"]]})
            i += 1
    return rows


class SyntheticMultiLabelDataModule(MultiLabelDataModule):
    """The example's default data, written once from a seed to the ftl cache so the example runs offline."""

    def __init__(
        self,
        *args: Any,
        n_train: int = 600,
        n_val: int = 150,
        n_test: int = 150,
        data_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        if not (kwargs.get("data_dir") or kwargs.get("data_files") or kwargs.get("dataset")):
            folder = cache_root() / "synthetic_multilabel" / f"n{n_train}-{n_val}-{n_test}-seed{data_seed}"
            kwargs["data_dir"] = str(write_multilabel_splits(folder, n_train, n_val, n_test, data_seed))
        super().__init__(*args, **kwargs)


def write_multilabel_splits(folder: Path, n_train: int, n_val: int, n_test: int, seed: int = 0) -> Path:
    """train/val/test.csv (columns text,labels) of `make_multilabel_rows`; same arguments, same bytes."""
    rows = make_multilabel_rows(n_train + n_val + n_test, seed)
    if len(rows) < n_train + n_val + n_test:
        raise FTLError("could not generate that many synthetic rows: ask for fewer")
    return write_csv_splits(folder, rows, (n_train, n_val, n_test), ["text", "labels"])
