"""Text classification data: labels (ints or strings) -> ids in a stable order, and per-dataset defaults.

The per-dataset classes below hold defaults only (source, label names); all logic is in
`TextClassificationDataModule` and its base `TextDataModule`.
"""

from __future__ import annotations

import hashlib
from array import array
from typing import Any, Literal

from ftl.data.text import TextDataModule, check_text_column, column, column_error
from ftl.errors import FTLError

# How a pair longer than max_length is cut (the tokenizer's `truncation` strategies for two texts):
# tokens are removed from the longer of the two first, or only from the first / the second text.
PairTruncation = Literal["longest_first", "only_first", "only_second"]


def encode_texts(tokenizer: Any, texts: list[Any], pairs: list[Any] | None, max_length: int,
                 pair_truncation: PairTruncation = "longest_first") -> dict[str, list]:
    """One text per row, or a pair (`text [SEP] text_pair` with the tokenizer's own pair encoding: special
    tokens, token type ids), truncated to `max_length` tokens; empty cells are empty strings."""
    first = ["" if t is None else str(t) for t in texts]
    if pairs is None:
        return tokenizer(first, truncation=True, max_length=max_length)
    second = ["" if t is None else str(t) for t in pairs]
    try:
        return tokenizer(first, second, truncation=pair_truncation, max_length=max_length)
    except Exception as err:  # the fast tokenizer's own error when the text it may cut is too short to fit
        if "truncat" not in str(err).lower():
            raise
        raise FTLError(f"pair_truncation {pair_truncation} cannot cut some pair to max_length {max_length}: the text "
                       "it may not cut is that long alone; set --data.pair_truncation longest_first or a larger "
                       "--data.max_length") from None


