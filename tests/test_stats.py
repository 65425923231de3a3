"""ftl.reports.stats on synthetic rows: interval coverage, McNemar by hand, identical and very different models,
Holm, ECE against torchmetrics, Brier, temperature scaling, and agreement with torchmetrics' point values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ftl.models.calibration import fit_temperature
from ftl.reports.stats import (
    Rows,
    across_runs,
    bootstrap_intervals,
    holm,
    mcnemar_p,
    paired_changes,
    point_values,
    verdict,
)


def label_rows(y: np.ndarray, p: np.ndarray, probs: np.ndarray | None = None, names=("neg", "pos"), **values) -> Rows:
    return Rows(keys=[str(i) for i in range(len(y))], label_names=list(names), y=np.asarray(y), p=np.asarray(p),
                probs=probs, values={k: np.asarray(v, dtype=float) for k, v in values.items()})


def rows_with_accuracy(rng: np.random.Generator, n: int, accuracy: float, k: int = 2) -> Rows:
    y = rng.integers(0, k, n)
    right = rng.random(n) < accuracy
    p = np.where(right, y, (y + 1 + rng.integers(0, k - 1, n)) % k)
    return label_rows(y, p, names=[str(i) for i in range(k)])


def test_95_percent_interval_covers_the_true_accuracy_93_to_97_percent_of_the_time():
    truth, covered = 0.8, 0
    rng = np.random.default_rng(2024)
    for sim in range(400):
        low, high = bootstrap_intervals(rows_with_accuracy(rng, 300, truth), 1000, seed=sim)["accuracy"]
        covered += low <= truth <= high
    assert 0.93 <= covered / 400 <= 0.97, covered / 400


def test_point_values_match_torchmetrics():
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision, MulticlassRecall

    rng = np.random.default_rng(0)
    rows = rows_with_accuracy(rng, 150, 0.6, k=4)
    rows.p[rows.p == 3] = 2  # label 3 never predicted: its precision is 0, and macro averages still count it
    values = point_values(rows)
    y, p = torch.tensor(rows.y), torch.tensor(rows.p)
    assert values["accuracy"] == pytest.approx(float(MulticlassAccuracy(4, average="micro")(p, y)))
    for kind, cls in (("precision", MulticlassPrecision), ("recall", MulticlassRecall), ("f1", MulticlassF1Score)):
        assert values[f"{kind}_macro"] == pytest.approx(float(cls(4, average="macro")(p, y)), abs=1e-6)
        per = cls(4, average=None)(p, y).tolist()
        for c in range(4):
            assert values[f"{kind}/{c}"] == pytest.approx(per[c], abs=1e-6)
    # a label neither present nor predicted is left out of macro averages, as torchmetrics does
    only = label_rows(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), names=["a", "b", "c"])
    expected = float(MulticlassF1Score(3, average="macro")(torch.tensor(only.p), torch.tensor(only.y)))
    assert point_values(only)["f1_macro"] == pytest.approx(expected, abs=1e-6)


def test_intervals_bracket_the_value_and_narrow_with_more_rows():
    rng = np.random.default_rng(1)
    widths = []
    for n in (100, 1600):
        rows = rows_with_accuracy(rng, n, 0.85)
        rows.values["loss"] = rng.exponential(0.3, n)
        ci, values = bootstrap_intervals(rows, 1000), point_values(rows)
        for key in ("accuracy", "f1_macro", "precision/1", "loss", "perplexity"):
            assert ci[key][0] <= values[key] <= ci[key][1], key
        assert ci["perplexity"] == pytest.approx((math.exp(ci["loss"][0]), math.exp(ci["loss"][1])))
        widths.append(ci["accuracy"][1] - ci["accuracy"][0])
    assert widths[1] < widths[0] / 3  # about 1/sqrt(16) = 1/4
    # seeded: the same rows and seed give the same interval
    assert bootstrap_intervals(rows, 500, seed=3) == bootstrap_intervals(rows, 500, seed=3)


def test_weighted_means_and_rows_without_a_value():
    # a token-weighted loss: rows weigh by their tokens; a row without ROUGE (NaN) is left out of ROUGE only
    rows = Rows(keys=["a", "b", "c"],
                values={"loss": np.array([1.0, 2.0, 4.0]), "rouge1": np.array([0.5, np.nan, 0.1])},
                weights={"loss": np.array([1.0, 3.0, 0.0])})
    values = point_values(rows)
    assert values["loss"] == pytest.approx((1 + 6) / 4)
    assert values["rouge1"] == pytest.approx(0.3)
    assert values["perplexity"] == pytest.approx(math.exp(7 / 4))


def test_mcnemar_p_is_the_exact_binomial_of_a_hand_made_table():
    # 2x2 table: both right 80, only A right 3, only B right 12, both wrong 5
    a = np.array([1] * 80 + [1] * 3 + [0] * 12 + [0] * 5)
    b = np.array([1] * 80 + [0] * 3 + [1] * 12 + [0] * 5)
    exact = 2 * sum(math.comb(15, k) for k in range(4)) / 2 ** 15  # two-sided, 3 of 15 discordant rows
    assert exact == pytest.approx(0.03515625)
    assert mcnemar_p(a, b) == pytest.approx(exact, rel=1e-12)
    y = np.ones(100, dtype=int)
    changes = paired_changes(label_rows(y, a), label_rows(y, b), resamples=200)
    assert changes["accuracy"].test == "mcnemar"
    assert changes["accuracy"].p_value == pytest.approx(exact, rel=1e-12)
    assert changes["accuracy"].change == pytest.approx(0.09)
    assert mcnemar_p(a, a) == 1.0


def test_identical_predictions_give_zero_change_p_one_no_difference():
    rng = np.random.default_rng(5)
    rows = rows_with_accuracy(rng, 120, 0.7, k=3)
    rows.probs = rng.dirichlet(np.ones(3), 120)
    rows.values["loss"] = rng.exponential(0.5, 120)
    changes = paired_changes(rows, rows, resamples=500)
    assert {"accuracy", "f1_macro", "recall/1", "loss", "ece", "brier", "perplexity"} <= set(changes)
    for key, change in changes.items():
        assert (change.change, change.low, change.high, change.p_value) == (0.0, 0.0, 0.0, 1.0), key
        assert verdict(change.change, change.p_value, key) == "no_difference"


def test_a_large_real_improvement_is_significant_in_the_right_direction():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 400)
    weak = np.where(rng.random(400) < 0.55, y, 1 - y)
    strong = np.where(rng.random(400) < 0.92, y, 1 - y)
    loss_weak, loss_strong = rng.exponential(0.7, 400), rng.exponential(0.2, 400)
    changes = paired_changes(label_rows(y, weak, loss=loss_weak), label_rows(y, strong, loss=loss_strong), 1000)
    assert changes["accuracy"].p_value < 0.001
    assert changes["accuracy"].low > 0.2 and changes["accuracy"].change > 0.3
    # no permutation of 9,999 reaches the observed loss change: p is its floor, 1 / (9,999 + 1)
    assert changes["loss"].test == "permutation" and changes["loss"].p_value == pytest.approx(1 / 10000)
    assert changes["loss"].high < 0
    assert verdict(changes["accuracy"].change, changes["accuracy"].p_value, "test/accuracy") == "better"
    assert verdict(changes["loss"].change, changes["loss"].p_value, "test/loss") == "better"  # lower is better
    reverse = paired_changes(label_rows(y, strong), label_rows(y, weak), 200)
    assert verdict(reverse["accuracy"].change, reverse["accuracy"].p_value, "test/accuracy") == "worse"


def test_holm_adjustment():
    assert holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06], abs=1e-12)
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == []


def test_ece_equals_torchmetrics_on_fixed_inputs():
    from torchmetrics.classification import MulticlassCalibrationError

    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(3) * 0.5, 300)
    probs[:5] = [1.0, 0.0, 0.0]  # a confidence of exactly 1 (its own bin in torchmetrics)
    probs[5:10] = [2 / 15, 13 / 30, 13 / 30]  # on a bin edge
    y = rng.integers(0, 3, 300)
    rows = label_rows(y, probs.argmax(1), probs.astype(np.float32), names=["a", "b", "c"])
    expected = float(MulticlassCalibrationError(3, n_bins=15, norm="l1")(torch.tensor(probs, dtype=torch.float32),
                                                                          torch.tensor(y)))
    assert point_values(rows)["ece"] == pytest.approx(expected, abs=1e-6)
    low, high = bootstrap_intervals(rows, 500)["ece"]
    assert low <= expected <= high


def test_brier_binary_and_multiclass():
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    y = np.array([0, 0, 1])
    rows = label_rows(y, probs.argmax(1), probs)
    assert point_values(rows)["brier"] == pytest.approx(np.mean([0.1 ** 2, 0.7 ** 2, 0.6 ** 2]))  # (p_pos - y)^2
    probs3 = np.array([[0.5, 0.3, 0.2]])
    rows3 = label_rows(np.array([1]), np.array([0]), probs3, names=["a", "b", "c"])
    assert point_values(rows3)["brier"] == pytest.approx(0.25 + 0.49 + 0.04)


def test_temperature_scaling_lowers_nll_of_an_overconfident_model_and_keeps_accuracy():
    import torch.nn.functional as F

    rng = np.random.default_rng(8)
    n, k = 400, 4
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0  # right about 60% of the time...
    overconfident = 8.0 * logits  # ...but nearly certain every time
    t = fit_temperature(overconfident, y)
    z, target = torch.tensor(overconfident), torch.tensor(y)
    before, after = F.cross_entropy(z, target).item(), F.cross_entropy(z / t, target).item()
    assert t > 3.0 and after < 0.5 * before
    assert np.array_equal((z / t).argmax(1).numpy(), overconfident.argmax(1))
    # the optimum: NLL at T is not beaten by nearby temperatures
    for other in (0.9 * t, 1.1 * t):
        assert F.cross_entropy(z / other, target).item() >= after - 1e-9


def test_mean_std_and_t_interval_across_runs():
    from scipy import stats as sps

    values = [0.94, 0.955, 0.95]
    out = across_runs(values)
    half = sps.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3)
    assert out["mean"] == pytest.approx(np.mean(values)) and out["std"] == pytest.approx(np.std(values, ddof=1))
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((np.mean(values) - half, np.mean(values) + half))
    assert across_runs([0.9])["std"] is None


def test_unpaired_rows_are_refused_in_one_line():
    from ftl.errors import FTLError

    rng = np.random.default_rng(9)
    a, b = rows_with_accuracy(rng, 50, 0.8), rows_with_accuracy(rng, 40, 0.8)
    with pytest.raises(FTLError, match="50 test rows .* 40"):
        paired_changes(a, b)
    c = rows_with_accuracy(rng, 50, 0.8)
    c.keys = [f"other{i}" if i < 7 else key for i, key in enumerate(a.keys)]
    with pytest.raises(FTLError, match="differ in 7 of 50 test rows"):
        paired_changes(a, c)


def test_rows_from_the_task_contract_and_back_from_json():
    from ftl.models.outputs import ConfusionMatrix, Record, TaskOutputs
    from ftl.reports.records import rows_from_json, rows_from_outputs, rows_to_json

    records = [Record(index=i, inputs={"text": f"t{i}"}, reference=ref, prediction=pred,
                      scores={"prob_a": pa, "prob_b": 1 - pa}, metrics={"loss": loss})
               for i, (ref, pred, pa, loss) in enumerate([("a", "a", 0.9, 0.1), ("b", "a", 0.6, 0.9),
                                                           ("b", "b", 0.2, 0.2)])]
    square = ConfusionMatrix(rows=["a", "b"], columns=["a", "b"], counts=[[1, 0], [1, 1]])
    rows = rows_from_outputs(TaskOutputs(records=records, label_names=["a", "b"], confusion_matrix=square))
    assert rows.y.tolist() == [0, 1, 1] and rows.p.tolist() == [0, 0, 1]
    assert rows.probs[:, 0].tolist() == [0.9, 0.6, 0.2] and rows.values["loss"].tolist() == [0.1, 0.9, 0.2]
    assert point_values(rows)["accuracy"] == pytest.approx(2 / 3)
    assert len(set(rows.keys)) == 3  # one identity per row: its inputs and reference
    again = rows_from_json(rows_to_json(rows))
    assert again.keys == rows.keys and point_values(again) == pytest.approx(point_values(rows))
    # a multi-label task (per-label confusion matrix) whose rows hold one label each: no single-label metrics
    per_label = ConfusionMatrix(rows=["a", "b"], columns=["tn", "fp", "fn", "tp"], counts=[[1, 0, 0, 2], [2, 0, 1, 0]])
    multi = rows_from_outputs(TaskOutputs(records=records, label_names=["a", "b"], confusion_matrix=per_label))
    assert multi.y is None and multi.label_sets[0].tolist() == [[1, 0], [0, 1], [0, 1]]
    # ...but multi-label metrics: label b was predicted for 1 of its 2 rows
    assert point_values(multi)["recall/b"] == pytest.approx(0.5) and "loss" in point_values(multi)
    # a row without a value (an answer not generated) is left out of that metric only
    partial = [Record(index=0, reference="x", prediction="y", metrics={"loss": 1.0, "rouge1": 0.5}),
               Record(index=1, reference="z", prediction=None, metrics={"loss": 3.0}, weights={"loss": 3.0})]
    values = point_values(rows_from_outputs(TaskOutputs(records=partial)))
    assert values["rouge1"] == pytest.approx(0.5) and values["loss"] == pytest.approx((1 + 9) / 4)


def test_verdicts_know_which_way_is_better():
    assert verdict(-0.1, 0.01, "test/loss") == verdict(-0.1, 0.01, "test/mse") == "better"
    assert verdict(0.1, 0.01, "test/f1/cancer") == "better" and verdict(0.1, 0.01, "test/ece") == "worse"
    assert verdict(0.1, 0.01, "test/wer") == "better"  # unknown: higher is better...
    assert verdict(0.1, 0.01, "test/wer", lower_is_better=["wer"]) == "worse"  # ...unless the task says so
    assert verdict(0.1, 0.05, "test/accuracy") == "no_difference" and verdict(0.1, None, "test/runtime") is None


def test_verdicts_never_contradict_their_interval_and_ece_is_tested_by_the_bootstrap():
    assert verdict(0.1, 0.001, "test/f1_macro", interval=(-0.01, 0.2)) == "no_difference"
    assert verdict(0.1, 0.001, "test/f1_macro", interval=(0.01, 0.2)) == "better"
    # identical predictions, B a little more confident on every row: the rows' outputs are not exchangeable (a
    # permutation test would reject), but whether B's ECE is worse is a question of the test sample
    rng = np.random.default_rng(11)
    n = 200
    y = rng.integers(0, 2, n)
    p = np.where(rng.random(n) < 0.8, y, 1 - y)
    conf_a = rng.uniform(0.55, 0.95, n)
    probs_a = np.stack([np.where(p == 0, conf_a, 1 - conf_a), np.where(p == 1, conf_a, 1 - conf_a)], 1)
    conf_b = np.minimum(conf_a + 0.02, 0.999)
    probs_b = np.stack([np.where(p == 0, conf_b, 1 - conf_b), np.where(p == 1, conf_b, 1 - conf_b)], 1)
    changes = paired_changes(label_rows(y, p, probs_a), label_rows(y, p, probs_b), 1000)
    ece = changes["ece"]
    assert ece.test == "bootstrap" and 0 < ece.p_value <= 1
    assert (ece.p_value < 0.05) == (not ece.low <= 0 <= ece.high)  # the p-value agrees with the interval


def test_multilabel_metrics_match_torchmetrics_and_get_intervals():
    from torchmetrics.classification import MultilabelF1Score, MultilabelPrecision, MultilabelRecall

    from ftl.models.outputs import ConfusionMatrix, Record, TaskOutputs
    from ftl.reports.records import rows_from_outputs

    rng = np.random.default_rng(12)
    names = ["a", "b", "c", "d"]
    true = (rng.random((120, 4)) < [0.5, 0.3, 0.1, 0.0]).astype(int)  # label d never true...
    pred = np.where(rng.random((120, 4)) < 0.8, true, 1 - true)
    pred[:, 3] = 0  # ...nor predicted: it counts 0 in macro averages, as in torchmetrics

    def as_set(flags) -> str:
        return "|".join(n for n, on in zip(names, flags, strict=True) if on)

    records = [Record(index=i, inputs={"text": str(i)}, reference=as_set(t), prediction=as_set(p))
               for i, (t, p) in enumerate(zip(true, pred, strict=True))]
    matrix = ConfusionMatrix(rows=names, columns=["tn", "fp", "fn", "tp"], counts=[[0, 0, 0, 0]] * 4)
    rows = rows_from_outputs(TaskOutputs(records=records, label_names=names, confusion_matrix=matrix))
    values, ci = point_values(rows), bootstrap_intervals(rows, 500)
    t, p = torch.tensor(true), torch.tensor(pred)
    for kind, cls in (("precision", MultilabelPrecision), ("recall", MultilabelRecall), ("f1", MultilabelF1Score)):
        assert values[f"{kind}_macro"] == pytest.approx(float(cls(4, average="macro")(p, t)), abs=1e-6)
        for c, name in enumerate(names):
            assert values[f"{kind}/{name}"] == pytest.approx(float(cls(4, average=None)(p, t)[c]), abs=1e-6)
    assert values["f1_micro"] == pytest.approx(float(MultilabelF1Score(4, average="micro")(p, t)), abs=1e-6)
    assert ci["f1_macro"][0] <= values["f1_macro"] <= ci["f1_macro"][1]
