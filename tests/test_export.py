"""Hugging Face export: hf_model/ after fit holds the best checkpoint, loads with AutoModel and pipeline, answers with
label names and the same predictions as `ftl predict`; `ftl export` does the same for any checkpoint."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from tests.helpers import cli_args, spread_predictions


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_data_dir, tiny_bert):
    from tests.helpers import run_cli

    run_dir = tmp_path_factory.mktemp("export") / "fit"
    run_cli("fit", *cli_args(tiny_data_dir, tiny_bert, run_dir, "--trainer.max_epochs", "2",
                             "--model.learning_rate", "3e-4", "--test_after_fit", "false"))
    return run_dir


def texts_file(tiny_data_dir: Path, folder: Path, n: int = 12) -> tuple[Path, list[str]]:
    with open(tiny_data_dir / "test.csv", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)][:n]
    path = folder / "inputs.txt"
    path.write_text("\n".join(texts) + "\n")
    return path, texts


def ftl_predictions(cli, tiny_data_dir, tiny_bert, run_dir: Path, ckpt: Path, inputs: Path) -> list[dict[str, str]]:
    cli("predict", *cli_args(tiny_data_dir, tiny_bert, run_dir), "--ckpt_path", str(ckpt),
        "--data.predict_file", str(inputs))
    with open(run_dir / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_pipeline_agrees(folder: Path, texts: list[str], rows: list[dict[str, str]], names: list[str],
                           atol: float = 1e-5) -> None:
    """The pipeline's label names and scores match ftl's predictions.csv: scores within `atol` (float32 rounding
    differs between a padded batch and one unpadded row), labels on every row whose top-2 margin exceeds 2 * atol,
    which must be nearly all rows."""
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(folder), device="cpu")
    top = classify(texts)
    every = classify(texts, top_k=None)
    assert [row["text"] for row in rows] == texts
    decided = 0
    for answer, scores, row in zip(top, every, rows, strict=True):
        assert answer["label"] in names  # label names, not LABEL_0
        probs = {name: float(row[f"prob_{name}"]) for name in names}
        assert {score["label"] for score in scores} == set(names)
        for score in scores:
            assert score["score"] == pytest.approx(probs[score["label"]], abs=atol)
        second, first = sorted(probs.values())[-2:]
        if first - second > 2 * atol:
            assert answer["label"] == row["predicted_label"]
            decided += 1
    assert decided >= 0.9 * len(rows)


def test_fit_exports_the_best_checkpoint_with_label_names(fitted):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ftl.data.synthetic import LABEL_NAMES

    folder = fitted / "hf_model"
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert model.config.id2label == dict(enumerate(LABEL_NAMES))
    assert model.config.label2id == {name: i for i, name in enumerate(LABEL_NAMES)}
    assert AutoTokenizer.from_pretrained(folder)("chest pain")["input_ids"]  # the tokenizer is saved beside it
    best = next((fitted / "checkpoints").glob("best-*.ckpt"))
    saved = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    exported = model.state_dict()
    weights = {k.removeprefix("model."): v for k, v in saved.items() if k.startswith("model.")}
    assert weights.keys() <= exported.keys() and "classifier.weight" in weights
    for key, value in weights.items():
        assert torch.equal(exported[key], value), key


def _exported_matches(folder: Path, ckpt: Path) -> bool:
    import torch
    from transformers import AutoModelForSequenceClassification

    exported = AutoModelForSequenceClassification.from_pretrained(folder).state_dict()
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return all(torch.equal(exported[k.removeprefix("model.")], v) for k, v in saved.items() if k.startswith("model."))


@pytest.mark.parametrize("monitor", ["step", "none"])
def test_fit_exports_the_best_checkpoint_whether_or_not_it_is_the_last_step(monitor, tmp_path, tiny_data_dir,
                                                                           tiny_bert, cli):
    """Best = the first epoch (monitor `step`, mode min): its weights are loaded and exported, not the final ones.
    No validation: the best is the last step, exported from memory, and equal to that checkpoint."""
    run = tmp_path / "run"
    extra = ["--checkpoint.monitor", "step", "--checkpoint.mode", "min"] if monitor == "step" \
        else ["--trainer.limit_val_batches", "0"]
    cli("fit", *cli_args(tiny_data_dir, tiny_bert, run, "--trainer.max_epochs", "2", "--model.learning_rate", "3e-4",
                         "--test_after_fit", "false", *extra))
    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    last = run / "checkpoints" / "last.ckpt"
    assert ("epoch0" in best.name) == (monitor == "step")
    assert _exported_matches(run / "hf_model", best)
    assert _exported_matches(run / "hf_model", last) == (monitor == "none")


def test_pipeline_matches_ftl_predict(fitted, tiny_data_dir, tiny_bert, tmp_path, cli):
    from ftl.data.synthetic import LABEL_NAMES

    inputs, texts = texts_file(tiny_data_dir, tmp_path)
    best = next((fitted / "checkpoints").glob("best-*.ckpt"))
    rows = ftl_predictions(cli, tiny_data_dir, tiny_bert, tmp_path / "predict", best, inputs)
    assert_pipeline_agrees(fitted / "hf_model", texts, rows, LABEL_NAMES)


def test_export_command_on_a_checkpoint_with_varied_predictions(fitted, tiny_data_dir, tiny_bert, tmp_path, cli):
    """`ftl export` of a checkpoint whose predictions differ per row: pipeline and `ftl predict` agree row by row."""
    import torch

    from ftl.data.classification import TextClassificationDataModule
    from ftl.models.classifier import SequenceClassifier

    # the fit's checkpoint, with weights changed so that predictions vary between rows (see spread_predictions)
    checkpoint = torch.load(fitted / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    module = SequenceClassifier(**hparams)
    module.load_state_dict(checkpoint["state_dict"])
    data = TextClassificationDataModule(data_dir=str(tiny_data_dir), tokenizer=str(tiny_bert), max_length=64,
                                        batch_size=8)
    spread_predictions(module, data)
    checkpoint["state_dict"] = module.state_dict()
    ckpt = tmp_path / "spread.ckpt"
    torch.save(checkpoint, ckpt)

    config = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    cli("export", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "exported"), "--run_config", str(config))
    inputs, texts = texts_file(tiny_data_dir, tmp_path, n=32)
    rows = ftl_predictions(cli, tiny_data_dir, tiny_bert, tmp_path / "predict", ckpt, inputs)
    assert len({row["predicted_label"] for row in rows}) >= 3
    # these weights (attention x50, pooler x20) amplify float32 rounding differences between padded batches and
    # single rows: measured up to 5e-4 on one machine and 2.5e-3 on CI's; a wrong head or label order is off by >0.1
    assert_pipeline_agrees(tmp_path / "exported", texts, rows, data.label_names, atol=5e-3)


def test_export_command_finds_the_run_config_and_refuses_bad_input(fitted, tmp_path, cli, capsys):
    import torch
    from transformers import AutoModelForSequenceClassification

    last = fitted / "checkpoints" / "last.ckpt"
    cli("export", "--ckpt_path", str(last), "--out", str(tmp_path / "last"))  # config.yaml of the run is found
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "last")
    saved = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(model.classifier.weight, saved["model.classifier.weight"])

    lonely = tmp_path / "lonely" / "x.ckpt"
    lonely.parent.mkdir()
    shutil.copy(last, lonely)
    cases = [
        (["--ckpt_path", str(last), "--out", str(tmp_path / "last")], "already exists and is not empty"),
        (["--ckpt_path", str(lonely), "--out", str(tmp_path / "new")], "pass --run_config"),
        (["--ckpt_path", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "new")], "not found"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            cli("export", *args)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "new").exists()


def test_the_exported_tokenizer_cuts_long_inputs_where_training_did(fitted, tiny_data_dir, tiny_bert, tmp_path, cli):
    """hf_model's tokenizer carries the run's max_length (64 here, the base tokenizer says 512): a pipeline with
    truncation=True then scores a long note exactly as `ftl predict` does, which cuts it at 64 tokens."""
    from transformers import AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(fitted / "hf_model")
    assert tokenizer.model_max_length == 64 and AutoTokenizer.from_pretrained(tiny_bert).model_max_length == 512
    _, texts = texts_file(tiny_data_dir, tmp_path, n=3)
    long = " ".join(texts * 4)
    assert 64 < len(tokenizer(long)["input_ids"]) < 512
    inputs = tmp_path / "long.txt"
    inputs.write_text(long + "\n")
    best = next((fitted / "checkpoints").glob("best-*.ckpt"))
    row = ftl_predictions(cli, tiny_data_dir, tiny_bert, tmp_path / "predict", best, inputs)[0]
    scores = pipeline("text-classification", model=str(fitted / "hf_model"), device="cpu", truncation=True,
                      top_k=None)([long])[0]
    for score in scores:
        assert score["score"] == pytest.approx(float(row[f"prob_{score['label']}"]), abs=1e-5)
