"""Multiple-choice evaluation: choice log-likelihoods, accuracy, answer formats, the `ftl mcq` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ftl.commands.mcq import evaluate, load_items
from ftl.errors import FTLError

ITEMS = [
    {"question": "Which organ does asthma affect?", "choices": ["the lungs", "the liver", "the skin"], "answer": 0},
    {"question": "What is a symptom of influenza?", "choices": ["rash", "fever", "hair loss", "tremor"],
     "answer": "B"},
    {"question": "Who is at risk for gout?", "choices": ["children", "older adults"], "answer": "older adults"},
    {"question": "How is eczema treated?", "choices": ["with moisturisers and creams", "surgery"], "answer": "0"},
    {"question": "What causes anemia?", "choices": ["low iron", "high iron", "sunlight"], "answer": "a"},
]


@pytest.fixture(scope="module")
def mcq_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mcq") / "medical.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    return path


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_gpt2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval(), AutoTokenizer.from_pretrained(tiny_gpt2)


def test_answers_in_every_format_become_indices(mcq_file):
    items = load_items(mcq_file)
    assert [item["answer"] for item in items] == [0, 1, 1, 0, 0]
    assert len(load_items(mcq_file, max_samples=2)) == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"question": "q", "choices": ["a", "b"], "answer": "C"}, "answer 'C' is not a choice"),
        ({"question": "q", "choices": ["a", "b"], "answer": 5}, "answer 5 is not a choice"),
        ({"question": "q", "choices": ["a"], "answer": 0}, "2 or more"),
        ({"question": "q", "answer": 0}, "lacks \\['choices'\\]"),
    ],
)
def test_bad_items_are_one_line_errors(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(FTLError, match=message):
        load_items(path)


def test_scores_are_choice_log_likelihoods_given_the_question(model_and_tokenizer, mcq_file):
    """Batched, padded scoring equals scoring every (question, choice) alone by hand."""
    model, tok = model_and_tokenizer
    items = load_items(mcq_file)
    metrics, records = evaluate(model, tok, items, batch_size=3)
    for item, record in zip(items, records, strict=True):
        for j, choice in enumerate(item["choices"]):
            prompt = tok(f"Question: {item['question']}\nAnswer:")["input_ids"]
            answer = tok(" " + choice, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + answer])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            by_hand = sum(logp[len(prompt) - 1 + k, t].item() for k, t in enumerate(answer))
            assert record["logprobs"][j] == pytest.approx(by_hand, abs=2e-4)
        best = max(range(len(item["choices"])), key=lambda j: record["logprobs"][j])
        assert record["predicted"] == best
    assert metrics["accuracy"] == pytest.approx(sum(r["predicted"] == r["answer"] for r in records) / 5)
    assert metrics["n"] == 5 and metrics["chance"] == pytest.approx((1 / 3 + 1 / 4 + 1 / 2 + 1 / 2 + 1 / 3) / 5)


def test_accuracy_follows_which_choice_the_model_prefers(model_and_tokenizer, mcq_file):
    """Answer keys set to the model's favourite choices give accuracy 1, keys set to any other choice 0."""
    model, tok = model_and_tokenizer
    items = load_items(mcq_file)
    _, records = evaluate(model, tok, items)
    liked = [dict(item, answer=r["predicted"]) for item, r in zip(items, records, strict=True)]
    disliked = [dict(item, answer=(r["predicted"] + 1) % len(item["choices"]))
                for item, r in zip(items, records, strict=True)]
    assert evaluate(model, tok, liked)[0]["accuracy"] == 1.0
    assert evaluate(model, tok, disliked)[0]["accuracy"] == 0.0


def test_mcq_command_writes_metrics_and_predictions(cli, tiny_gpt2, mcq_file, tmp_path, capsys):
    run_dir = tmp_path / "mcq"
    cli("mcq", "--data_file", str(mcq_file), "--pretrained", str(tiny_gpt2), "--run_dir", str(run_dir))
    metrics = json.loads((run_dir / "mcq.json").read_text())
    predictions = [json.loads(line) for line in (run_dir / "mcq_predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 5 and metrics["mcq/n"] == 5
    assert metrics["mcq/accuracy"] == pytest.approx(sum(p["predicted"] == p["answer"] for p in predictions) / 5)
    assert f"accuracy {metrics['mcq/accuracy']:.4f}" in capsys.readouterr().out


def test_mcq_command_scores_a_fine_tuned_checkpoint(cli, tiny_gpt2, tiny_qa_dir, mcq_file, tmp_path):
    """A CausalLM checkpoint loads (hparams and weights) and is what gets scored."""
    import lightning as L

    from ftl.data.qa import QADataModule
    from ftl.models.causal_lm import CausalLM

    dm = QADataModule(data_dir=str(tiny_qa_dir), tokenizer=str(tiny_gpt2), max_length=64, batch_size=16)
    trainer = L.Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(CausalLM(pretrained=str(tiny_gpt2), learning_rate=1e-2), datamodule=dm)
    ckpt = tmp_path / "tuned.ckpt"
    trainer.save_checkpoint(ckpt)
    cli("mcq", "--data_file", str(mcq_file), "--ckpt_path", str(ckpt), "--run_dir", str(tmp_path / "tuned"))
    cli("mcq", "--data_file", str(mcq_file), "--pretrained", str(tiny_gpt2), "--run_dir", str(tmp_path / "base"))

    def logprobs(run: str) -> list:
        lines = (tmp_path / run / "mcq_predictions.jsonl").read_text().splitlines()
        return [json.loads(line)["logprobs"] for line in lines]

    assert logprobs("tuned") != logprobs("base")  # the fine-tuned weights were scored, not the base model


def test_mcq_without_a_model_is_one_line_error(cli, mcq_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli("mcq", "--data_file", str(mcq_file), "--run_dir", str(tmp_path / "x"))
    assert exc.value.code == 2
    assert "ftl: error: no model" in capsys.readouterr().err
