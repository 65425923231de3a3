"""The one contract between tasks and reports: what a task hands over after `test` and `predict`.

A task (any subclass of `ftl.models.base.TaskModule`) fills these; every report reads only these (and the
metrics the task logged): `metrics.json`, `test_predictions.csv` / `generations.jsonl`, `confusion_matrix.csv`,
`summary.md`, plots, W&B tables, `compare` and `predict`. Nothing else of a task or a data module is looked up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class Record:
    """One row's output.

    Args:
        index: the row's position in its split (the data's order); set by the base module from the batch's
            `row_idx`, so tasks never restore order themselves.
        inputs: the row's input columns (e.g. `{"text": ...}`), filled from the data module.
        reference: the true answer: a label name, a reference text, a target value (None in `predict`).
        prediction: the model's answer, in the same form as `reference`.
        scores: named numbers behind the prediction, e.g. `{"prob_cancer": 0.93, "prob_other": 0.07}`.
        metrics: this row's value of each test metric that is a (weighted) mean over rows, named as the metric
            is logged after `test/`: e.g. `{"loss": 0.21}` (its cross-entropy), `{"rouge1": 0.4}`. Confidence
            intervals and paired tests resample these; a row without a value for a metric leaves it out.
            Written beside the scores in the records file.
        weights: the weight of a row in such a mean where it is not 1, e.g. `{"loss": 37}` answer tokens for a
            token-weighted loss (written as `<metric>_weight`).
    """

    index: int = -1
    inputs: dict[str, Any] = field(default_factory=dict)
    reference: Any = None
    prediction: Any = None
    scores: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class ConfusionMatrix:
    """Counts with named rows and columns: label x label for single-label tasks (rows: true label, columns:
    predicted label), or label x (true negative, false positive, false negative, true positive) for multi-label."""

    rows: list[str]
    columns: list[str]
    counts: list[list[int]]

    @property
    def square(self) -> bool:
        """True for a label x label matrix (true vs predicted), the kind a confusion-matrix plot shows."""
        return self.rows == self.columns


@dataclass
class TaskOutputs:
    """Everything reports need from one test (or predict) pass of a task.

    Args:
        records: one `Record` per row, in the data's order.
        label_names: the task's labels (None for tasks without labels, e.g. causal LM or regression).
        reference_name: column name of `Record.reference` in written files (e.g. "label", "reference").
        prediction_name: column name of `Record.prediction` (e.g. "predicted_label", "generated").
        records_format: "csv" or "jsonl": the format of test_predictions / generations / predictions files.
        records_file: file name of the test records in the run directory (e.g. "test_predictions.csv").
        confusion_matrix: optional counts for `confusion_matrix.csv` and the plot.
        positive_label: for binary tasks, the label whose probability (`prob_<label>`) a precision-recall
            curve is drawn for.
        lower_is_better: names (after `test/`) of the task's metrics for which lower is better, for the verdicts
            of `compare`; loss, perplexity, ECE, Brier, MSE, MAE and RMSE are known already.
    """

    records: list[Record]
    label_names: list[str] | None = None
    reference_name: str = "reference"
    prediction_name: str = "prediction"
    records_format: Literal["csv", "jsonl"] = "csv"
    records_file: str = "test_predictions.csv"
    confusion_matrix: ConfusionMatrix | None = None
    positive_label: str | None = None
    lower_is_better: list[str] = field(default_factory=list)

    def numeric_pairs(self) -> tuple[list[float], list[float]] | None:
        """(references, predictions) as floats when the task has no labels and every record's reference and
        prediction is a finite number (a regression task: Pearson, Spearman, R² and the scatter plot come from
        these); None otherwise."""
        import math

        def real(value: Any) -> bool:
            try:
                return not isinstance(value, (bool, str)) and value is not None and math.isfinite(float(value))
            except (TypeError, ValueError):
                return False

        if self.label_names or not self.records:
            return None
        if not all(real(r.reference) and real(r.prediction) for r in self.records):
            return None
        return [float(r.reference) for r in self.records], [float(r.prediction) for r in self.records]

    def rows(self) -> list[dict[str, Any]]:
        """Records as flat rows for CSV/JSONL/W&B: inputs, reference (if any row has one), prediction, scores,
        per-row metrics and their weights (`<metric>_weight`)."""
        with_reference = any(r.reference is not None for r in self.records)
        out = []
        for record in self.records:
            row = dict(record.inputs)
            if with_reference:
                row[self.reference_name] = record.reference
            row[self.prediction_name] = record.prediction
            row.update(record.scores)
            row.update(record.metrics)
            row.update({f"{key}_weight": value for key, value in record.weights.items()})
            out.append(row)
        return out
