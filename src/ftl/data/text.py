"""The one generic text data path: load -> validate -> split -> tokenize (cached) -> dynamically padded loaders.

Task data modules (classification, QA) subclass `TextDataModule` and fill in three hooks: which columns
must exist (`required_columns`), how rows become model inputs (`_tokenize_batch`), and how to batch them
(`collate`). Everything about *where* data comes from and *how* it is split and cached lives here once.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from ftl.errors import FTLError
from ftl.hub import cache_root

SPLITS = ("train", "val", "test")
# Names other datasets use for our three splits.
_SPLIT_ALIASES = {
    "train": ("train", "training"),
    "val": ("val", "validation", "valid", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}
_EXTENSIONS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def _builder_for(paths: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """The `datasets` builder (and its options) that reads these files."""
    suffixes = {Path(p).suffix.lower() for p in paths}
    builders = {_EXTENSIONS.get(s) for s in suffixes}
    if None in builders or len(builders) != 1:
        raise FTLError(
            f"cannot read data files with suffixes {sorted(suffixes)}: use .csv, .tsv, .jsonl/.json or .parquet files"
        )
    options = {"delimiter": "\t"} if suffixes == {".tsv"} else {}
    return builders.pop(), options


def arrow_column(ds: Any, name: str) -> Any:
    """A column of a `datasets.Dataset` as the Arrow array it is (its rows in order after a select or a split)."""
    table = ds.data if ds._indices is None else ds.flatten_indices().data
    return table.column(name)


def column(ds: Any, name: str) -> list:
    """A column as a Python list, straight from Arrow (`ds[name]` iterates row by row in `datasets` >= 4)."""
    return arrow_column(ds, name).to_pylist()


def _has_rows(path: Path) -> bool:
    """Cheap emptiness check before `datasets` turns an empty file into an obscure error."""
    if path.suffix.lower() == ".parquet":
        return path.stat().st_size > 0
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = (line for line in f if line.strip())
        first = next(lines, None)
        if path.suffix.lower() in (".csv", ".tsv"):  # the first line is the header
            return next(lines, None) is not None
        return first is not None


def empty_rows(ds: Any, name: str) -> int:
    """Rows whose `name` is missing or only whitespace, counted in Arrow: a Python list of every text held the
    whole column in memory (about 0.9 GB at 1M rows in benchmarks/data_scale.py)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = arrow_column(ds, name)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = pc.cast(values, pa.string())
    trimmed = pc.utf8_trim_whitespace(values)
    empty = pc.fill_null(pc.equal(pc.utf8_length(trimmed), 0), True)
    return int(pc.sum(empty).as_py() or 0)


def check_text_column(ds: Any, name: str, split: str, option: str) -> None:
    """A text column empty in every row of a split is an error (nothing to learn or test from); a few empty rows
    stay in (dropping test rows would change the metrics' denominator) with a warning that counts them."""
    import sys

    empty = empty_rows(ds, name)
    if empty and empty == len(ds):
        raise FTLError(f"column '{name}' is empty in every row of the {split} split: set {option} to the column "
                       f"that holds the text (columns: {', '.join(ds.column_names)})")
    if empty:
        print(f"ftl: warning: {empty} of {len(ds)} rows in the {split} split have an empty '{name}'", file=sys.stderr)


