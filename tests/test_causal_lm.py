"""CausalLM: answer-only loss, token-weighted loss and perplexity, ROUGE, generation, and the CLI round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from ftl.data.qa import IGNORE_INDEX, QADataModule
from ftl.models.causal_lm import CausalLM, rouge_metric, token_loss_sum

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dm(tiny_qa_dir, tiny_gpt2):
    module = QADataModule(data_dir=str(tiny_qa_dir), tokenizer=str(tiny_gpt2), max_length=64, batch_size=4,
                          eval_batch_size=3)
    module.setup("fit")
    return module


@pytest.fixture()
def lm(tiny_gpt2):
    return CausalLM(pretrained=str(tiny_gpt2), max_new_tokens=6, do_sample=False)


def train_batch(dm: QADataModule, n: int = 4) -> dict[str, torch.Tensor]:
    return dm.collate([dm.datasets["train"][i] for i in range(n)])


# ---------------------------------------------------------------- loss on answer tokens only
def test_prompt_and_padding_tokens_carry_no_loss(dm, lm):
    batch = train_batch(dm)
    lm.eval()
    logits = lm(batch).detach().requires_grad_(True)
    total, count = token_loss_sum(logits, batch["labels"])
    (total / count).backward()
    grad = logits.grad.abs().sum(-1)  # per position: how much the loss depends on the logits there
    for i in range(len(batch["input_ids"])):
        p = int(dm.datasets["train"][i]["prompt_length"])
        n = int(batch["attention_mask"][i].sum())
        assert (grad[i, : p - 1] == 0).all()  # positions that predict prompt tokens
        assert (grad[i, p - 1 : n - 1] > 0).all()  # positions that predict answer tokens (and EOS)
        assert (grad[i, n - 1 :] == 0).all()  # padding
    assert count == sum(len(dm.datasets["train"][i]["input_ids"]) - dm.datasets["train"][i]["prompt_length"]
                        for i in range(4))


def test_changing_prompt_tokens_labels_only_matters_when_they_are_scored(dm, lm):
    """The loss ignores whatever the model predicts at prompt positions, and -100 is what makes it so."""
    batch = train_batch(dm)
    lm.eval()
    with torch.no_grad():
        logits = lm(batch)
    base = token_loss_sum(logits, batch["labels"])[0]
    noisy = logits.clone()
    p = int(dm.datasets["train"][0]["prompt_length"])
    noisy[0, : p - 1] = torch.randn_like(noisy[0, : p - 1]) * 10  # predictions of the prompt's tokens
    assert torch.equal(token_loss_sum(noisy, batch["labels"])[0], base)
    labels = batch["labels"].clone()
    labels[0, 2] = batch["input_ids"][0, 2]  # score one prompt token after all
    assert token_loss_sum(logits, labels)[0] > base


def test_training_loss_matches_transformers_own_causal_lm_loss(dm, lm):
    batch = train_batch(dm)
    lm.eval()
    with torch.no_grad():
        ours = lm.training_step(batch, 0)
        theirs = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"]).loss
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


# ---------------------------------------------------------------- token-weighted loss and perplexity
def test_test_loss_is_token_weighted_and_perplexity_is_its_exp(dm, tiny_gpt2, tmp_path):
    lm = CausalLM(pretrained=str(tiny_gpt2), max_new_tokens=4, test_generation_samples=0)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path))
    trainer.test(lm, datamodule=dm)
    logged = trainer.callback_metrics
    # by hand over the same (length-sorted, unevenly filled) batches
    lm.eval()
    total, count, batch_means = 0.0, 0, []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            logp = torch.log_softmax(lm(batch).float(), -1)[:, :-1]
            targets = batch["labels"][:, 1:]
            scored = targets != IGNORE_INDEX
            nll = -logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)[scored]
            total += nll.sum().item()
            count += int(scored.sum())
            batch_means.append(nll.mean().item())
    by_hand = total / count
    assert logged["test/loss"].item() == pytest.approx(by_hand, rel=1e-5)
    assert logged["test/perplexity"].item() == pytest.approx(math.exp(by_hand), rel=1e-5)
    mean_of_means = sum(batch_means) / len(batch_means)
    assert abs(mean_of_means - by_hand) > 1e-4, "batches too alike to tell the two means apart"
    assert "test/rouge1" not in logged  # no generations were asked for


# ---------------------------------------------------------------- ROUGE
def test_rouge_metric_matches_f_measures_computed_by_hand():
    """ftl's ROUGE-1/2/L against counts done by hand. The tokenizer lowercases and turns every run of characters
    other than a-z0-9 into a space (so punctuation vanishes and "500-mg" is two tokens); the F-measure is
    2PR / (P + R); the score over several pairs is the mean of their per-pair F-measures."""
    pairs = [
        # pred  the patient has a fever        (5 tokens; "The" lowercased, "." dropped)
        # ref   the patient has no fever       (5 tokens; "!" dropped)
        # unigrams shared: the, patient, has, fever = 4   -> P = 4/5, R = 4/5, F = 4/5
        # bigrams  pred: the patient, patient has, has a, a fever; ref: the patient, patient has, has no, no fever
        #          shared: the patient, patient has = 2 of 4 each -> F = 1/2
        # LCS      the patient has fever = 4   -> P = R = 4/5, F = 4/5
        ("The patient has a fever.", "The patient has no fever!", (4 / 5, 1 / 2, 4 / 5)),
        # pred  rest and fluids then rest again   (6 tokens; "," and "." dropped, "Rest" lowercased)
        # ref   fluids and rest                   (3 tokens)
        # unigrams shared (counts clipped: "rest" twice in pred, once in ref): rest, and, fluids = 3
        #          P = 3/6, R = 3/3, F = 2 * 1/2 * 1 / (3/2) = 2/3
        # bigrams  pred: rest and, and fluids, fluids then, then rest, rest again; ref: fluids and, and rest
        #          shared: none -> F = 0
        # LCS      "and rest" (or "fluids rest") = 2; no 3 (fluids comes after "and" in pred, before it in ref)
        #          P = 2/6, R = 2/3, F = 2 * 1/3 * 2/3 / 1 = 4/9
        ("Rest and fluids, then rest again.", "Fluids and rest.", (2 / 3, 0.0, 4 / 9)),
        # pred  take 2 tablets 500 mg daily       (6 tokens; "(", "-", ")" become spaces)
        # ref   take two 500 mg tablets daily     (6 tokens)
        # unigrams shared: take, tablets, 500, mg, daily = 5   -> P = R = 5/6, F = 5/6
        # bigrams  pred: take 2, 2 tablets, tablets 500, 500 mg, mg daily
        #          ref:  take two, two 500, 500 mg, mg tablets, tablets daily
        #          shared: 500 mg = 1 of 5 each -> F = 1/5
        # LCS      take 500 mg daily = 4 (with "tablets" only take tablets daily = 3) -> P = R = 4/6, F = 2/3
        ("Take 2 tablets (500-mg) daily", "take two 500 mg tablets daily", (5 / 6, 1 / 5, 2 / 3)),
    ]
    keys = ("rouge1_fmeasure", "rouge2_fmeasure", "rougeL_fmeasure")
    for pred, target, by_hand in pairs:
        metric = rouge_metric()
        metric.update([pred], [target])
        scores = metric.compute()
        assert [scores[key].item() for key in keys] == pytest.approx(by_hand, abs=1e-6), pred
    # all three pairs, over two updates: the mean of the per-pair F-measures
    #   ROUGE-1 (4/5 + 2/3 + 5/6) / 3 = 23/30, ROUGE-2 (1/2 + 0 + 1/5) / 3 = 7/30,
    #   ROUGE-L (4/5 + 4/9 + 2/3) / 3 = 86/135
    metric = rouge_metric()
    metric.update([p for p, _, _ in pairs[:2]], [t for _, t, _ in pairs[:2]])
    metric.update([pairs[2][0]], [pairs[2][1]])
    scores = metric.compute()
    assert [scores[key].item() for key in keys] == pytest.approx((23 / 30, 7 / 30, 86 / 135), abs=1e-6)


# ---------------------------------------------------------------- generation
def test_left_padded_batch_generates_what_each_prompt_generates_alone(dm, lm):
    batch = dm.collate([dm.datasets["test"][i] for i in range(4)])
    lm.eval()
    together = lm.generate(batch["prompt_input_ids"], batch["prompt_attention_mask"])
    alone = []
    for i in range(4):
        row = dm.datasets["test"][i]
        ids = torch.tensor([row["input_ids"][: row["prompt_length"]]])
        alone += lm.generate(ids, torch.ones_like(ids))
    assert together == alone
    assert len(set(alone)) > 1  # the prompts do steer the (random) model


def test_sampled_generations_do_not_depend_on_earlier_randomness(dm, tiny_gpt2):
    lm = CausalLM(pretrained=str(tiny_gpt2), max_new_tokens=8, do_sample=True, temperature=0.7).eval()
    batch = dm.collate([dm.datasets["test"][i] for i in range(3)])
    args = (batch["prompt_input_ids"], batch["prompt_attention_mask"])
    first = lm.generate(*args, seed=1)
    torch.rand(1000)  # use the global generator in between
    assert lm.generate(*args, seed=1) == first
    assert lm.generate(*args, seed=2) != first


# ---------------------------------------------------------------- CLI round trip
def cli_args(command: str, model: Path, data: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        command, "--config", str(ROOT / "configs" / "medquad.yaml"),
        "--model.pretrained", str(model),
        "--data.data_dir", str(data),
        "--data.max_length", "64",
        "--data.batch_size", "8",
        "--model.max_new_tokens", "6",
        "--trainer.enable_progress_bar", "false",
        "--run_dir", str(run_dir),
        *extra,
    ]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_gpt2, tiny_qa_dir):
    from tests.helpers import run_cli

    root = tmp_path_factory.mktemp("qa-cli")
    run_cli(*cli_args("fit", tiny_gpt2, tiny_qa_dir, root / "fit",
                      "--trainer.max_epochs", "3", "--trainer.accumulate_grad_batches", "1",
                      "--model.learning_rate", "1e-2", "--model.warmup_steps", "0",
                      "--model.val_generation_samples", "3"))
    return root


def test_fit_writes_every_run_output(fitted, tiny_qa_dir):
    run = fitted / "fit"
    files = {p.name for p in run.iterdir()}
    assert {"config.yaml", "checkpoints", "metrics.csv", "metrics.json", "generations.jsonl"} <= files
    ckpts = {p.name for p in (run / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and any(name.startswith("best-") for name in ckpts)
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("test/loss", "test/perplexity", "test/rouge1", "test/rouge2", "test/rougeL"):
        assert key in metrics
    assert metrics["test/perplexity"] == pytest.approx(math.exp(metrics["test/loss"]), rel=1e-5)
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/loss", "val/perplexity", "val/rougeL", "train/loss_step"} <= set(header)


def test_generations_hold_every_test_question_in_order_and_give_the_logged_rouge(fitted, tiny_qa_dir):
    from torchmetrics.functional.text.rouge import rouge_score

    rows = [json.loads(line) for line in (fitted / "fit" / "generations.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (tiny_qa_dir / "test.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows] == [t["question"] for t in test]
    assert [r["reference"] for r in rows] == [t["answer"] for t in test]
    # per question: its answer's token-weighted loss and its tokens, and its ROUGE scores (for the intervals)
    assert all(set(r) == {"question", "reference", "generated", "loss", "loss_weight", "rouge1", "rouge2", "rougeL"}
               for r in rows)
    metrics = json.loads((fitted / "fit" / "metrics.json").read_text())
    scores = rouge_score([r["generated"] for r in rows], [r["reference"] for r in rows],
                         rouge_keys=("rouge1", "rouge2", "rougeL"))
    for key in ("rouge1", "rouge2", "rougeL"):
        assert metrics[f"test/{key}"] == pytest.approx(scores[f"{key}_fmeasure"].item(), abs=1e-6)
        assert metrics[f"test/{key}"] == pytest.approx(sum(r[key] for r in rows) / len(rows), abs=1e-6)
    tokens = sum(r["loss_weight"] for r in rows)
    assert metrics["test/loss"] == pytest.approx(sum(r["loss"] * r["loss_weight"] for r in rows) / tokens, rel=1e-5)
    for key in ("loss", "perplexity", "rouge1", "rouge2", "rougeL"):
        assert metrics[f"test/{key}_ci_low"] <= metrics[f"test/{key}"] * (1 + 1e-6) + 1e-9
        assert metrics[f"test/{key}"] <= metrics[f"test/{key}_ci_high"] * (1 + 1e-6) + 1e-9
    assert metrics["test/perplexity_ci_low"] == pytest.approx(math.exp(metrics["test/loss_ci_low"]))


def test_fine_tuning_lowers_test_loss_against_the_base_model(fitted, cli, tiny_gpt2, tiny_qa_dir):
    cli(*cli_args("test", tiny_gpt2, tiny_qa_dir, fitted / "base"))  # no checkpoint: the pretrained model
    base = json.loads((fitted / "base" / "metrics.json").read_text())
    tuned = json.loads((fitted / "fit" / "metrics.json").read_text())
    assert {"test/loss", "test/perplexity", "test/rougeL"} <= set(base)
    assert tuned["test/loss"] < base["test/loss"] - 0.2


def test_predict_from_a_checkpoint_answers_every_question_in_order(fitted, cli, tiny_gpt2, tiny_qa_dir, tmp_path):
    questions = tmp_path / "questions.txt"
    questions.write_text("What is gout?\nHow is asthma treated?\nWho is at risk for a very rare illness?\n")
    out = fitted / "predict"
    cli(*cli_args("predict", tiny_gpt2, tiny_qa_dir, out, "--data.predict_file", str(questions),
                  "--ckpt_path", str(fitted / "fit" / "checkpoints" / "last.ckpt")))
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows] == questions.read_text().splitlines()
    assert all(set(r) == {"question", "generated"} and isinstance(r["generated"], str) for r in rows)


def test_max_length_above_the_models_positions_is_one_line_error(cli, tiny_gpt2, tiny_qa_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli(*cli_args("fit", tiny_gpt2, tiny_qa_dir, tmp_path / "run"), "--data.max_length", "512")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("ftl: error: data.max_length=512 is above the model's limit of 128")


def test_compare_of_a_causal_lm_speaks_of_its_metrics_not_of_labels_or_heads(fitted, cli, tiny_gpt2, tiny_qa_dir):
    out = fitted / "compare"
    cli(*cli_args("compare", tiny_gpt2, tiny_qa_dir, out, "--model.test_generation_samples", "0",
                  "--ckpt_path", str(fitted / "fit" / "checkpoints" / "last.ckpt")))
    text = (out / "compare.md").read_text()
    assert "Accuracy on" not in text and "task head" not in text
    assert "| Perplexity |" in text or "| perplexity |" in text.lower()
    result = json.loads((out / "compare.json").read_text())
    assert result["after"]["test/loss"] < result["before"]["test/loss"]
    assert result["test_rows"] == 8  # every question has a record (its loss), generated or not
    rows = {r["metric"]: r for r in result["rows"]}
    for key in ("test/loss", "test/perplexity"):  # paired over the 8 questions, token-weighted
        row = rows[key]
        assert row["test"] == "permutation" and row["change_ci_high"] < 0 and row["verdict"] == "better", row
    assert "test/rouge1" not in rows  # no generations (test_generation_samples 0): no ROUGE row
