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
SPEED = ("test/runtime", "test/samples_per_sec", "test/steps_per_sec")


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
    """Metric name -> its cells, from the table in compare.md."""
    rows = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] != "Metric":
            rows[cells[0]] = cells[1:]
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
