"""Before/after comparison: the table against numpy on the saved predictions, the Change column, seeds, checkpoint vs
exported folder, `fit --compare_after_fit`, and one-line errors."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import cli_args, spread_predictions

ROOT = Path(__file__).resolve().parents[1]
SPEED = ("test/runtime", "test/samples_per_sec", "test/steps_per_sec", "test/tokens_per_sec", "test/tflops",
         "test/tokens_per_step", "test/padding_share")


def classification_metrics_numpy(path: Path, names: list[str]) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """test/* metrics recomputed from test_predictions.csv with numpy (macro averages skip labels that are
    neither present nor predicted, as torchmetrics does); also the true and predicted label ids."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    index = {name: i for i, name in enumerate(names)}
    y = np.array([index[r["label"]] for r in rows])
    p = np.array([index[r["predicted_label"]] for r in rows])
    probs = np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows])
    out = {"test/accuracy": float(np.mean(y == p)), "test/loss": float(-np.mean(np.log(probs[np.arange(len(y)), y])))}
    per: dict[str, list[float]] = {"precision": [], "recall": [], "f1": []}
    used = []
    for c, name in enumerate(names):
        tp, fp, fn = np.sum((p == c) & (y == c)), np.sum((p == c) & (y != c)), np.sum((p != c) & (y == c))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        for kind, value in (("precision", precision), ("recall", recall), ("f1", f1)):
            out[f"test/{kind}/{name}"] = float(value)
            per[kind].append(float(value))
        used.append(tp + fp + fn > 0)
    for kind, values in per.items():
        out[f"test/{kind}_macro"] = float(np.mean(np.array(values)[used]))
    return out, y, p


def markdown_rows(path: Path) -> dict[str, list[str]]:
    """Metric name -> its Before, After and Change numbers (without their intervals), from the table in compare.md."""
    rows = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) in (4, 6) and cells[0] != "Metric":
            rows[cells[0]] = [c.split(" [")[0] for c in cells[1:4]]
    return rows


# ---------------------------------------------------------------------------------------------- in process
@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_data_dir, tiny_bert):
    """compare_models on a fresh classifier (before) vs the same one with a spread-out head (after)."""
    import lightning as L

    from ftl.data.classification import TextClassificationDataModule
    from ftl.models.classifier import SequenceClassifier
    from ftl.reports.compare import compare_models, fresh_model

    data = TextClassificationDataModule(data_dir=str(tiny_data_dir), tokenizer=str(tiny_bert), max_length=64,
                                        batch_size=8)
    L.seed_everything(42, verbose=False)
    base = SequenceClassifier(pretrained=str(tiny_bert), num_labels=data.num_labels, label_names=data.label_names)
    tuned = fresh_model(base, 42)
    spread_predictions(tuned, data)
    run_dir = tmp_path_factory.mktemp("compare") / "run"
    result = compare_models(base, tuned, data, run_dir, before_model="fresh head", after_model="spread head",
                            trainer_kwargs={"accelerator": "cpu"})
    return run_dir, result, data.label_names


def test_table_matches_metrics_recomputed_from_saved_predictions(compared, tiny_data_dir):
    run_dir, result, names = compared
    saved = json.loads((run_dir / "compare.json").read_text())
    assert saved["rows"] == result["rows"] and saved["test_rows"] == 32
    md = markdown_rows(run_dir / "compare.md")
    with open(tiny_data_dir / "test.csv", newline="") as f:
        test_rows = list(csv.DictReader(f))
    for column, side in ((0, "before"), (1, "after")):
        path = run_dir / "compare" / side / "test_predictions.csv"
        expected, y, p = classification_metrics_numpy(path, names)
        # rows are saved in the data's order, with the true labels of test.csv
        with open(path, newline="") as f:
            saved_rows = list(csv.DictReader(f))
        assert [r["text"] for r in saved_rows] == [r["text"] for r in test_rows]
        assert [names[i] for i in y] == [r["label_name"] for r in test_rows]
        if side == "after":
            assert len(set(p.tolist())) >= 3  # a real test: the predictions differ between rows
        by_key = {row["metric"]: row for row in saved["rows"]}
        for key, value in expected.items():
            assert by_key[key][side] == pytest.approx(value, abs=1e-5), (side, key)
        for row in saved["rows"]:
            if row["metric"] in expected:  # the markdown shows the same numbers, rounded to 4 decimals
                assert float(md[row["name"]][column]) == pytest.approx(expected[row["metric"]], abs=6e-5)
    # per-class accuracy rows are the share of each label's rows predicted as it
    after, y, p = classification_metrics_numpy(run_dir / "compare" / "after" / "test_predictions.csv", names)
    for c, name in enumerate(names):
        assert float(md[f"Accuracy on {name}"][1]) == pytest.approx(np.mean(p[y == c] == c), abs=6e-5)


def test_change_column_is_after_minus_before(compared):
    run_dir, result, names = compared
    rows = json.loads((run_dir / "compare.json").read_text())["rows"]
    assert {"Accuracy", "F1 (macro)", "Eval loss", "Eval samples/s", f"F1 ({names[0]})"} <= {r["name"] for r in rows}
    changed = 0
    for row in rows:
        assert row["change"] == pytest.approx(row["after"] - row["before"], abs=1e-12)
        changed += row["change"] != 0
    assert changed >= 3
    for name, (before, after, change) in markdown_rows(run_dir / "compare.md").items():
        decimals = len(change.split(".")[1])
        assert change[0] in "+-"
        # the displayed change is the rounded exact difference: within one unit of the last digit of after - before
        assert float(change) == pytest.approx(float(after) - float(before), abs=1.01 * 10 ** -decimals), name


def test_rows_follow_whatever_metrics_a_module_logs():
    from ftl.reports.compare import comparison_rows

    before = {"test/loss": 3.0, "test/perplexity": 20.09, "test/rouge1": 0.1, "test/rouge2": 0.02, "test/rougeL": 0.09,
              "test/runtime": 4.0, "test/samples_per_sec": 2.0, "test/steps_per_sec": 0.5, "test/custom": 1.0}
    after = {**before, "test/loss": 2.0, "test/perplexity": 7.39, "test/rougeL": 0.3}
    rows = comparison_rows(before, after)
    assert [r["name"] for r in rows] == ["Eval loss", "Perplexity", "ROUGE-1", "ROUGE-2", "ROUGE-L",
                                         "Eval runtime (s)", "Eval samples/s", "Eval steps/s", "custom"]
    assert rows[0]["change"] == pytest.approx(-1.0) and rows[4]["change"] == pytest.approx(0.21)
    missing = comparison_rows({"test/loss": 1.0}, {"test/loss": 0.5, "test/perplexity": 1.65})
    assert missing[1]["before"] is None and missing[1]["change"] is None


# ---------------------------------------------------------------------------------------------- through the CLI
@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_data_dir, tiny_bert):
    from tests.helpers import run_cli

    run_dir = tmp_path_factory.mktemp("cli") / "fit"
    run_cli("fit", *cli_args(tiny_data_dir, tiny_bert, run_dir, "--trainer.max_epochs", "2",
                             "--model.learning_rate", "3e-4", "--compare_after_fit", "true"))
    return run_dir


def _numbers(path: Path) -> dict[str, tuple]:
    rows = json.loads(path.read_text())["rows"]
    return {r["metric"]: (r["before"], r["after"]) for r in rows if r["metric"] not in SPEED}


def test_fit_compare_after_fit_and_standalone_compare_agree(fitted, tiny_data_dir, tiny_bert, tmp_path, cli, capsys):
    after_fit = _numbers(fitted / "compare.json")
    assert (fitted / "compare.md").read_text().startswith("# Before / after fine-tuning")
    assert not (fitted / "plots" / "precision_recall.png").exists()  # 5 labels: no precision-recall curve
    best = next((fitted / "checkpoints").glob("best-*.ckpt"))
    capsys.readouterr()
    cli("compare", *cli_args(tiny_data_dir, tiny_bert, tmp_path / "ckpt"), "--ckpt_path", str(best))
    assert "| Metric | Before | After | Change |" in capsys.readouterr().out  # the table also prints
    standalone = _numbers(tmp_path / "ckpt" / "compare.json")
    assert standalone.keys() == after_fit.keys() and "test/accuracy" in standalone
    for key, (before, after) in after_fit.items():
        # same seed -> the same fresh head as at the start of fine-tuning; same checkpoint -> the same "after"
        assert standalone[key][0] == pytest.approx(before, abs=1e-6), key
        assert standalone[key][1] == pytest.approx(after, abs=1e-6), key
    assert (tmp_path / "ckpt" / "config.yaml").is_file()

    cli("compare", *cli_args(tiny_data_dir, tiny_bert, tmp_path / "hf"), f"--finetuned={fitted / 'hf_model'}")
    from_folder = _numbers(tmp_path / "hf" / "compare.json")
    for key, (_, after) in after_fit.items():
        assert from_folder[key][1] == pytest.approx(after, abs=1e-5), key


def test_compare_errors_are_one_line(fitted, tiny_data_dir, tiny_binary_dir, tiny_bert, tmp_path, cli, capsys):
    cases = [
        ([], "needs the fine-tuned model"),
        (["--ckpt_path", str(tmp_path / "missing.ckpt")], "not found"),
        # a 5-label checkpoint with binary data: the checkpoint does not fit the model the config builds
        (["--data.data_dir", str(tiny_binary_dir), "--ckpt_path", str(fitted / "checkpoints" / "last.ckpt")],
         "does not fit the model"),
    ]
    for i, (extra, message) in enumerate(cases):
        with pytest.raises(SystemExit) as exit_info:
            cli("compare", *cli_args(tiny_data_dir, tiny_bert, tmp_path / f"e{i}"), *extra)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("ftl: error: ") and message in err[-1], err[-1]
        assert not (tmp_path / f"e{i}").exists()  # bad input leaves no run directory behind
    assert not re.search(r"Traceback", capsys.readouterr().err)


# ---------------------------------------------------------------------------------------------- statistics
def test_fit_writes_intervals_calibration_and_a_paired_table(fitted):
    metrics = json.loads((fitted / "metrics.json").read_text())
    keys = ["test/accuracy", "test/f1_macro", "test/loss", "test/ece", "test/brier", "test/precision_macro"]
    for key in keys + [k for k in metrics if k.startswith("test/f1/") and "_ci_" not in k]:
        assert metrics[f"{key}_ci_low"] <= metrics[key] + 1e-9 and metrics[key] <= metrics[f"{key}_ci_high"] + 1e-9
    assert metrics["test/accuracy_ci_high"] > metrics["test/accuracy_ci_low"]  # 32 rows: a wide interval
    assert not any(k.startswith("test/runtime_ci") for k in metrics)
    # the per-row losses in the records average to the logged loss (no class weights)
    with open(fitted / "test_predictions.csv", newline="") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert np.mean(losses) == pytest.approx(metrics["test/loss"], abs=1e-5)
    summary = (fitted / "summary.md").read_text()
    low, high = metrics["test/accuracy_ci_low"], metrics["test/accuracy_ci_high"]
    assert f"| Accuracy | {metrics['test/accuracy']:.4f} [{low:.4f}, {high:.4f}] |" in summary
    assert "| ECE (15 bins) |" in summary and "| Brier score |" in summary
    assert (fitted / "plots" / "reliability.png").stat().st_size > 5000
    # compare after fit: the fit's own test is the "after" side, not tested a second time
    assert not (fitted / "compare" / "after").exists() and (fitted / "compare" / "before" / "test_rows.json").is_file()
    rows = {r["metric"]: r for r in json.loads((fitted / "compare.json").read_text())["rows"]}
    assert rows["test/accuracy"]["test"] == "mcnemar" and rows["test/f1_macro"]["test"] == "permutation"
    for key in ("test/accuracy", "test/loss", "test/ece", "test/brier"):
        row = rows[key]
        assert row["change_ci_low"] <= row["change"] + 1e-9 and row["change"] <= row["change_ci_high"] + 1e-9
        assert 0 < row["p_value"] <= row["p_holm"] <= 1 and row["verdict"] in ("better", "worse", "no_difference")
    for key in SPEED:
        assert rows[key]["p_value"] is None and rows[key]["verdict"] is None
    assert "McNemar" in (fitted / "compare.md").read_text() and "Holm" in (fitted / "compare.md").read_text()


def test_compare_runs_repeats_the_paired_table_from_run_directories(fitted, tmp_path, cli, capsys):
    cli("compare", "--runs", str(fitted / "compare" / "before"), str(fitted), "--out", str(tmp_path / "ab"))
    assert "| Metric | Run | Baseline |" in capsys.readouterr().out
    by_runs = {r["metric"]: r for r in json.loads((tmp_path / "ab" / "compare.json").read_text())["rows"]}
    after_fit = {r["metric"]: r for r in json.loads((fitted / "compare.json").read_text())["rows"]}
    for key, row in after_fit.items():
        if key in SPEED:
            continue
        # the same rows, resamples and seed: the same change, interval, p-values and verdict as compare after fit
        for field in ("change", "change_ci_low", "change_ci_high", "p_value", "verdict"):
            assert by_runs[key][field] == pytest.approx(row[field], abs=1e-9), (key, field)

    # three runs: a second table gives mean, std and the t interval of each metric across them
    before = fitted / "compare" / "before"
    cli("compare", "--runs", str(before), str(fitted), str(fitted), "--out", str(tmp_path / "three"))
    spread = json.loads((tmp_path / "three" / "compare.json").read_text())["across_runs"]["test/loss"]
    values = [json.loads((run / "metrics.json").read_text())["test/loss"] for run in (before, fitted, fitted)]
    assert values[0] != values[1]
    assert spread["mean"] == pytest.approx(np.mean(values)) and spread["std"] == pytest.approx(np.std(values, ddof=1))
    assert spread["ci_low"] < spread["mean"] < spread["ci_high"] and spread["n"] == 3
    assert "## Across the 3 runs" in (tmp_path / "three" / "compare.md").read_text()

    cli("compare", "--runs", str(fitted), str(fitted), "--out", str(tmp_path / "self"))
    for row in json.loads((tmp_path / "self" / "compare.json").read_text())["rows"]:
        if row["metric"] not in SPEED:
            assert (row["change"], row["change_ci_low"], row["change_ci_high"]) == (0.0, 0.0, 0.0), row["metric"]
            assert row["p_value"] == 1.0 and row["verdict"] == "no_difference"


def test_compare_runs_refuses_runs_tested_on_other_rows(fitted, tmp_path, cli, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.json").write_text((fitted / "metrics.json").read_text())
    rows = json.loads((fitted / "test_rows.json").read_text())
    rows["keys"][3] = "0" * 16  # one test row with another text: not the same split
    (other / "test_rows.json").write_text(json.dumps(rows))
    for extra, message in (([str(other)], "differ in 1 of 32 test rows"),
                           ([str(tmp_path / "missing")], "not found"),
                           ([str(tmp_path)], "has no test_rows.json")):
        with pytest.raises(SystemExit) as exit_info:
            cli("compare", "--runs", str(fitted), *extra, "--out", str(tmp_path / "out"))
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("ftl: error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_ci_resamples_zero_turns_intervals_off(fitted, tiny_data_dir, tiny_bert, tmp_path, cli):
    cli("test", *cli_args(tiny_data_dir, tiny_bert, tmp_path / "t"), "--ci_resamples", "0",
        "--ckpt_path", str(fitted / "checkpoints" / "last.ckpt"))
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert "test/accuracy" in metrics and not any(k.endswith(("_ci_low", "_ci_high")) for k in metrics)
    assert (tmp_path / "t" / "test_rows.json").is_file()


def test_the_seeds_sweep_runs_one_recipe_once_per_seed(cli, capsys, tmp_path):
    cli("sweep", str(ROOT / "sweeps" / "seeds" / "cancer_seeds.yaml"), "--dry_run", "true",
        "--sweep_dir", str(tmp_path / "sweep"), "--trainer.max_epochs", "1")
    lines = [line for line in capsys.readouterr().out.splitlines() if " fit --config configs/cancer.yaml" in line]
    assert [re.search(r"--seed_everything=(\d+)", line).group(1) for line in lines] == ["42", "43", "44"]
    assert all("--trainer.max_epochs 1" in line and "trial-0" in line for line in lines)
