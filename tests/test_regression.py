"""Regression (issue 16): SequenceRegressor and TextRegressionDataModule by class name, metrics that equal numpy's on
the saved predictions, target standardisation through checkpoint and export, intervals and paired compare for
Pearson/Spearman/R², the scatter plot, the regression example config, and one line for a bad target."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT

METRICS = ("mse", "mae", "pearson", "spearman", "r2")


def _write(folder: Path, split: str, rows: list[list], header: list[str]) -> None:
    with open(folder / f"{split}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture(scope="module")
def score_pairs_dir(tmp_path_factory, tiny_data_dir) -> Path:
    """The tiny notes as pairs (note, its first five words) with a score around 100 (class x 10 + noise): far
    from 0 and 1, so standardisation matters."""
    folder = tmp_path_factory.mktemp("data") / "scores"
    folder.mkdir()
    rng = random.Random(0)
    for split in ("train", "val", "test"):
        with open(tiny_data_dir / f"{split}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        _write(folder, split, [[r["text"], " ".join(r["text"].split()[:5]), round(80 + 10 * int(r["label"])
                                                                                  + rng.gauss(0, 3), 2)]
                               for r in rows], ["note", "summary", "score"])
    return folder


@pytest.fixture(scope="module")
def varied_bert(tmp_path_factory, tiny_bert) -> Path:
    """tiny_bert with attention dominating the residual stream and a sharper pooler (as `spread_predictions`
    does): a random BERT otherwise maps every text to nearly the same vector, and a regressor on it predicts one
    number for all rows."""
    import shutil

    import torch
    from transformers import BertModel

    folder = tmp_path_factory.mktemp("models") / "varied-bert"
    shutil.copytree(tiny_bert, folder)
    model = BertModel.from_pretrained(tiny_bert)
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.attention.output.dense.weight.mul_(50)
        model.pooler.dense.weight.mul_(20)
    model.save_pretrained(folder)
    return folder


def regression_args(data: Path, model: Path, run_dir: Path, *extra: str) -> list[str]:
    """`--model SequenceRegressor --data TextRegressionDataModule`: by class name, no YAML."""
    return ["--model", "SequenceRegressor", "--data", "TextRegressionDataModule",
            "--model.pretrained", str(model), "--data.data_dir", str(data), "--data.text_column", "note",
            "--data.text_pair_column", "summary", "--data.label_column", "score", "--data.max_length", "48",
            "--data.batch_size", "8", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
            "--run_dir", str(run_dir), *extra]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, score_pairs_dir, varied_bert) -> Path:
    from tests.helpers import run_cli

    run_dir = tmp_path_factory.mktemp("regression") / "fit"
    run_cli("fit", *regression_args(score_pairs_dir, varied_bert, run_dir, "--model.standardize_targets", "true",
                                    "--model.learning_rate", "1e-3", "--trainer.max_epochs", "3"))
    return run_dir


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def ranks(values: np.ndarray) -> np.ndarray:
    """Mean ranks from 1 (ties share theirs), with numpy alone."""
    order = np.argsort(values, kind="stable")
    ranked = np.empty(len(values))
    ranked[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranked[tied] = ranked[tied].mean()
    return ranked


def numpy_metrics(t: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {"mse": float(np.mean((p - t) ** 2)), "mae": float(np.mean(np.abs(p - t))),
            "pearson": float(np.corrcoef(t, p)[0, 1]), "spearman": float(np.corrcoef(ranks(t), ranks(p))[0, 1]),
            "r2": float(1 - np.sum((t - p) ** 2) / np.sum((t - t.mean()) ** 2))}


# ---------------------------------------------------------------------------------------------- end to end
def test_regression_metrics_equal_numpys_on_the_saved_predictions(fitted, score_pairs_dir):
    metrics = json.loads((fitted / "metrics.json").read_text())
    rows = read_rows(fitted / "test_predictions.csv")
    test = read_rows(score_pairs_dir / "test.csv")
    # both texts of the pair, the target as the file has it, in the data's order
    assert [(r["note"], r["summary"], float(r["target"])) for r in rows] == \
        [(r["note"], r["summary"], float(r["score"])) for r in test]
    t = np.array([float(r["target"]) for r in rows])
    p = np.array([float(r["predicted"]) for r in rows])
    assert p.std() > 0.1  # predictions differ per row: the correlations mean something
    expected = numpy_metrics(t, p)
    for key, value in expected.items():
        assert metrics[f"test/{key}"] == pytest.approx(value, rel=1e-4, abs=1e-5), key
        # every one gets a 95% bootstrap interval around it
        low, high = metrics[f"test/{key}_ci_low"], metrics[f"test/{key}_ci_high"]
        assert low < value < high, key
    # per-row squared and absolute errors are the rows behind mse and mae
    assert np.mean([float(r["mse"]) for r in rows]) == pytest.approx(expected["mse"], rel=1e-5)
    assert np.mean([float(r["mae"]) for r in rows]) == pytest.approx(expected["mae"], rel=1e-5)
    assert (fitted / "plots" / "regression_scatter.png").stat().st_size > 10_000
    summary = (fitted / "summary.md").read_text()
    assert "Pearson r" in summary and "Spearman rho" in summary


def test_target_standardisation_round_trips_through_checkpoint_and_export(fitted, score_pairs_dir, varied_bert):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from ftl.models.regressor import SequenceRegressor
    from ftl.reports.compare import restore_checkpoint
    from ftl.reports.export import module_from_checkpoint

    train = np.array([float(r["score"]) for r in read_rows(score_pairs_dir / "train.csv")])
    best = next((fitted / "checkpoints").glob("best-*.ckpt"))
    saved = torch.load(best, map_location="cpu", weights_only=True)
    assert saved["ftl_target_stats"] == pytest.approx([train.mean(), train.std()])
    module = module_from_checkpoint(SequenceRegressor, best).eval()
    assert (module.target_mean, module.target_std) == pytest.approx((train.mean(), train.std()))
    # the checkpoint's statistics win over those of the data a config links in now
    other = SequenceRegressor(pretrained=str(varied_bert), standardize_targets=True, target_stats=[0.0, 2.0])
    restore_checkpoint(other, best)
    assert (other.target_mean, other.target_std) == pytest.approx((train.mean(), train.std()))

    rows = read_rows(fitted / "test_predictions.csv")[:6]
    folder = fitted / "hf_model"
    config = json.loads((folder / "config.json").read_text())
    assert config["problem_type"] == "regression"
    assert (config["ftl_target_mean"], config["ftl_target_std"]) == pytest.approx((train.mean(), train.std()))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        for row in rows:  # the exported output is the prediction in the data's units (standardisation folded in)
            encoded = tokenizer(row["note"], row["summary"], truncation=True, return_tensors="pt")
            assert float(model(**encoded).logits[0, 0]) == pytest.approx(float(row["predicted"]), abs=1e-3)
            assert float(module.to_units(module.raw_outputs(dict(encoded)))[0]) == \
                pytest.approx(float(row["predicted"]), abs=1e-3)
    scores = pipeline("text-classification", model=str(folder), device="cpu", truncation=True)(
        [{"text": r["note"], "text_pair": r["summary"]} for r in rows])
    assert [s["score"] for s in scores] == pytest.approx([float(r["predicted"]) for r in rows], abs=1e-3)
    assert float(np.std([s["score"] for s in scores])) > 0.1  # real numbers, not a sigmoid's


def test_predict_writes_both_texts_and_the_number(fitted, score_pairs_dir, varied_bert, tmp_path, cli):
    inputs = tmp_path / "new.csv"
    test = read_rows(score_pairs_dir / "test.csv")[:5]
    _write(tmp_path, "new", [[r["note"], r["summary"]] for r in test], ["note", "summary"])
    best = next((fitted / "checkpoints").glob("best-*.ckpt"))
    cli("predict", *regression_args(score_pairs_dir, varied_bert, tmp_path / "p", "--ckpt_path", str(best),
                                    "--data.predict_file", str(inputs)))
    predicted = read_rows(tmp_path / "p" / "predictions.csv")
    assert list(predicted[0]) == ["note", "summary", "predicted"]
    tested = {(r["note"], r["summary"]): float(r["predicted"]) for r in read_rows(fitted / "test_predictions.csv")}
    for row in predicted:
        assert float(row["predicted"]) == pytest.approx(tested[(row["note"], row["summary"])], abs=1e-3)


@pytest.mark.parametrize("bad, shown", [("abc", "target 'abc'"), ("", "no target"), ("n/a", "no target"),
                                        ("1.5.2", "target '1.5.2'"), ("inf", "target 'inf'")])
def test_a_bad_target_is_one_line_naming_the_row(bad, shown, score_pairs_dir, tiny_bert, tmp_path, cli, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val", "test"):
        rows = read_rows(score_pairs_dir / f"{split}.csv")
        if split == "val":
            rows[2]["score"] = bad  # the third data row of val.csv
        _write(data, split, [[r["note"], r["summary"], r["score"]] for r in rows], ["note", "summary", "score"])
    with pytest.raises(SystemExit) as stop:
        cli("fit", *regression_args(data, tiny_bert, tmp_path / "run"))
    assert stop.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ftl: error:")]
    assert len(err) == 1, err
    assert "row 3 of the val split" in err[0] and f"has {shown} in column 'score', not a number" in err[0]
    assert not (tmp_path / "run").exists()


def test_regression_example_config_fits_and_compares_with_paired_statistics(tmp_path, tiny_bert, cli):
    """configs/regression_example.yaml as it stands (its synthetic severity data, smaller), with the before/after
    table: MSE, MAE, Pearson, Spearman and R² rows with paired intervals, p-values and verdicts."""
    cli("fit", "--config", str(ROOT / "configs" / "regression_example.yaml"), "--model.pretrained", str(tiny_bert),
        "--data.n_train", "48", "--data.n_val", "16", "--data.n_test", "40", "--trainer.max_epochs", "1",
        "--model.learning_rate", "1e-3", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--compare_after_fit", "true", "--ci_resamples", "200", "--run_dir", str(tmp_path / "run"))
    result = json.loads((tmp_path / "run" / "compare.json").read_text())
    rows = {row["metric"]: row for row in result["rows"]}
    for key in METRICS:
        row = rows[f"test/{key}"]
        assert row["change"] == pytest.approx(row["after"] - row["before"])
        assert row["change_ci_low"] <= row["change"] <= row["change_ci_high"], key
        assert row["test"] == "permutation" and 0 < row["p_value"] <= 1 and row["verdict"] is not None
    assert "| MSE |" in (tmp_path / "run" / "compare.md").read_text()
    rows_file = json.loads((tmp_path / "run" / "test_rows.json").read_text())
    assert len(rows_file["targets"]) == len(rows_file["predictions"]) == 40
    from ftl.data.regression import make_severity_rows

    test_rows = make_severity_rows(48 + 16 + 40, seed=0)[64:]  # the example's data: the same seed, the same rows
    assert rows_file["targets"] == [r["severity"] for r in test_rows]


# ---------------------------------------------------------------------------------------------- data
def test_targets_are_parsed_and_the_training_stats_are_numpys(tmp_path):
    from ftl.data.regression import TextRegressionDataModule, make_severity_rows, parse_target

    assert [parse_target(v) for v in (" 3.5", 2, 1.25, "1e2")] == [3.5, 2.0, 1.25, 100.0]
    assert [parse_target(v) for v in (None, "", "x", "inf", float("nan"), True)] == [None] * 6
    rows = make_severity_rows(60, seed=3)
    assert rows == make_severity_rows(60, seed=3) and rows != make_severity_rows(60, seed=4)
    assert all(0.0 <= r["severity"] <= 10.0 for r in rows)
    _write(tmp_path, "train", [[r["text"], f" {r['severity']}"] for r in rows], ["text", "label"])
    data = TextRegressionDataModule(data_dir=str(tmp_path), tokenizer="unused", cache_dir=str(tmp_path / "c"))
    targets = np.array([r["severity"] for r in rows])
    held = data.split_sizes()
    assert held["train"] + held["val"] + held["test"] == 60
    train = np.array(data.raw["train"]["labels"])
    assert data.target_stats == pytest.approx([train.mean(), train.std()])
    assert sorted(np.concatenate([np.array(data.raw[s]["labels"]) for s in ("train", "val", "test")])) == \
        pytest.approx(sorted(targets))


# ---------------------------------------------------------------------------------------------- statistics
def test_spearman_in_each_resample_is_scipys_on_the_resampled_rows():
    from scipy import stats as sps

    from ftl.reports.stats import (
        Rows,
        bootstrap_intervals,
        paired_changes,
        point_values,
        resample_counts,
        spearman_values,
    )

    rng = np.random.default_rng(0)
    t = np.round(rng.normal(size=50), 1)  # ties among targets
    p = t + rng.normal(size=50)
    p[:6] = p[6]  # and among predictions
    counts = resample_counts(50, 20, np.random.default_rng(1))
    values = spearman_values(t, p, counts)
    for row, value in zip(counts, values, strict=True):
        drawn = np.repeat(np.arange(50), row.astype(int))
        assert value == pytest.approx(sps.spearmanr(t[drawn], p[drawn])[0], abs=1e-12)
    rows = Rows(keys=[str(i) for i in range(50)], targets=t, predictions=p)
    point = point_values(rows)
    assert point["spearman"] == pytest.approx(sps.spearmanr(t, p)[0], abs=1e-12)
    assert point["pearson"] == pytest.approx(sps.pearsonr(t, p)[0], abs=1e-12)
    assert point["r2"] == pytest.approx(1 - np.sum((t - p) ** 2) / np.sum((t - t.mean()) ** 2), abs=1e-12)
    intervals = bootstrap_intervals(rows, 300)
    for key in ("pearson", "spearman", "r2"):
        assert intervals[key][0] < point[key] < intervals[key][1]
    same = paired_changes(rows, rows, 200)
    assert same["spearman"].change == 0 and same["spearman"].p_value == 1.0
    better = Rows(keys=rows.keys, targets=t, predictions=t + 0.1 * rng.normal(size=50))
    change = paired_changes(rows, better, 200)["spearman"]
    assert change.change > 0 and change.low > 0 and change.p_value < 0.01


def test_compare_runs_pairs_regression_runs_by_their_saved_rows(fitted):
    """`compare --runs` reads test_rows.json (targets and predictions kept): a run against itself changes nothing."""
    from ftl.reports.compare_runs import compare_runs

    rows_file = json.loads((fitted / "test_rows.json").read_text())
    predicted = [float(r["predicted"]) for r in read_rows(fitted / "test_predictions.csv")]
    assert rows_file["predictions"] == pytest.approx(predicted)
    result = compare_runs([fitted, fitted], resamples=100)
    rows = {row["metric"]: row for row in result["rows"]}
    for key in METRICS:
        row = rows[f"test/{key}"]
        assert (row["change"], row["change_ci_low"], row["change_ci_high"]) == (0, 0, 0), key
        assert row["p_value"] == 1.0 and row["verdict"] == "no_difference", key


def test_a_bad_target_in_json_lines_is_one_line_naming_the_line(score_pairs_dir, tiny_bert, tmp_path, cli, capsys):
    """A JSONL target column mixing numbers and text cannot be loaded at all (Arrow types the column from the
    numbers): the error names the line instead of the loader's message."""
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val", "test"):
        rows = read_rows(score_pairs_dir / f"{split}.csv")
        lines = [{"note": r["note"], "summary": r["summary"], "score": float(r["score"])} for r in rows]
        if split == "train":
            lines[4]["score"] = "abc"
        (data / f"{split}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(SystemExit) as stop:
        cli("fit", *regression_args(data, tiny_bert, tmp_path / "run"))
    assert stop.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ftl: error:")]
    assert err == [f"ftl: error: data file '{data / 'train.jsonl'}': line 5 has target 'abc' in column 'score', "
                   "not a number: fix or drop the row"]
    assert not (tmp_path / "run").exists()
