"""QA data for causal LMs: answer-only labels, EOS, truncation, two-sided padding, splits by question."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftl.data.qa import IGNORE_INDEX, MedQuADDataModule, QADataModule, encode_qa, fill_template
from ftl.errors import FTLError


def make_dm(data_dir: Path, tokenizer: Path, **kwargs) -> QADataModule:
    kwargs.setdefault("max_length", 64)
    kwargs.setdefault("batch_size", 4)
    return QADataModule(data_dir=str(data_dir), tokenizer=str(tokenizer), **kwargs)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def dm(tiny_qa_dir, tiny_gpt2):
    module = make_dm(tiny_qa_dir, tiny_gpt2)
    module.prepare_data()
    module.setup("fit")
    return module


def test_labels_cover_the_answer_and_eos_only(dm):
    tok = dm.tokenizer
    row = dm.datasets["train"][0]
    question = dm.raw["train"][0]["question"]
    answer = dm.raw["train"][0]["answer"]
    n = row["prompt_length"]
    ids, labels = row["input_ids"], row["labels"]
    assert labels[:n] == [IGNORE_INDEX] * n  # the prompt carries no loss
    assert labels[n:] == ids[n:]  # every answer token does, EOS included
    assert ids[-1] == tok.eos_token_id and labels[-1] == tok.eos_token_id
    assert tok.decode(ids[:n]) == f"Question: {question}\nAnswer:"
    # the template's trailing space is tokenized with the answer, as in ordinary text
    assert tok.decode(ids[n:-1]) == " " + answer
    assert row["attention_mask"] == [1] * len(ids)


def test_no_pad_token_becomes_eos_and_generation_padding_is_left(dm, tiny_gpt2):
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tiny_gpt2).pad_token is None  # the fixture really lacks one
    tok = dm.tokenizer
    assert tok.pad_token == tok.eos_token and tok.padding_side == "left"


def test_saved_tokenizer_round_trips_the_pad_setup(dm, tmp_path):
    from transformers import AutoTokenizer

    dm.tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.pad_token == dm.tokenizer.eos_token and again.pad_token_id == dm.tokenizer.eos_token_id
    assert again.padding_side == "left"


@pytest.mark.parametrize("pad_to_multiple_of", [None, 8])
def test_collate_pads_right_for_training_and_left_for_generation(tiny_qa_dir, tiny_gpt2, pad_to_multiple_of):
    import torch

    dm = make_dm(tiny_qa_dir, tiny_gpt2, pad_to_multiple_of=pad_to_multiple_of)
    dm.prepare_data()
    dm.setup("fit")
    multiple = pad_to_multiple_of or (8 if torch.cuda.is_available() else 1)
    tok = dm.tokenizer
    features = [dm.datasets["train"][i] for i in range(4)]
    lengths = [len(f["input_ids"]) for f in features]
    assert len(set(lengths)) > 1, "need rows of different lengths"
    batch = dm.collate(features)
    width = batch["input_ids"].shape[1]
    assert width % multiple == 0 and max(lengths) <= width < max(lengths) + multiple
    for i, f in enumerate(features):
        n, p = lengths[i], f["prompt_length"]
        assert batch["input_ids"][i, :n].tolist() == f["input_ids"]
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)
        assert batch["labels"][i, :n].tolist() == f["labels"]
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()  # padding carries no loss
        assert (batch["input_ids"][i, n:] == tok.pad_token_id).all()
        prompt_width = batch["prompt_input_ids"].shape[1]
        longest_prompt = max(f["prompt_length"] for f in features)
        assert prompt_width % multiple == 0 and longest_prompt <= prompt_width < longest_prompt + multiple
        assert batch["prompt_input_ids"][i, prompt_width - p:].tolist() == f["input_ids"][:p]
        assert batch["prompt_attention_mask"][i].tolist() == [0] * (prompt_width - p) + [1] * p
    assert "row_idx" not in batch  # collate never sees it: the base adds each row's position to loader batches
    assert dm.batch_of(features)["row_idx"].tolist() == [f["row_idx"] for f in features]


def test_the_real_eos_keeps_its_label_although_pad_is_eos(dm):
    """Masking padding by id would also mask the answer's EOS when pad == eos; it must be by position."""
    features = [dm.datasets["train"][i] for i in range(4)]
    batch = dm.collate(features)
    eos = dm.tokenizer.eos_token_id
    for i, f in enumerate(features):
        last = len(f["input_ids"]) - 1
        assert batch["labels"][i, last] == eos


