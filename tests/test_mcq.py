"""Multiple-choice evaluation: choice log-likelihoods, accuracy, answer formats, the `ftl mcq` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ftl.commands.mcq import evaluate, load_items, mmlu_prompt
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


def _by_hand(model, tok, context: str, continuation: str) -> float:
    """A plain forward pass over context + continuation (the harness's split: whole string encoded, cut after
    the context's tokens), summing log-softmax at the positions that predict the continuation's tokens."""
    context_ids = tok(context)["input_ids"]
    ids = tok(context + continuation)["input_ids"]
    continuation_ids = ids[len(context_ids):]
    assert ids[: len(context_ids)] == context_ids and tok.decode(continuation_ids) == continuation
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    return sum(logp[len(context_ids) - 1 + k, t].item() for k, t in enumerate(continuation_ids))


def _mmlu_context(item: dict, subject: str) -> str:
    """lm-evaluation-harness's MMLU prompt, written out: description, question, A./B./..., "Answer:"."""
    letters = "ABCDEFGH"
    return (f"The following are multiple choice questions (with answers) about {subject}.\n\n"
            + item["question"].strip() + "\n"
            + "".join(f"{letters[j]}. {c}\n" for j, c in enumerate(item["choices"])) + "Answer:")


@pytest.mark.parametrize("prompt_format", ["qa", "mmlu"])
def test_mcq_equals_a_hand_computed_log_likelihood(model_and_tokenizer, mcq_file, prompt_format):
    """Batched, padded, shared-forward scoring equals scoring every (context, continuation) alone by hand:
    qa scores " <choice>" after "Question: ...\nAnswer:", mmlu scores " A", " B", ... after MMLU's prompt."""
    model, tok = model_and_tokenizer
    items = [dict(item, subject="clinical_knowledge") for item in load_items(mcq_file)]
    metrics, records = evaluate(model, tok, items, batch_size=3, prompt_format=prompt_format)
    for item, record in zip(items, records, strict=True):
        for j, choice in enumerate(item["choices"]):
            if prompt_format == "qa":
                by_hand = _by_hand(model, tok, f"Question: {item['question']}\nAnswer:", " " + choice)
            else:
                by_hand = _by_hand(model, tok, _mmlu_context(item, "clinical knowledge"), " " + "ABCD"[j])
            assert record["logprobs"][j] == pytest.approx(by_hand, abs=1e-4)
        best = max(range(len(item["choices"])), key=lambda j: record["logprobs"][j])
        assert record["predicted"] == best
    assert metrics["accuracy"] == pytest.approx(sum(r["predicted"] == r["answer"] for r in records) / 5)
    assert metrics["n"] == 5 and metrics["chance"] == pytest.approx((1 / 3 + 1 / 4 + 1 / 2 + 1 / 2 + 1 / 3) / 5)
    if prompt_format == "mmlu":  # every continuation is one letter long: acc_norm is acc
        assert metrics["accuracy_norm"] == metrics["accuracy"]


def test_acc_and_acc_norm_follow_the_harness_definitions(model_and_tokenizer):
    """acc: arg-max of summed log-likelihoods; acc_norm: of log-likelihood / len(choice) in characters (no
    leading space); ties go to the first choice (numpy's argmax)."""
    model, tok = model_and_tokenizer
    long = "the lungs and the liver and the skin of older adults with asthma"
    items = [
        {"question": "Which organ does asthma affect?", "choices": ["a", long], "answer": 1},
        {"question": "What is a symptom of influenza?", "choices": ["fever", "fever"], "answer": 1},
    ]
    metrics, records = evaluate(model, tok, items)
    short_ll, long_ll = records[0]["logprobs"]
    # summed, the 1-character choice wins; per character, the long one does: the two metrics disagree
    assert short_ll > long_ll and long_ll / len(long) > short_ll / 1
    assert (records[0]["predicted"], records[0]["predicted_norm"]) == (0, 1)
    assert records[1]["logprobs"][0] == records[1]["logprobs"][1]
    assert (records[1]["predicted"], records[1]["predicted_norm"]) == (0, 0)  # tie: the first
    assert metrics["accuracy"] == 0.0 and metrics["accuracy_norm"] == 0.5


def test_mmlu_jsonl_export_is_read_as_it_is(model_and_tokenizer, tmp_path):
    """`datasets.load_dataset("cais/mmlu", subset)["test"].to_json(...)`: question, subject, choices, answer
    (a ClassLabel int); subjects concatenated into one file get their own scores."""
    from datasets import ClassLabel, Dataset, Features, Sequence, Value

    features = Features({"question": Value("string"), "subject": Value("string"),
                         "choices": Sequence(Value("string")), "answer": ClassLabel(names=["A", "B", "C", "D"])})
    rows = {"question": ["Which vitamin deficiency causes scurvy?", "Which organ makes insulin?",
                         "What is the most common cause of anemia?"],
            "subject": ["clinical_knowledge", "anatomy", "anatomy"],
            "choices": [["A", "B12", "C", "D"], ["liver", "pancreas", "kidney", "spleen"],
                        ["iron deficiency", "blood loss", "sunlight", "fever"]],
            "answer": [2, 1, 0]}
    path = tmp_path / "mmlu_medical.jsonl"
    Dataset.from_dict(rows, features=features).to_json(str(path))
    items = load_items(path)
    assert [item["answer"] for item in items] == [2, 1, 0]
    assert [item["subject"] for item in items] == rows["subject"]
    assert mmlu_prompt(items[1]) == ("The following are multiple choice questions (with answers) about anatomy."
                                     "\n\nWhich organ makes insulin?\nA. liver\nB. pancreas\nC. kidney\n"
                                     "D. spleen\nAnswer:")
    assert mmlu_prompt(items[0]).startswith("The following are multiple choice questions (with answers) about "
                                            "clinical knowledge.\n\n")
    model, tok = model_and_tokenizer
    metrics, records = evaluate(model, tok, items, prompt_format="mmlu")
    assert metrics["n"] == 3 and metrics["n/anatomy"] == 2 and metrics["n/clinical_knowledge"] == 1
    anatomy = [r["predicted"] == r["answer"] for r in records if r["subject"] == "anatomy"]
    assert metrics["accuracy/anatomy"] == sum(anatomy) / 2


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


def test_mcq_command_mmlu_format(cli, tiny_gpt2, mcq_file, tmp_path, capsys):
    run_dir = tmp_path / "mmlu"
    cli("mcq", "--data_file", str(mcq_file), "--pretrained", str(tiny_gpt2), "--run_dir", str(run_dir),
        "--prompt_format", "mmlu")
    metrics = json.loads((run_dir / "mcq.json").read_text())
    assert metrics["mcq/accuracy_norm"] == metrics["mcq/accuracy"]  # one-letter continuations
    with pytest.raises(SystemExit) as exc:
        cli("mcq", "--data_file", str(mcq_file), "--pretrained", str(tiny_gpt2), "--prompt_format", "hellaswag")
    assert exc.value.code == 2 and "prompt_format" in capsys.readouterr().err


def test_mcq_without_a_model_is_one_line_error(cli, mcq_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli("mcq", "--data_file", str(mcq_file), "--run_dir", str(tmp_path / "x"))
    assert exc.value.code == 2
    assert "ftl: error: no model" in capsys.readouterr().err
