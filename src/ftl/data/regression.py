"""Text regression data: one number per row (a score, a severity, a similarity), for one text or a text pair.

`TextRegressionDataModule` reads any source `TextDataModule` reads; its label column must hold a number in every
row of every split (a missing or non-numeric target stops the run with one line naming the first bad row). The
training split's mean and standard deviation are linked into the model (`target_stats`), which may standardise
targets with them (`SequenceRegressor(standardize_targets=true)`).

`SyntheticSeverityDataModule` is the regression example's data (configs/regression_example.yaml): short synthetic
clinical notes with a severity score from 0 to 10, written deterministically from a seed (shared/data has no
regression set).
"""

from __future__ import annotations

import hashlib
import math
import random
from array import array
from pathlib import Path
from typing import Any

from ftl.data.classification import LabelledTextDataModule
from ftl.data.text import column, write_csv_splits
from ftl.errors import FTLError
from ftl.hub import cache_root


def parse_target(value: Any) -> float | None:
    """The number in a target cell (ints, floats, numeric strings such as " 3.5"), or None when there is none
    (empty, not a number, NaN or infinite)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        return None
    return float(value)


class TextRegressionDataModule(LabelledTextDataModule):
    """One number per row (`label_column`), predicted from a text (`text_column`) or a pair (`text_pair_column`)."""

    # ------------------------------------------------------------------ linked into the model by the CLI
    @property
    def target_stats(self) -> list[float]:
        """[mean, standard deviation] of the training targets (population std), for target standardisation."""
        targets = column(self.raw["train"], "labels")
        mean = math.fsum(targets) / len(targets)
        std = math.sqrt(math.fsum((t - mean) ** 2 for t in targets) / len(targets))
        return [mean, std]

    # ------------------------------------------------------------------ hooks
    def reference_column(self) -> str | None:
        return "labels"  # records show each target as the data has it (batches carry it as float32)

    def load_options(self, builder: str) -> dict[str, Any]:
        # CSV targets are read as text: a file with one bad cell would otherwise fail to load as a whole (its
        # column is typed apart from the other files'), and the bad row could not be named
        return {"converters": {self.label_column: str}} if builder == "csv" else {}

    def row_problem(self, path: Path) -> str | None:
        # JSON Lines targets cannot be read as text as CSV's are (`load_options`): a column mixing numbers and
        # text fails to load as a whole, so the bad row is found here
        if path.suffix.lower() not in (".jsonl", ".json"):
            return None
        import json

        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    return None  # a malformed line is file_problem's to name
                value = row.get(self.label_column) if isinstance(row, dict) else None
                if parse_target(value) is None:
                    found = "no target" if value is None else f"target {value!r}"
                    return (f"line {number} has {found} in column '{self.label_column}', not a number: fix or "
                            "drop the row")
        return None

    def _prepare_raw(self, raw):
        import datasets

        self.check_inputs(raw)
        out = {}
        for split, ds in raw.items():
            targets = self._targets(ds, split)
            digest = hashlib.sha256(array("d", targets).tobytes()).hexdigest()[:16]
            keep = [c for c in ds.column_names if c != "labels"]
            ds = ds.select_columns(keep).add_column("labels", targets, new_fingerprint=f"{ds._fingerprint}-{digest}")
            out[split] = ds.cast_column("labels", datasets.Value("float64"))
        return datasets.DatasetDict(out)

    def _targets(self, ds: Any, split: str) -> list[float]:
        """Every row's target as a float; the first row without one is named in one error line."""
        values = column(ds, self.label_column)
        targets = [parse_target(v) for v in values]
        bad = [i for i, t in enumerate(targets) if t is None]
        if bad:
            i = bad[0]
            more = f" ({len(bad) - 1} more rows too)" if len(bad) > 1 else ""
            text = str(column(ds.select([i]), self.text_column)[0])[:40]
            found = "no target" if values[i] is None else f"target {values[i]!r}"
            raise FTLError(f"row {i + 1} of the {split} split ('{text}') has {found} in column "
                           f"'{self.label_column}', not a number{more}: fix or drop the row")
        return targets

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(features)
        if "labels" in batch:
            batch["labels"] = batch["labels"].float()
        return batch