def test_truncation_keeps_max_length_and_drops_eos_of_a_cut_answer(tiny_gpt2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    prompt = fill_template("Question: {question}\nAnswer: ", "What is asthma?")
    long_answer = "Asthma is a common condition that a doctor can diagnose. " * 10
    out = encode_qa(tok, [prompt, prompt], [long_answer, "Rest."], max_length=24)
    cut, whole = out["input_ids"]
    assert len(cut) == 24 and cut[-1] != tok.eos_token_id and out["labels"][0][-1] == cut[-1]
    assert whole[-1] == tok.eos_token_id
    # an over-long prompt keeps its end (the "Answer:" cue) and half of max_length
    long_prompt = fill_template("Question: {question}\nAnswer: ", "What is asthma? " * 20)
    out = encode_qa(tok, [long_prompt], ["Rest."], max_length=24)
    assert out["prompt_length"] == [12]
    assert tok.decode(out["input_ids"][0][:12]).endswith("\nAnswer:")
    assert len(out["input_ids"][0]) <= 24


def test_prediction_rows_hold_only_the_prompt(tiny_qa_dir, tiny_gpt2, tmp_path):
    questions = tmp_path / "questions.txt"
    questions.write_text("What is gout?\n\nHow is asthma treated?\n")
    module = make_dm(tiny_qa_dir, tiny_gpt2, predict_file=str(questions))
    module.setup("predict")
    rows = module.datasets["predict"]
    assert "labels" not in rows.column_names and len(rows) == 2
    assert module.tokenizer.decode(rows[1]["input_ids"]) == "Question: How is asthma treated?\nAnswer:"
    assert rows[1]["prompt_length"] == len(rows[1]["input_ids"])
    batch = module.collate([rows[0], rows[1]])
    assert "labels" not in batch and batch["prompt_input_ids"].shape[0] == 2
    assert module.row_inputs("predict") == [{"question": "What is gout?"}, {"question": "How is asthma treated?"}]


def test_a_single_file_is_split_by_question(tmp_path, tiny_gpt2):
    rows = []
    for i in range(40):  # every question three times, with varying case and spacing
        for variant in (f"What is condition {i}?", f"what is  condition {i}?", f"WHAT IS CONDITION {i}? "):
            rows.append({"question": variant, "answer": f"Condition {i} is rare."})
    write_jsonl(tmp_path / "all" / "train.jsonl", rows)
    module = make_dm(tmp_path / "all", tiny_gpt2, val_fraction=0.2, test_fraction=0.2)
    normalised = {s: {" ".join(q.lower().split()) for q in module.raw[s]["question"]} for s in ("train", "val", "test")}
    assert not normalised["train"] & normalised["val"]
    assert not normalised["train"] & normalised["test"]
    assert not normalised["val"] & normalised["test"]
    assert sum(len(module.raw[s]) for s in ("train", "val", "test")) == 120
    assert len(normalised["val"]) == 8 and len(normalised["test"]) == 8  # 20% of 40 questions each


def test_max_samples_caps_train_and_max_eval_samples_caps_val_and_test(tiny_qa_dir, tiny_gpt2):
    module = make_dm(tiny_qa_dir, tiny_gpt2, max_samples=10, max_eval_samples=3)
    assert [len(module.raw[s]) for s in ("train", "val", "test")] == [10, 3, 3]
    module = make_dm(tiny_qa_dir, tiny_gpt2, max_samples=5)
    assert [len(module.raw[s]) for s in ("train", "val", "test")] == [5, 5, 5]


def test_hub_style_capitalised_columns_and_empty_rows(tmp_path, tiny_gpt2, capsys):
    rows = [{"qtype": "x", "Question": f"What is {w}?", "Answer": f"{w} is a word."} for w in "abcdefghij"]
    rows += [{"qtype": "x", "Question": "What is nothing?", "Answer": ""}, {"qtype": "x", "Question": None,
                                                                           "Answer": "orphan"}]
    write_jsonl(tmp_path / "hub" / "train.jsonl", rows)
    module = MedQuADDataModule(data_dir=str(tmp_path / "hub"), tokenizer=str(tiny_gpt2), max_length=64,
                               val_fraction=0.2, test_fraction=0.2)
    total = sum(len(ds) for ds in module.raw.values())
    assert total == 10 and "dropped 2 rows" in capsys.readouterr().out
    assert {"question", "answer"} <= set(module.raw["train"].column_names)


def test_errors_name_the_problem_and_the_fix(tmp_path, tiny_qa_dir, tiny_gpt2):
    with pytest.raises(FTLError, match="no {question} field"):
        make_dm(tiny_qa_dir, tiny_gpt2, prompt_template="Q: {q}\nA:")
    with pytest.raises(FTLError, match="answer column 'reply'.*data.answer_column"):
        make_dm(tiny_qa_dir, tiny_gpt2, answer_column="reply").raw  # noqa: B018
    with pytest.raises(FTLError, match="above the model's limit of 128"):
        make_dm(tiny_qa_dir, tiny_gpt2, max_length=256).tokenizer  # noqa: B018


def test_tokenization_cache_key_follows_the_template(tiny_qa_dir, tiny_gpt2):
    a = make_dm(tiny_qa_dir, tiny_gpt2)
    b = make_dm(tiny_qa_dir, tiny_gpt2, prompt_template="Patient asks: {question}\nDoctor: ")
    assert a._cache_key("train") != b._cache_key("train")
    b.setup("fit")
    row = b.datasets["train"][0]
    assert b.tokenizer.decode(row["input_ids"][: row["prompt_length"]]).startswith("Patient asks: ")