def file_problem(path: Path) -> str | None:
    """Where a CSV/TSV/JSONL file is malformed ("line 11: ..."), or None: for a one-line error that names the
    place and the fix, instead of the parser's message wrapped by `datasets`."""
    import csv
    import json

    suffix = path.suffix.lower()
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        if suffix in (".jsonl", ".json"):
            for number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        json.loads(line)
                    except ValueError as err:
                        return f"line {number} is not one JSON object ({err.msg}): write one object per line"
            return None
        if suffix not in (".csv", ".tsv"):
            return None
        reader = csv.reader(f, delimiter="\t" if suffix == ".tsv" else ",", strict=True)
        width, start = None, 1
        try:
            for row in reader:
                if width is None:
                    width = len(row)
                elif row and len(row) != width:
                    return (f"line {start} has {len(row)} fields, the header has {width}: quote fields that hold "
                            "the delimiter, or fix the row")
                start = reader.line_num + 1
        except csv.Error as err:
            if "end of data" in str(err) or "EOF" in str(err):
                return (f"line {start}: a quoted field opened there is never closed: close the quote (a quote "
                        "inside a field is written twice, \"\")")
            return f"line {reader.line_num}: {err}: fix the row"
    return None


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A cheap, content-based id of a tokenizer: its full JSON spec for fast tokenizers."""
    from datasets.fingerprint import Hasher

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # slow tokenizer: let datasets hash it (slower, still correct)
        return Hasher.hash(tokenizer)
    # Calling the tokenizer sets truncation/padding state on it; that is not part of what it produces here.
    backend.no_truncation()
    backend.no_padding()
    text = backend.to_str() + repr(sorted(tokenizer.special_tokens_map.items()))
    return hashlib.sha256((text + tokenizer.truncation_side).encode()).hexdigest()


def _split_of(path: Path) -> str | None:
    """`train.csv`, `validation.jsonl`, `train-00000-of-00002.parquet`, `dev_clean.tsv` -> the split name."""
    stem = path.stem.lower()
    for split, aliases in _SPLIT_ALIASES.items():
        if any(stem == a or re.match(rf"{a}[-_.]", stem) for a in aliases):
            return split
    return None


def write_csv_splits(folder: Path, rows: list[dict[str, Any]], sizes: tuple[int, int, int],
                     fieldnames: list[str]) -> Path:
    """Generated rows as train/val/test.csv (the first `sizes[0]` rows are train, and so on), each written via a
    temporary file and a rename, so a data module that finds the file finds it whole."""
    import csv

    n_train, n_val, n_test = sizes
    folder.mkdir(parents=True, exist_ok=True)
    parts = {"train": rows[:n_train], "val": rows[n_train:n_train + n_val],
             "test": rows[n_train + n_val:n_train + n_val + n_test]}
    for split, part in parts.items():
        tmp = folder / f".{split}.csv.tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames, lineterminator="\n")
            writer.writeheader()
            writer.writerows(part)
        tmp.replace(folder / f"{split}.csv")
    return folder


def find_split_files(data_dir: str | os.PathLike) -> dict[str, list[str]]:
    """Map split name -> its files in `data_dir`: `train.csv`, `validation.jsonl`, sharded
    `train-00000-of-00002.parquet`, files inside `train/` sub-folders, and the Hub's `data/` layout."""
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise FTLError(
            f"data_dir '{data_dir}' does not exist or is not a folder: pass a folder with train/val/test files"
        )
    files: dict[str, list[str]] = {}
    for base in (folder, folder / "data"):
        if not base.is_dir() or files:
            continue
        for path in sorted(base.iterdir()):
            if path.is_file() and path.suffix.lower() in _EXTENSIONS and (split := _split_of(path)):
                files.setdefault(split, []).append(str(path))
            elif path.is_dir() and (split := _split_of(Path(path.name + ".x"))):
                inner = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in _EXTENSIONS)
                files.setdefault(split, []).extend(inner)
    if "train" not in files:
        present = sorted(p.name for p in folder.iterdir())
        raise FTLError(
            f"data_dir '{data_dir}' has no train file (found {present}): add train.csv, train.jsonl or train.parquet"
        )
    return files