# ---------------------------------------------------------------------------------------------- example data
_FINDINGS = [  # (phrase, severity points)
    ("mild headache", 1.0), ("runny nose", 0.5), ("sore throat", 1.0), ("itchy skin", 0.5),
    ("mild back pain", 1.0), ("occasional heartburn", 1.0), ("low-grade fever", 1.5), ("dry cough", 1.0),
    ("dizziness on standing", 2.0), ("vomiting", 2.5), ("high fever", 3.0),
    ("shortness of breath on exertion", 3.0), ("blood in the stool", 4.0), ("chest pain at rest", 5.0),
    ("shortness of breath at rest", 5.5), ("confusion and slurred speech", 6.0), ("seizures", 6.0),
    ("fainting", 4.5), ("severe abdominal pain", 4.0), ("coughing up blood", 5.0),
]
_MODIFIERS = [("", 1.0), ("worsening ", 1.3), ("improving ", 0.7), ("sudden ", 1.2)]
_OPENERS = ["Patient reports", "Presents with", "Caller describes", "Seen today for", "Complains of"]
_DURATIONS = ["for two days", "since yesterday", "for a week", "for three hours", "for a month"]
_CONTEXT = ["", " Vitals stable.", " History of hypertension.", " Lives alone.", " Takes no medication.",
            " Heart rate 118.", " Oxygen saturation 91%."]
_CONTEXT_POINTS = {" Heart rate 118.": 1.0, " Oxygen saturation 91%.": 1.5}


def make_severity_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` rows `{"text", "severity"}`: a note with one to three findings; severity = the findings' points
    (scaled by worsening/improving), plus points for abnormal vitals, plus Gaussian noise (sd 0.5), clipped to
    [0, 10] and rounded to 0.1. Deterministic for a seed."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        findings = rng.sample(_FINDINGS, rng.choice([1, 1, 2, 2, 3]))
        parts, score = [], 0.0
        for phrase, points in findings:
            modifier, factor = rng.choice(_MODIFIERS)
            parts.append(modifier + phrase)
            score += points * factor
        context = rng.choice(_CONTEXT)
        score += _CONTEXT_POINTS.get(context, 0.0) + rng.gauss(0.0, 0.5)
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        text = f"{rng.choice(_OPENERS)} {listed} {rng.choice(_DURATIONS)}.{context}"
        rows.append({"text": text, "severity": round(min(10.0, max(0.0, score)), 1)})
    return rows


def write_severity_splits(folder: Path, n_train: int, n_val: int, n_test: int, seed: int = 0) -> Path:
    """train/val/test.csv (columns text,severity) of `make_severity_rows`; same arguments, same bytes."""
    rows = make_severity_rows(n_train + n_val + n_test, seed)
    return write_csv_splits(folder, rows, (n_train, n_val, n_test), ["text", "severity"])


class SyntheticSeverityDataModule(TextRegressionDataModule):
    """The regression example's default data: synthetic notes with a 0-10 severity score (`make_severity_rows`),
    written once from a seed to the ftl cache, so the example runs offline. With `data_dir`, `data_files` or
    `dataset` it reads that instead, like `TextRegressionDataModule`."""

    def __init__(
        self,
        *args: Any,
        n_train: int = 800,
        n_val: int = 200,
        n_test: int = 200,
        data_seed: int = 0,
        label_column: str = "severity",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            n_train: training rows to generate.
            n_val: validation rows to generate.
            n_test: test rows to generate.
            data_seed: seed of the generated rows.
            label_column: the column holding the target number.
        """
        if not (kwargs.get("data_dir") or kwargs.get("data_files") or kwargs.get("dataset")):
            folder = cache_root() / "synthetic_severity" / f"n{n_train}-{n_val}-{n_test}-seed{data_seed}"
            kwargs["data_dir"] = str(write_severity_splits(folder, n_train, n_val, n_test, data_seed))
        super().__init__(*args, label_column=label_column, **kwargs)
