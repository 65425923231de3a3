"""From the task contract to the per-row columns statistics need (`ftl.reports.stats.Rows`), and back from a run.

A test pass leaves `test_rows.json` in its directory beside the human-readable records (`test_predictions.csv`
/ `generations.jsonl`): one identity per row (a hash of its inputs and reference, so two runs are paired only on
the same rows), the label names, true and predicted label ids, probabilities, and per-row metric values. It is
what `ftl compare --runs` pairs runs by; it holds nothing the records file does not, in a form read without
guessing column names.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ftl.errors import FTLError
from ftl.models.outputs import TaskOutputs
from ftl.reports.stats import Rows

ROWS_FILE = "test_rows.json"
_VERSION = 1


def row_key(inputs: dict[str, Any], reference: Any) -> str:
    """A short, stable identity of a row: its inputs and reference (order of keys ignored)."""
    text = json.dumps([inputs, reference], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _label_ids(values: list[Any], names: list[str]) -> np.ndarray | None:
    index = {name: i for i, name in enumerate(names)}
    ids = [index.get(str(v)) if v is not None else None for v in values]
    return None if any(i is None for i in ids) else np.asarray(ids, dtype=np.int64)


def rows_from_outputs(outputs: TaskOutputs) -> Rows:
    """`Rows` of a test pass: label ids when every reference and prediction is one of the labels (single-label
    tasks), probabilities when every row has `prob_<label>` for each label, and every per-row metric."""
    records = outputs.records
    names = [str(n) for n in outputs.label_names] if outputs.label_names else None
    rows = Rows(keys=[row_key(r.inputs, r.reference) for r in records], label_names=None,
                lower_is_better=list(outputs.lower_is_better))
    # single-label: a square confusion matrix (or none) and every reference and prediction a label name; a
    # multi-label task whose rows happen to hold one label each is not mistaken for one
    single = outputs.confusion_matrix is None or outputs.confusion_matrix.square
    if names and records and single:
        y = _label_ids([r.reference for r in records], names)
        p = _label_ids([r.prediction for r in records], names)
        if y is not None and p is not None:
            rows.label_names, rows.y, rows.p = names, y, p
            columns = [f"prob_{n}" for n in names]
            if all(all(c in r.scores for c in columns) for r in records):
                rows.probs = np.asarray([[float(r.scores[c]) for c in columns] for r in records], dtype=float)
    if names and records and not single:
        sets = label_sets(records, names)
        if sets is not None:  # a multi-label task: per-label and macro/micro precision, recall, F1
            rows.label_names, rows.label_sets = names, sets
    numbers = outputs.numeric_pairs()
    if numbers is not None:  # a regression task: Pearson, Spearman, R² from the rows
        rows.targets, rows.predictions = (np.asarray(values, dtype=float) for values in numbers)
    metric_names = list(dict.fromkeys(key for r in records for key in r.metrics))
    for name in metric_names:
        rows.values[name] = np.asarray([_number(r.metrics.get(name)) for r in records], dtype=float)
        if any(name in r.weights for r in records):
            rows.weights[name] = np.asarray([_number(r.weights.get(name, 1.0)) for r in records], dtype=float)
    return rows


def label_sets(records: list, names: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(true, predicted) 0/1 matrices of a multi-label task whose references and predictions are label sets written
    `a|b` (the multi-label classifier's records; "" for none); None when a row holds anything else."""
    index = {name: i for i, name in enumerate(names)}

    def matrix(values: list[Any]) -> np.ndarray | None:
        out = np.zeros((len(values), len(names)), dtype=np.int8)
        for row, value in enumerate(values):
            if not isinstance(value, str):
                return None
            for name in filter(None, value.split("|")):
                if name not in index:
                    return None
                out[row, index[name]] = 1
        return out

    true, pred = matrix([r.reference for r in records]), matrix([r.prediction for r in records])
    return None if true is None or pred is None else (true, pred)


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def rows_to_json(rows: Rows) -> dict[str, Any]:
    def clean(values: np.ndarray) -> list[float | None]:
        return [None if math.isnan(v) else float(v) for v in values.tolist()]

    return {
        "version": _VERSION,
        "keys": rows.keys,
        "label_names": rows.label_names,
        "y": rows.y.tolist() if rows.y is not None else None,
        "p": rows.p.tolist() if rows.p is not None else None,
        "probs": rows.probs.tolist() if rows.probs is not None else None,
        "values": {name: clean(v) for name, v in rows.values.items()},
        "weights": {name: clean(v) for name, v in rows.weights.items()},
        "lower_is_better": rows.lower_is_better,
        "label_sets": [m.tolist() for m in rows.label_sets] if rows.label_sets is not None else None,
        "targets": rows.targets.tolist() if rows.targets is not None else None,
        "predictions": rows.predictions.tolist() if rows.predictions is not None else None,
    }


def rows_from_json(data: dict[str, Any]) -> Rows:
    def array(values: Any, dtype: Any = float) -> np.ndarray | None:
        if values is None:
            return None
        return np.asarray([math.nan if v is None else v for v in values] if dtype is float else values, dtype=dtype)

    return Rows(keys=list(data["keys"]), label_names=data.get("label_names"),
                y=array(data.get("y"), np.int64), p=array(data.get("p"), np.int64), probs=array(data.get("probs")),
                values={k: array(v) for k, v in (data.get("values") or {}).items()},
                weights={k: array(v) for k, v in (data.get("weights") or {}).items()},
                lower_is_better=list(data.get("lower_is_better") or []),
                label_sets=tuple(np.asarray(m, dtype=np.int8) for m in data["label_sets"])
                if data.get("label_sets") is not None else None,
                targets=array(data.get("targets")), predictions=array(data.get("predictions")))


def rows_file_text(rows: Rows) -> str:
    """The contents of `test_rows.json` (written by `ftl.reports.callbacks.RunOutputs`)."""
    return json.dumps(rows_to_json(rows)) + "\n"


def read_run_rows(run_dir: str | Path) -> Rows:
    """The per-row test records of a run directory (written by every `ftl test` / test after fit)."""
    path = Path(run_dir).expanduser() / ROWS_FILE
    if not Path(run_dir).expanduser().is_dir():
        raise FTLError(f"run directory '{run_dir}' not found: pass folders under runs/<config>/")
    if not path.is_file():
        raise FTLError(f"'{run_dir}' has no {ROWS_FILE} (per-row test records): test that run first "
                       f"(ftl test --config <its config.yaml> --ckpt_path <its checkpoint>)")
    try:
        return rows_from_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as err:
        raise FTLError(f"'{path}' is not a readable {ROWS_FILE} ({type(err).__name__}): test that run again") from None