class LabelledTextDataModule(TextDataModule):
    """Rows of one text (`text_column`) or a pair (`text_pair_column`) and a label column: what classification and
    regression data share. Subclasses turn the label column into `labels` in `_prepare_raw`, after
    `check_inputs`."""

    def __init__(
        self,
        *args: Any,
        text_column: str = "text",
        label_column: str = "label",
        text_pair_column: str | None = None,
        pair_truncation: PairTruncation = "longest_first",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            text_column: the column holding the text (the first text of a pair).
            label_column: the column holding the label (classification: an int or a string; regression: a
                number).
            text_pair_column: the column holding the second text of a pair (None: one text per row).
            pair_truncation: how a pair longer than max_length is cut: "longest_first" (tokens from the
                longer text first), "only_first" or "only_second".
        """
        super().__init__(*args, **kwargs)
        self.text_column = text_column
        self.label_column = label_column
        self.text_pair_column = text_pair_column
        self.pair_truncation = pair_truncation

    def text_columns(self) -> list[str]:
        """The text, and the second text of a pair when there is one."""
        return [self.text_column] + ([self.text_pair_column] if self.text_pair_column else [])

    def required_columns(self) -> list[str]:
        return [*self.text_columns(), self.label_column]

    def input_columns(self) -> list[str]:
        return self.text_columns()  # records and predictions show both texts of a pair

    def tokenization_settings(self) -> dict[str, Any]:
        return {"pair_truncation": self.pair_truncation} if self.text_pair_column else {}

    def check_inputs(self, raw: Any) -> None:
        """Every split has the text, pair and label columns, and no text column is empty in all its rows."""
        for split, ds in raw.items():
            for kind, name, option in (
                ("text", self.text_column, "data.text_column"),
                ("text pair", self.text_pair_column, "data.text_pair_column"),
                ("label", self.label_column, "data.label_column"),
            ):
                if name is not None and name not in ds.column_names:
                    raise column_error(kind, name, split, ds.column_names, option)
        for split, ds in raw.items():
            for name, option in zip(self.text_columns(), ("--data.text_column", "--data.text_pair_column"),
                                    strict=False):
                check_text_column(ds, name, split, option)

    def _tokenize_batch(self, batch: dict[str, list]) -> dict[str, list]:
        pairs = batch[self.text_pair_column] if self.text_pair_column else None
        encoded = encode_texts(self.tokenizer, batch[self.text_column], pairs, self.max_length, self.pair_truncation)
        if "labels" in batch:  # prediction inputs have none
            encoded["labels"] = batch["labels"]
        return encoded


class TextClassificationDataModule(LabelledTextDataModule):
    """Single-label text classification from any source `TextDataModule` reads.

    `label_names` fixes the label order when given; otherwise it is taken from a `ClassLabel` feature,
    from a `label_name` column beside integer labels (as in `shared/data`), or from the sorted label values.
    `oversample: true` draws training rows with replacement, each label equally often on average
    (seeded per epoch; the epoch keeps its usual number of rows).
    With `text_pair_column` each row is two texts (question and answer, premise and hypothesis), encoded as
    the tokenizer's pair; length grouping and padding then follow the pair's length.
    """

    def __init__(
        self,
        *args: Any,
        label_names: list[str] | None = None,
        oversample: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            label_names: label names in id order (default: from the data).
            oversample: draw training rows so that each label is drawn equally often.
        """
        super().__init__(*args, **kwargs)
        self._label_names = list(label_names) if label_names else None
        self.oversample = oversample

    # ------------------------------------------------------------------ labels (linked into the model)
    @property
    def label_names(self) -> list[str]:
        self.raw  # noqa: B018 - loading the data is what fixes the label names
        return list(self._label_names)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def label_counts(self, split: str = "train") -> list[int]:
        """Rows per label id in `split` (for class weights and reports)."""
        counts = [0] * self.num_labels
        for label in column(self.raw[split], "labels"):
            counts[label] += 1
        return counts

    @property
    def train_label_counts(self) -> list[int]:
        return self.label_counts("train")

    def train_sample_weights(self) -> list[float] | None:
        """1 / (rows of the row's label): every label is drawn equally often."""
        if not self.oversample:
            return None
        counts = self.label_counts("train")
        return [1.0 / counts[label] for label in column(self.raw["train"], "labels")]

    # ------------------------------------------------------------------ hooks
    def stratify_column(self) -> str | None:
        return "labels"

    def _prepare_raw(self, raw):
        import datasets

        self.check_inputs(raw)
        if self._label_names is None:
            self._label_names = self._infer_label_names(raw)
        names = self._label_names
        if len(names) < 2:
            raise FTLError(f"found only {len(names)} label(s) {names}: classification needs at least 2")
        index = {name: i for i, name in enumerate(names)}
        out = {}
        for split, ds in raw.items():
            feature = ds.features[self.label_column]
            source_names = feature.names if isinstance(feature, datasets.ClassLabel) else None
            values = column(ds, self.label_column)
            ids = [self._label_id(v, index, source_names, split) for v in values]
            keep = [c for c in ds.column_names if c not in ("labels",)]
            # a fingerprint from the ids' bytes: `datasets` would pickle-hash the list (most of a cached run's time)
            digest = hashlib.sha256(array("q", ids).tobytes() + repr(names).encode()).hexdigest()[:16]
            ds = ds.select_columns(keep).add_column("labels", ids, new_fingerprint=f"{ds._fingerprint}-{digest}")
            ds = ds.cast_column("labels", datasets.ClassLabel(names=names))
            out[split] = ds
        return datasets.DatasetDict(out)

    def _label_id(self, value, index: dict[str, int], source_names: list[str] | None, split: str) -> int:
        if value is None:
            raise FTLError(f"a row in the {split} split has no label: drop it or fill column '{self.label_column}'")
        if source_names is not None:  # ClassLabel ints: map through the source's names
            value = source_names[value]
        if isinstance(value, str):
            value = value.strip()  # " Surgery" (as exported by spreadsheets) is the label "Surgery"
            if value in index:
                return index[value]
            if value.lstrip("-").isdigit():
                value = int(value)
            else:
                raise FTLError(
                    f"label '{value}' in the {split} split is not in label_names {list(index)}: "
                    "add it to data.label_names or fix the data"
                )
        if isinstance(value, float) and value.is_integer():  # CSV columns with a gap are read as floats
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise FTLError(f"label {value!r} in the {split} split is neither an int nor a string: fix the data")
        if not 0 <= value < len(index):
            raise FTLError(
                f"label {value} in the {split} split is out of range for {len(index)} label_names {list(index)}: "
                "add names to data.label_names or fix the data"
            )
        return value

    def _infer_label_names(self, raw) -> list[str]:
        import datasets

        train = raw["train"]
        feature = train.features[self.label_column]
        if isinstance(feature, datasets.ClassLabel):
            return list(feature.names)
        values = [v for ds in raw.values() for v in column(ds, self.label_column) if v is not None]
        if all(isinstance(v, str) for v in values):
            return sorted({v.strip() for v in values})
        ints = sorted({int(v) for v in values})
        if "label_name" in train.column_names:  # int labels with a readable name column (shared/data)
            pairs = {}
            for ds in raw.values():
                if "label_name" in ds.column_names:
                    pairs.update(zip(column(ds, self.label_column), column(ds, "label_name"), strict=True))
            if set(pairs) == set(range(len(pairs))):
                return [str(pairs[i]) for i in range(len(pairs))]
        if ints and ints[0] >= 0:
            return [str(i) for i in range(ints[-1] + 1)]
        raise FTLError(f"cannot infer label names from labels {ints[:10]}: set data.label_names")

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        return self.collator(features)


class DepressionDataModule(TextClassificationDataModule):
    """Depression detection in social-media posts (binary)."""

    def __init__(
        self,
        *args: Any,
        dataset: str | None = "mrjunos/depression-reddit-cleaned",
        label_names: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, dataset=dataset, label_names=label_names or ["not_depressed", "depressed"], **kwargs)


class CancerDataModule(TextClassificationDataModule):
    """Cancer vs non-cancer PubMed abstracts (binary). No public hub copy: use `data_dir`."""

    def __init__(self, *args: Any, label_names: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, label_names=label_names or ["non_cancer", "cancer"], **kwargs)


class MedicalAbstractsDataModule(TextClassificationDataModule):
    """Medical abstracts by patient condition (5 classes, Schopf et al. 2022)."""

    def __init__(self, *args: Any, label_names: list[str] | None = None, **kwargs: Any) -> None:
        names = label_names or [
            "neoplasms",
            "digestive_system_diseases",
            "nervous_system_diseases",
            "cardiovascular_diseases",
            "general_pathological_conditions",
        ]
        super().__init__(*args, label_names=names, **kwargs)


class IMDBDataModule(TextClassificationDataModule):
    """IMDB movie-review sentiment (binary), the usual sanity check for a classifier."""

    def __init__(
        self,
        *args: Any,
        dataset: str | None = "stanfordnlp/imdb",
        label_names: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, dataset=dataset, label_names=label_names or ["negative", "positive"], **kwargs)