class TextDataModule(L.LightningDataModule):
    """Generic base: where text comes from, how it is split, tokenized once, and batched.

    Sources, in order of precedence: `data_files` (split -> path, or one path), `data_dir` (a folder with
    train/val/test files), `dataset` (anything `datasets.load_dataset` takes: a hub id or a builder name).
    Missing val/test splits are carved from train with a seeded split (stratified where the subclass says).
    """

    def __init__(
        self,
        dataset: str | None = None,
        dataset_config: str | None = None,
        data_dir: str | None = None,
        data_files: dict[str, str | list[str]] | str | None = None,
        tokenizer: str | None = None,
        max_length: int = 256,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        max_samples: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 42,
        cache_dir: str | None = None,
        trust_remote_code: bool = False,
        predict_file: str | None = None,
        group_by_length: bool = True,
        group_batches: int = 64,
        sort_eval_by_length: bool = True,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.dataset_config = dataset_config
        self.data_dir = data_dir
        self.data_files = data_files
        self.tokenizer_name = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.max_samples = max_samples
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else cache_root() / "datasets"
        self.trust_remote_code = trust_remote_code
        self.predict_file = predict_file
        self.group_by_length = group_by_length
        self.group_batches = group_batches
        self.sort_eval_by_length = sort_eval_by_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self._raw = None
        self._predict_raw = None
        self._tokenizer = None
        self._cache_keys: dict[str, str] = {}
        self._tokenized: dict[str, Any] = {}  # per split; its cache key is fixed once computed (_cache_keys)
        self._tokenizer_key: str | None = None
        self._resume_train_at: tuple[int, int] | None = None  # (epoch, batches done), from a mid-epoch checkpoint
        self.datasets: dict[str, Any] = {}
        if not (dataset or data_dir or data_files):
            raise FTLError("no data source: set data.dataset (hub id), data.data_dir (folder) or data.data_files")
        for name in ("batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise FTLError(f"data.{name} must be a positive integer, got {getattr(self, name)}")

    # ---------------------------------------------------------------- linked into the model by the CLI
    @property
    def num_labels(self) -> int | None:
        """Classes in the data (None for tasks without labels, e.g. causal LM)."""
        return None

    @property
    def label_names(self) -> list[str] | None:
        return None

    @property
    def train_label_counts(self) -> list[int] | None:
        """Training rows per label (linked into the model for `class_weights: balanced`); None without labels."""
        return None

    def train_sample_weights(self) -> list[float] | None:
        """One sampling weight per training row (oversampling), or None for a plain shuffle."""
        return None

    @property
    def padding_multiple(self) -> int | None:
        """Batches are padded to a multiple of this: `pad_to_multiple_of`, or by default 8 where CUDA is
        available (tensor-core shapes) and no rounding otherwise: on a CPU it only adds work (4% more time in
        training, 2% in evaluation on depression_reddit, `benchmarks/pad_multiple_ab.py`)."""
        if self.pad_to_multiple_of is not None:
            return self.pad_to_multiple_of if self.pad_to_multiple_of > 1 else None
        import torch

        return 8 if torch.cuda.is_available() else None

    @property
    def collator(self):
        """Dynamic padding per batch (to `padding_multiple`), never to max_length; built once."""
        if getattr(self, "_collator", None) is None:
            from transformers import DataCollatorWithPadding

            self._collator = DataCollatorWithPadding(self.tokenizer, pad_to_multiple_of=self.padding_multiple,
                                                     return_tensors="pt")
        return self._collator

    # ---------------------------------------------------------------- hooks for subclasses
    def required_columns(self) -> list[str]:
        """Columns every split must have."""
        return []

    def input_columns(self) -> list[str]:
        """Columns a prediction needs (the model's inputs, no labels); they are also copied into records and
        predictions, and are part of the tokenization cache key."""
        return self.required_columns()[:1]

    def reference_column(self) -> str | None:
        """Raw column holding the reference answer a task's records show when the task gives none (e.g. the
        full answer text in QA); None when the task takes its references from the batch."""
        return None

    def stratify_column(self) -> str | None:
        """Column to stratify generated splits by (None: plain seeded split)."""
        return None

    def group_column(self) -> str | None:
        """Column whose equal values must stay in one split (e.g. the question in QA)."""
        return None

    def load_options(self, builder: str) -> dict[str, Any]:
        """Extra `datasets.load_dataset` options for local files read by `builder` ("csv", "json", "parquet"),
        e.g. a column read as text so that `_prepare_raw` can name a bad cell; none by default."""
        return {}

    def row_problem(self, path: Path) -> str | None:
        """A row of a well-formed file that this data module cannot load ("line 7: ..."), or None; asked only when
        loading failed, to name the row instead of the loader's message (e.g. a JSONL target column mixing
        numbers and text, which Arrow refuses for the whole file). None by default."""
        return None

    def _prepare_raw(self, raw: Any) -> Any:
        """Validate and normalise the raw DatasetDict (labels to ids, etc.) before splitting."""
        return raw

    def _tokenize_batch(self, batch: dict[str, list]) -> dict[str, list]:
        raise NotImplementedError

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    # ---------------------------------------------------------------- loading
    @property
    def tokenizer(self):
        """The tokenizer of `model.pretrained` (linked by the CLI), loaded once."""
        if self._tokenizer is None:
            if not self.tokenizer_name:
                raise FTLError("data.tokenizer is not set: set model.pretrained (the CLI links it) or data.tokenizer")
            from ftl.hub import load_tokenizer, model_max_length

            self._tokenizer = load_tokenizer(self.tokenizer_name, trust_remote_code=self.trust_remote_code)
            limit = model_max_length(self.tokenizer_name)
            if limit is not None and self.max_length > limit:
                raise FTLError(
                    f"data.max_length={self.max_length} is above the model's limit of {limit} positions: "
                    f"set --data.max_length {limit} or less"
                )
        return self._tokenizer

    @property
    def raw(self):
        """Raw splits after validation and splitting; loaded on first use (the CLI needs labels early)."""
        if self._raw is None:
            raw = self._load_source()
            raw = self._prepare_raw(raw)
            raw = self._make_missing_splits(raw)
            raw = self._limit_samples(raw)
            for split, ds in raw.items():
                if len(ds) == 0:
                    raise FTLError(f"the {split} split is empty: check the data source or max_samples")
            self._raw = raw
        return self._raw

    def _load_source(self):
        import datasets

        datasets.utils.logging.disable_progress_bar()
        cache = str(self._writable(self.cache_dir / "raw"))
        if self.data_dir and not self.data_files and (Path(self.data_dir).expanduser() / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(Path(self.data_dir).expanduser()))  # a `save_to_disk` folder
        elif self.data_files or self.data_dir:
            files = self.data_files if self.data_files else find_split_files(self.data_dir)
            if isinstance(files, str):
                files = {"train": files}
            files = {split: [paths] if isinstance(paths, str) else list(paths) for split, paths in files.items()}
            for split, paths in files.items():
                for path in paths:
                    if not Path(path).expanduser().is_file():
                        raise FTLError(f"data file for split '{split}' not found: '{path}': check the path")
                if not any(_has_rows(Path(p).expanduser()) for p in paths):
                    raise FTLError(f"the {split} split is empty ({', '.join(paths)} has no rows): add rows or drop it")
            builder, options = _builder_for([p for paths in files.values() for p in paths])
            data_files = {k: [str(Path(p).expanduser()) for p in v] for k, v in files.items()}
            try:
                loaded = datasets.load_dataset(builder, data_files=data_files, cache_dir=cache,
                                               **{**options, **self.load_options(builder)})
            except Exception as err:  # pyarrow/pandas parse errors come wrapped and long: find the place
                for path in (Path(p).expanduser() for paths in files.values() for p in paths):
                    if (problem := file_problem(path)) is not None:
                        raise FTLError(f"data file '{path}' is malformed: {problem}") from None
                    if (problem := self.row_problem(path)) is not None:
                        raise FTLError(f"data file '{path}': {problem}") from None
                root = err
                while root.__cause__ is not None or root.__context__ is not None:
                    root = root.__cause__ or root.__context__
                first = (str(root).strip().splitlines() or [type(root).__name__])[0][:300]
                raise FTLError(f"could not read data files {list(files.values())} ({first}): check that each is a "
                               "valid CSV/TSV/JSONL/Parquet file") from err
        else:
            # `datasets` >= 4 runs no loading scripts, so there is no remote code to trust here.
            try:
                loaded = datasets.load_dataset(self.dataset, self.dataset_config, cache_dir=cache)
            except Exception as err:
                raise FTLError(self._hub_error(err)) from err
        if not isinstance(loaded, datasets.DatasetDict):
            loaded = datasets.DatasetDict({"train": loaded})
        return self._normalise_split_names(loaded)

    @staticmethod
    def _writable(folder: Path) -> Path:
        """The data cache folder, made if need be; one line naming it when it cannot be written (instead of a
        traceback from deep inside `datasets`)."""
        import tempfile

        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            raise FTLError(f"cannot write the data cache '{folder}' ({err.strerror or type(err).__name__}): set "
                           "--data.cache_dir (or FTL_CACHE) to a writable folder") from None
        return folder

    def _hub_error(self, err: Exception) -> str:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return (
            f"could not load dataset '{self.dataset}' ({first[:200]}); offline? "
            "pass --data.data_dir with train/val/test csv/jsonl/parquet files instead"
        )

    @staticmethod
    def _normalise_split_names(loaded):
        import datasets

        out = {}
        for split, aliases in _SPLIT_ALIASES.items():
            for name in loaded:
                if name.lower() in aliases:
                    out[split] = loaded[name]
                    break
        if "train" not in out:
            raise FTLError(f"the data has no train split (splits: {list(loaded)}): name one split 'train'")
        return datasets.DatasetDict(out)

    def _make_missing_splits(self, raw):
        """Carve val/test out of train where the source lacks them: seeded, stratified or grouped."""
        import datasets

        missing = [s for s in ("val", "test") if s not in raw]
        if not missing:
            return raw
        fractions = {"val": self.val_fraction, "test": self.test_fraction}
        train = raw["train"]
        out = dict(raw)
        for split in missing:
            # fraction of the *remaining* train rows that gives `fractions[split]` of the original
            taken = sum(fractions[s] for s in missing if s != split and s in out and s not in raw)
            size = fractions[split] / max(1e-9, 1.0 - taken)
            train, held = self._split_off(train, size, split)
            out[split] = held
        out["train"] = train
        return datasets.DatasetDict({s: out[s] for s in SPLITS if s in out})

    def _split_off(self, ds, size: float, split: str):
        group = self.group_column()
        if group:
            return self._split_by_group(ds, size, group)
        strat = self.stratify_column()
        try:
            parts = ds.train_test_split(test_size=size, seed=self.seed, stratify_by_column=strat)
        except ValueError as err:
            raise FTLError(
                f"cannot make a stratified {split} split of {len(ds)} rows ({err}); "
                "give every class at least 2 rows per split, provide val/test files, or change data.*_fraction"
            ) from err
        return parts["train"], parts["test"]

    def _split_by_group(self, ds, size: float, group: str):
        import random

        keys = sorted({" ".join(str(v).lower().split()) for v in column(ds, group)})
        random.Random(self.seed).shuffle(keys)
        held_keys = set(keys[: max(1, round(size * len(keys)))])
        normalised = [" ".join(str(v).lower().split()) for v in column(ds, group)]
        held = [i for i, k in enumerate(normalised) if k in held_keys]
        kept = [i for i, k in enumerate(normalised) if k not in held_keys]
        return ds.select(kept), ds.select(held)

    def _limit_samples(self, raw):
        if not self.max_samples:
            return raw
        import datasets

        out = {}
        for split, ds in raw.items():
            if len(ds) > self.max_samples:
                ds = ds.shuffle(seed=self.seed).select(range(self.max_samples)).flatten_indices()
            out[split] = ds
        return datasets.DatasetDict(out)

    # ---------------------------------------------------------------- tokenization
    def _cache_key(self, split: str) -> str:
        """Data fingerprint + tokenizer + max_length + this class's settings: what the tokenized split depends on.

        Passed to `map` as the new fingerprint, so `datasets` does not pickle-hash the transform (and with it
        this whole data module), which cost tens of seconds per run.
        """
        if split not in self._cache_keys:
            from datasets.fingerprint import Hasher

            if self._tokenizer_key is None:
                self._tokenizer_key = tokenizer_fingerprint(self.tokenizer)
            parts = [self._split_data(split)._fingerprint, self._tokenizer_key, self.max_length,
                     type(self).__qualname__, self.required_columns(), self.input_columns(),
                     self.tokenization_settings()]
            self._cache_keys[split] = Hasher.hash(parts)
        return self._cache_keys[split]

    def tokenization_settings(self) -> dict[str, Any]:
        """Anything besides tokenizer, max_length and the columns that changes tokenized output (part of the
        cache key; the required and input columns are in it already)."""
        return {}

    @property
    def predict_raw(self):
        """Rows to predict: `predict_file` (csv/jsonl/parquet, or .txt with one input per line), else the test split."""
        if self._predict_raw is None:
            if not self.predict_file:
                if "test" not in self.raw:
                    raise FTLError("nothing to predict: set data.predict_file or provide a test split")
                self._predict_raw = self.raw["test"]
            else:
                self._predict_raw = self._load_predict_file(self.predict_file)
        return self._predict_raw

    def _load_predict_file(self, path_str: str):
        import datasets

        path = Path(path_str).expanduser()
        if not path.is_file():
            raise FTLError(f"predict_file '{path_str}' not found: check the path")
        columns = self.input_columns()
        if path.suffix.lower() == ".txt":
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            ds = datasets.Dataset.from_dict({columns[0]: lines})
        else:
            builder, options = _builder_for([str(path)])
            ds = datasets.load_dataset(builder, data_files=str(path), split="train",
                                       cache_dir=str(self.cache_dir / "raw"), **options)
        for name in columns:
            if name not in ds.column_names:
                raise column_error("input", name, "predict", ds.column_names, "the matching data.*_column")
        if len(ds) == 0:
            raise FTLError(f"predict_file '{path_str}' has no rows: add inputs")
        return ds

    # ---------------------------------------------------------------- rows for the task contract
    def row_inputs(self, split: str) -> list[dict[str, Any]]:
        """Every row's `input_columns()` in `split` ("train", "val", "test" or "predict"), in the data's order.

        Tasks copy them into their records (`ftl.models.outputs.Record.inputs`), so written predictions show
        what each row was."""
        ds = self._split_data(split)
        columns = [c for c in self.input_columns() if c in ds.column_names]
        return ds.select_columns(columns).to_list() if columns else [{} for _ in range(len(ds))]

    def row_references(self, split: str) -> list[Any] | None:
        """Every row's reference answer in `split` (the raw `reference_column()`, never truncated), or None."""
        name = self.reference_column()
        ds = self._split_data(split)
        if name is None or name not in ds.column_names:
            return None
        return column(ds, name)

    def _split_data(self, split: str):
        return self.predict_raw if split == "predict" else self.raw[split]

    def tokenize_split(self, split: str):
        """The tokenized split, read from the on-disk cache when this exact tokenization was done before."""
        ds = self._split_data(split)
        key = self._cache_key(split)
        if split in self._tokenized:  # prepare_data already did it in this process
            return self._tokenized[split]
        folder = self._writable(self.cache_dir / "tokenized")
        tokenized = ds.map(
            self._tokenize_batch,
            batched=True,
            remove_columns=ds.column_names,
            cache_file_name=str(folder / f"{split}-{key}.arrow"),
            load_from_cache_file=True,
            new_fingerprint=key,
            desc=f"tokenizing {split}",
        )
        # Every row carries its position, so tasks put length-sorted evaluation rows back in the data's order
        # (a fingerprint from the key: `datasets` would pickle-hash the whole list).
        tokenized = tokenized.add_column("row_idx", list(range(len(tokenized))), new_fingerprint=f"{key}-row-idx")
        self._tokenized[split] = tokenized
        return tokenized

    def prepare_data(self) -> None:
        """Tokenize every split once on rank 0; later runs and other ranks read the cache."""
        for split in self.raw:
            self.tokenize_split(split)

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            self.datasets["predict"] = self.tokenize_split("predict")
        elif not set(self.raw) <= set(self.datasets):
            self.datasets.update({split: self.tokenize_split(split) for split in self.raw})

    def has_split(self, split: str) -> bool:
        """Whether the data has this split ("predict": a predict_file, or the test split)."""
        if split == "predict":
            return bool(self.predict_file) or "test" in self.raw
        return split in self.raw

    def source_files(self) -> list[Path]:
        """The local files the data is read from (none for a hub dataset), for run records."""
        if self.data_dir and not self.data_files and (Path(self.data_dir).expanduser() / "dataset_dict.json").is_file():
            return sorted(p for p in Path(self.data_dir).expanduser().rglob("*") if p.is_file())
        files = self.data_files or (find_split_files(self.data_dir) if self.data_dir else {})
        if isinstance(files, str):
            files = {"train": files}
        paths = [p for value in files.values() for p in ([value] if isinstance(value, str) else value)]
        if self.predict_file:
            paths.append(self.predict_file)
        return [Path(p).expanduser() for p in paths]

    def split_sizes(self) -> dict[str, int]:
        """Rows per split, for summaries."""
        return {split: len(ds) for split, ds in self.raw.items()}

    # ---------------------------------------------------------------- resume mid-epoch
    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: how far training is into its epoch. A checkpoint taken mid-epoch (ftl
        saves `last.ckpt` after the current step on Ctrl-C) then resumes with the next batch of that epoch's
        seeded order instead of starting the epoch over (Lightning resumes mid-epoch only loaders that keep a
        state, and batches counted in a loader would be off by what its workers have prefetched)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.state.fn != "fit":  # (a validation inside the epoch saves one too)
            return {}
        loop = trainer.fit_loop
        done = int(loop.epoch_loop.batch_progress.current.processed)
        if not 0 < done < trainer.num_training_batches:  # at an epoch's end Lightning starts the next one
            return {}
        return {"train_epoch": int(loop.epoch_progress.current.processed), "train_batches_done": done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "train_batches_done" in state_dict:
            self._resume_train_at = (int(state_dict["train_epoch"]), int(state_dict["train_batches_done"]))

    # ---------------------------------------------------------------- loaders
    def _replicas(self) -> tuple[int, int]:
        """(world size, global rank) of the attached trainer: the samplers shard the data themselves."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return max(1, int(trainer.world_size)), int(trainer.global_rank)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        """Training batches are grouped by length (seeded, see `sampling`), evaluation batches sorted by it:
        with dynamic padding this removes most padding, the main cost of CPU fine-tuning. Under DDP both
        samplers give each process its own shard (evaluation rows exactly once)."""
        import torch

        from ftl.data.sampling import LengthGroupedSampler, SortedSampler, sequence_lengths

        if split not in self.datasets:
            raise FTLError(f"there is no {split} split: provide a {split} file or let ftl split train")
        dataset = self.datasets[split]
        replicas, rank = self._replicas()
        weights = self.train_sample_weights() if shuffle else None
        sampler = None
        if shuffle:
            # one batch per group is plain random batching (group_by_length off), still seeded per epoch
            group = self.group_batches if self.group_by_length else 1
            sampler = LengthGroupedSampler(sequence_lengths(dataset), batch_size, group, self.order_seed(),
                                           weights=weights, num_replicas=replicas, rank=rank)
            if self._resume_train_at is not None:
                sampler.resume_at(*self._resume_train_at)
                self._resume_train_at = None
            shuffle = False
        elif not shuffle and (self.sort_eval_by_length or replicas > 1):
            lengths = sequence_lengths(dataset) if self.sort_eval_by_length else [0] * len(dataset)
            sampler = SortedSampler(lengths, num_replicas=replicas, rank=rank)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            collate_fn=self.batch_of,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # its own generator: starting an epoch's iterator then draws nothing from the global RNG, so
            # dropout sees the same random numbers in a resumed run as in an unbroken one
            generator=torch.Generator().manual_seed(self.order_seed()),
        )

    def order_seed(self) -> int:
        """Seed of the training batch order: the run's seed (`seed_everything`, which Lightning keeps in
        PL_GLOBAL_SEED), as HF Trainer's order follows its `seed`; `data.seed` without one (a data module used
        on its own). Runs that differ only in `seed_everything` then see their rows in different orders (a model
        without dropout, such as SmolLM2 or Llama, otherwise trained identically), while `data.seed` keeps
        choosing the sampled rows and carved splits, so every seed is tested on the same rows."""
        return int(os.environ.get("PL_GLOBAL_SEED", self.seed))

    def batch_of(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """What the loaders yield: `collate` of the features without `row_idx`, which is added back as a tensor
        (subclasses never handle it, and every batch says which rows it holds)."""
        import torch

        rows = None
        if features and "row_idx" in features[0]:
            rows = [int(f["row_idx"]) for f in features]
            features = [{k: v for k, v in f.items() if k != "row_idx"} for f in features]
        batch = self.collate(features)
        if rows is not None:
            batch["row_idx"] = torch.tensor(rows, dtype=torch.long)
        return batch

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.eval_batch_size, shuffle=False)


def column_error(kind: str, name: str, split: str, present: Sequence[str], option: str) -> FTLError:
    return FTLError(
        f"{kind} column '{name}' not in the {split} split (columns: {', '.join(present)}): set {option} to one of them"
    )


