"""The CLI end to end on a tiny model: outputs, links, overrides, run directories, seeds, configs, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import fit_args

ROOT = Path(__file__).resolve().parents[1]
CLASSIFICATION_CONFIGS = ["quickstart", "depression", "cancer", "medical_abstracts", "imdb"]


def read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_test_outputs_agree(run_dir: Path, test_rows: int, test_csv: Path | None = None) -> list[str]:
    """The test/* numbers of metrics.json recomputed from the run's own test_predictions.csv and
    confusion_matrix.csv, and those two files against each other and the test split; returns the label names."""
    import csv

    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = read_csv(run_dir / "test_predictions.csv")
    with open(run_dir / "confusion_matrix.csv", newline="") as f:
        header, *lines = list(csv.reader(f))
    names = header[1:]
    matrix = {line[0]: [int(v) for v in line[1:]] for line in lines}
    assert list(matrix) == names  # square, rows and columns in the same (label id) order
    # one prediction row per test row, in the split's order, each beside its own label
    assert len(rows) == test_rows
    if test_csv is not None:
        split = read_csv(test_csv)
        assert [r["text"] for r in rows] == [r["text"] for r in split]
        assert [r["label"] for r in rows] == [names[int(r["label"])] for r in split]
    assert {r["label"] for r in rows} | {r["predicted_label"] for r in rows} <= set(names)
    for row in rows:  # the predicted label is the most probable one; probabilities are a distribution
        probs = [float(row[f"prob_{name}"]) for name in names]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert row["predicted_label"] == names[probs.index(max(probs))]
    # accuracy is the share of rows predicted right; the confusion matrix counts the same rows
    right = sum(r["label"] == r["predicted_label"] for r in rows)
    assert metrics["test/accuracy"] == pytest.approx(right / len(rows), abs=1e-6)
    for actual in names:
        assert matrix[actual] == [sum(r["label"] == actual and r["predicted_label"] == p for r in rows)
                                  for p in names], actual
    # per class: recall = diagonal / row sum, precision = diagonal / column sum (0 when empty), f1 their mean
    scores: dict[str, list[float]] = {"precision": [], "recall": [], "f1": []}
    for i, name in enumerate(names):
        tp, support, predicted = matrix[name][i], sum(matrix[name]), sum(matrix[a][i] for a in names)
        by_hand = {"precision": tp / predicted if predicted else 0.0, "recall": tp / support if support else 0.0,
                   "f1": 2 * tp / (support + predicted) if tp else 0.0}
        for kind, value in by_hand.items():
            assert metrics[f"test/{kind}/{name}"] == pytest.approx(value, abs=1e-6), (kind, name)
            if support or predicted:  # macro averages skip labels neither present nor predicted
                scores[kind].append(value)
    for kind, values in scores.items():
        assert metrics[f"test/{kind}_macro"] == pytest.approx(sum(values) / len(values), abs=1e-6), kind
    return names


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_data_dir, tiny_bert):
    from tests.helpers import run_cli

    run_dir = tmp_path_factory.mktemp("cli") / "run"
    run_cli(*fit_args("depression", tiny_data_dir, tiny_bert, run_dir, "--model.learning_rate", "3e-4"))
    return run_dir


def test_fit_writes_every_run_output(finished_run):
    files = {p.name for p in finished_run.iterdir()}
    assert {"config.yaml", "checkpoints", "metrics.csv", "metrics.json", "confusion_matrix.csv"} <= files
    ckpts = sorted(p.name for p in (finished_run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(name.startswith("best-") for name in ckpts)


def test_metrics_json_has_the_test_keys_with_sane_values(finished_run, tiny_data_dir):
    from ftl.data.synthetic import LABEL_NAMES

    metrics = json.loads((finished_run / "metrics.json").read_text())
    for key in ("test/loss", "test/accuracy", "test/f1_macro"):
        assert key in metrics
    # every per-class and macro number, recomputed from the run's test_predictions.csv and confusion_matrix.csv
    assert assert_test_outputs_agree(finished_run, 32, tiny_data_dir / "test.csv") == LABEL_NAMES
    assert {f"test/{kind}/{name}" for kind in ("precision", "recall", "f1") for name in LABEL_NAMES} <= set(metrics)
    # metrics.csv: one validation row per epoch (max_epochs 2), and val/* in metrics.json are the best epoch's
    per_epoch = [r for r in read_csv(finished_run / "metrics.csv") if r.get("val/loss")]
    assert [int(r["epoch"]) for r in per_epoch] == [0, 1]
    best = max(per_epoch, key=lambda r: float(r["val/f1_macro"]))
    assert metrics["val/f1_macro"] == pytest.approx(float(best["val/f1_macro"]))
    # the confusion matrix agrees with accuracy: diagonal / total
    rows = (finished_run / "confusion_matrix.csv").read_text().strip().splitlines()[1:]
    matrix = [[int(v) for v in row.split(",")[1:]] for row in rows]
    total = sum(map(sum, matrix))
    assert total == 32
    assert metrics["test/accuracy"] == pytest.approx(sum(matrix[i][i] for i in range(len(matrix))) / total)


def test_config_records_links_and_overrides(finished_run, tiny_bert):
    from ftl.data.synthetic import LABEL_NAMES

    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert config["model"]["init_args"]["learning_rate"] == pytest.approx(3e-4)
    assert config["model"]["init_args"]["pretrained"] == str(tiny_bert)
    # linked values are derived, not repeated: re-running config.yaml re-links them
    assert "tokenizer" not in config["data"]["init_args"]
    assert "num_labels" not in config["model"]["init_args"]
    assert config["seed_everything"] == 42
    ckpt = next((finished_run / "checkpoints").glob("best-*.ckpt"))
    import torch

    hparams = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hparams["num_labels"] == len(LABEL_NAMES)
    assert list(hparams["label_names"]) == LABEL_NAMES


def test_runs_never_share_a_directory(tmp_path, tiny_data_dir, tiny_bert, cli):
    root = tmp_path / "runs"
    args = fit_args("depression", tiny_data_dir, tiny_bert, tmp_path / "unused", "--trainer.max_epochs", "1",
                    "--test_after_fit", "false")
    args = args[: args.index("--run_dir")] + ["--runs_root", str(root), "--trainer.max_epochs", "1"]
    cli(*args)
    first = sorted((root / "depression").iterdir())
    assert len(first) == 1
    snapshot = {p: p.read_bytes() for p in first[0].rglob("*") if p.is_file()}
    cli(*args)
    runs = sorted((root / "depression").iterdir())
    assert len(runs) == 2
    changed = [str(p) for p, content in snapshot.items() if p.read_bytes() != content]
    assert not changed, f"second run touched the first: {changed}"


def test_explicit_run_dir_is_not_reused(finished_run, tiny_data_dir, tiny_bert, cli, capsys):
    before = (finished_run / "metrics.json").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        cli(*fit_args("depression", tiny_data_dir, tiny_bert, finished_run))
    assert exit_info.value.code == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (finished_run / "metrics.json").read_bytes() == before


def test_same_seed_same_metrics(tmp_path, tiny_data_dir, tiny_bert, cli):
    results = []
    for name in ("a", "b", "c"):
        extra = ("--seed_everything", "7") if name != "c" else ("--seed_everything", "8")
        cli(*fit_args("depression", tiny_data_dir, tiny_bert, tmp_path / name, "--trainer.max_epochs", "1",
                      "--model.learning_rate", "1e-3", *extra))
        results.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    timing = ("per_sec", "runtime", "_time", "tflops", "mfu")  # throughput differs run to run; every result must not
    results = [{k: v for k, v in r.items() if not any(t in k for t in timing)} for r in results]
    assert results[0] == results[1]
    assert results[0]["test/loss"] != results[2]["test/loss"]


@pytest.mark.parametrize("config", CLASSIFICATION_CONFIGS)
def test_every_config_parses_and_runs_fast_dev_run(config, tmp_path, tiny_data_dir, tiny_binary_dir, tiny_bert,
                                                   cli):
    """Each config with its own data module; only the source (and size) is swapped for a tiny fixture."""
    data = {"quickstart": None, "medical_abstracts": tiny_data_dir}.get(config, tiny_binary_dir)
    args = ["fit", "--config", str(ROOT / "configs" / f"{config}.yaml"), "--model.pretrained", str(tiny_bert),
            "--trainer.fast_dev_run", "true", "--run_dir", str(tmp_path / "run")]
    if data is None:
        args += ["--data.n_train", "40", "--data.n_val", "20", "--data.n_test", "20", "--data.max_length", "64"]
    else:
        args += ["--data.data_dir", str(data), "--data.dataset", "null"]
    cli(*args)
    # fast_dev_run trains on one batch, but the test after fit scores the whole test split
    test_csv = None if data is None else data / "test.csv"
    names = assert_test_outputs_agree(tmp_path / "run", 20 if data is None else len(read_csv(test_csv)), test_csv)
    assert len(names) == (2 if data is tiny_binary_dir else 5)


def test_validate_and_test_subcommands_from_a_checkpoint(finished_run, tmp_path, tiny_data_dir, tiny_bert, cli):
    ckpt = finished_run / "checkpoints" / "last.ckpt"
    common = ["--config", str(ROOT / "configs" / "depression.yaml"), "--model.pretrained", str(tiny_bert),
              "--data.class_path", "ftl.data.classification.TextClassificationDataModule",
              "--data.data_dir", str(tiny_data_dir), "--data.max_length", "64", "--ckpt_path", str(ckpt)]
    cli("test", *common, "--run_dir", str(tmp_path / "t"))
    cli("validate", *common, "--run_dir", str(tmp_path / "v"))
    test_metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert set(test_metrics) >= {"test/accuracy", "test/loss"}
    assert "val/accuracy" in json.loads((tmp_path / "v" / "metrics.json").read_text())


# ---------------------------------------------------------------------- bad input through the CLI
@pytest.mark.parametrize(
    "override, expected",
    [
        (["--data.data_dir", "/no/such/folder"], "does not exist"),
        (["--data.text_column", "body"], "column 'body'"),
        (["--data.max_length", "4096"], "above the model's limit"),
        (["--model.pretrained", "no-such-alias-xyz"], "not an offline alias"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_run_dir(override, expected, tmp_path, tiny_data_dir, tiny_bert,
                                                    cli, capsys):
    args = fit_args("depression", tiny_data_dir, tiny_bert, tmp_path / "run", *override)
    with pytest.raises(SystemExit) as exit_info:
        cli(*args)
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ftl: error:")]
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "run").exists()


def test_malformed_yaml_is_a_clear_error(tmp_path, cli, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  class_path: [unclosed\n")
    with pytest.raises(SystemExit) as exit_info:
        cli("fit", "--config", str(bad))
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "bad.yaml' is not valid YAML at line 3" in err[0], err
    with pytest.raises(SystemExit):
        cli("fit", "--config", str(tmp_path / "missing.yaml"))
    assert "missing.yaml' not found" in capsys.readouterr().err


def test_python_dash_m_help_lists_subcommands():
    proc = subprocess.run([sys.executable, "-m", "ftl", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for sub in ("fit", "validate", "test", "predict"):
        assert sub in proc.stdout


def test_predict_writes_a_csv_of_labels_and_probabilities(finished_run, tmp_path, tiny_data_dir, tiny_bert, cli):
    import csv

    from ftl.data.synthetic import LABEL_NAMES

    texts = ["patient reports chest pain for two weeks, worse at night, with shortness of breath and swelling",
             "she denies cough", "tremor in the right hand for three months"]
    questions = tmp_path / "notes.txt"
    questions.write_text(texts[0] + "\n\n" + texts[1] + "\n" + texts[2] + "\n")
    ckpt = finished_run / "checkpoints" / "last.ckpt"
    cli("predict", "--config", str(ROOT / "configs" / "depression.yaml"), "--model.pretrained", str(tiny_bert),
        "--data.class_path", "ftl.data.classification.TextClassificationDataModule",
        "--data.data_dir", str(tiny_data_dir), "--data.predict_file", str(questions), "--data.eval_batch_size", "2",
        "--ckpt_path", str(ckpt), "--run_dir", str(tmp_path / "p"))
    with open(tmp_path / "p" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["text"] for r in rows] == texts
    # each row's probabilities are that text's own (evaluation is length-sorted, outputs restored to file order)
    import torch
    from transformers import AutoTokenizer

    from ftl.models.classifier import SequenceClassifier

    module = SequenceClassifier.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    for text, row in zip(texts, rows, strict=True):
        with torch.no_grad():
            expected = module(dict(tokenizer([text], return_tensors="pt"))).softmax(-1)[0].tolist()
        probs = [float(row[f"prob_{name}"]) for name in LABEL_NAMES]
        assert probs == pytest.approx(expected, abs=1e-4)
        assert row["predicted_label"] == LABEL_NAMES[max(range(len(probs)), key=probs.__getitem__)]


def test_quick_top_level_help_names_exactly_the_real_subcommands():
    """`ftl --help` is answered without importing Lightning; it must stay true to the real CLI."""
    import re

    from ftl.__main__ import USAGE
    from ftl.commands.cli import EXTRA_COMMANDS, FTLCLI

    listed = set(re.search(r"\{(.+?)\}", USAGE).group(1).split(","))
    assert listed == set(FTLCLI.subcommands()) | set(EXTRA_COMMANDS)
    for name in listed:
        assert re.search(rf"^  {name} ", USAGE, re.M), name


def test_class_names_without_a_config_on_one_spreadsheet_csv(tmp_path, tiny_bert, cli, capsys):
    """A new user's first run: no YAML, classes by name, one CSV as spreadsheets export it (BOM, string labels
    with a leading space, an empty text cell): val/test are carved from it, labels are stripped, empties warned."""
    import csv

    path = tmp_path / "notes.csv"
    labels = [" asthma", " diabetes", " migraine"]
    with open(path, "w", newline="", encoding="utf-8-sig") as f:
        writer = csv.writer(f)
        writer.writerow(["note_id", "note", "specialty"])
        for i in range(90):
            writer.writerow([i, "" if i == 7 else f"patient reports {labels[i % 3].strip()} symptoms", labels[i % 3]])
    cli("fit", "--model", "SequenceClassifier", "--data", "TextClassificationDataModule",
        "--model.pretrained", str(tiny_bert), "--data.data_files", str(path), "--data.text_column", "note",
        "--data.label_column", "specialty", "--data.max_length", "32", "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.logger", "false", "--run_dir", str(tmp_path / "run"))
    assert "1 of 90 rows in the train split have an empty 'note'" in capsys.readouterr().err
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["model"]["class_path"] == "ftl.models.classifier.SequenceClassifier"
    assert config["data"]["class_path"] == "ftl.data.classification.TextClassificationDataModule"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {f"test/f1/{name.strip()}" for name in labels} <= set(metrics)
    with open(tmp_path / "run" / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and {row["label"] for row in rows} <= {"asthma", "diabetes", "migraine"}


@pytest.mark.parametrize(
    "override, expected",
    [
        (["--model.learning_rat", "1e-4"], "error: model: Option 'learning_rat' is not accepted"),
        (["--model.learning_rate", "fast"], "error: model.learning_rate: Expected a <class 'float'>. Got value: fast"),
        (["--trainer.max_epochs", "x"], "error: trainer.max_epochs: Expected a <class 'int'>. Given value: x"),
    ],
)
def test_a_bad_option_is_one_line_not_the_usage_wall(override, expected, tmp_path, tiny_data_dir, tiny_bert, cli,
                                                     capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(*fit_args("depression", tiny_data_dir, tiny_bert, tmp_path / "run", *override))
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[-2].endswith(expected), err
    assert err[-1].endswith("--help` lists every option)") and not any("usage:" in line for line in err)
    assert not (tmp_path / "run").exists()


def test_fit_without_validation_drops_early_stopping_and_tests_the_latest_model(tmp_path, tiny_data_dir, tiny_bert,
                                                                                cli, capsys):
    """The task configs stop early on val/f1_macro; with validation off that metric never exists."""
    cli(*fit_args("depression", tiny_data_dir, tiny_bert, tmp_path / "run", "--trainer.limit_val_batches", "0",
                  "--trainer.logger", "false"))
    assert "validation is off (limit_val_batches 0)" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "test/accuracy" in metrics and not any(key.startswith("val/") for key in metrics)
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["checkpoint"]["monitor"] is None
    assert not any("EarlyStopping" in cb["class_path"] for cb in config["trainer"]["callbacks"] or [])
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
