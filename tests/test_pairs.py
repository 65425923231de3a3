"""Sentence pairs (issue 16): `data.text_pair_column` tokenizes two texts as the tokenizer's pair encoding, swapping
the columns changes the inputs, length grouping follows the pair's length, question-answer relevance pairs from
question/answer rows, and configs/qa_relevance.yaml end to end (records, predict and the export's pipeline with
{"text", "text_pair"} inputs)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.helpers import ROOT, tiny_qa_rows


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory, tiny_data_dir) -> Path:
    """train/val/test.csv with two texts per row (a note and a reversed-order summary) and a label."""
    folder = tmp_path_factory.mktemp("data") / "pairs"
    folder.mkdir()
    for split in ("train", "val", "test"):
        with open(tiny_data_dir / f"{split}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        with open(folder / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["note", "summary", "label"])
            for i, row in enumerate(rows):
                words = row["text"].split()
                writer.writerow([row["text"], " ".join(words[::-1][: 4 + i % 9]), row["label_name"]])
    return folder


def pair_data(pairs_dir: Path, tokenizer: Path, tmp_path: Path, first: str = "note", second: str = "summary",
              **kwargs):
    from ftl.data.classification import TextClassificationDataModule

    data = TextClassificationDataModule(data_dir=str(pairs_dir), tokenizer=str(tokenizer), text_column=first,
                                        text_pair_column=second, cache_dir=str(tmp_path / "cache"),
                                        **{"max_length": 64, "batch_size": 8, **kwargs})
    data.prepare_data()
    data.setup("fit")
    return data


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("truncation, max_length", [("longest_first", 64), ("longest_first", 24),
                                                    ("only_first", 24), ("only_second", 48)])
def test_a_pair_is_tokenized_exactly_as_the_tokenizers_pair_encoding(truncation, max_length, pairs_dir, tiny_bert,
                                                                      tmp_path):
    from transformers import AutoTokenizer

    data = pair_data(pairs_dir, tiny_bert, tmp_path, pair_truncation=truncation, max_length=max_length)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    rows = read(pairs_dir / "train.csv")
    expected = tokenizer([r["note"] for r in rows], [r["summary"] for r in rows], truncation=truncation,
                         max_length=max_length)
    tokenized = data.datasets["train"]
    assert tokenized["input_ids"] == expected["input_ids"]
    assert tokenized["token_type_ids"] == expected["token_type_ids"]
    assert tokenized["attention_mask"] == expected["attention_mask"]
    assert any(1 in types for types in tokenized["token_type_ids"])  # the second text is segment 1
    if max_length < 64:  # truncation cut something, as the strategy says
        assert max(len(ids) for ids in tokenized["input_ids"]) == max_length


def test_a_pair_that_cannot_be_cut_as_asked_is_one_line(pairs_dir, tiny_bert, tmp_path):
    from ftl.errors import FTLError

    with pytest.raises(FTLError, match="pair_truncation only_second cannot cut some pair to max_length 24: .* "
                                       "set --data.pair_truncation longest_first"):
        pair_data(pairs_dir, tiny_bert, tmp_path, pair_truncation="only_second", max_length=24)


def test_swapping_the_two_columns_changes_the_inputs(pairs_dir, tiny_bert, tmp_path):
    from transformers import AutoTokenizer

    forward = pair_data(pairs_dir, tiny_bert, tmp_path / "a").datasets["train"]
    swapped = pair_data(pairs_dir, tiny_bert, tmp_path / "b", first="summary", second="note").datasets["train"]
    assert forward["labels"] == swapped["labels"]
    changed = [a != b for a, b in zip(forward["input_ids"], swapped["input_ids"], strict=True)]
    assert all(changed)
    # the same tokens in the other order, each text in its own segment
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    row = read(pairs_dir / "train.csv")[0]
    expected = tokenizer(row["summary"], row["note"], truncation=True, max_length=64)["input_ids"]
    assert swapped["input_ids"][0] == expected
    assert forward["token_type_ids"][0] != swapped["token_type_ids"][0]


def test_length_grouping_and_padding_follow_the_pairs_length(pairs_dir, tiny_bert, tmp_path):
    from transformers import AutoTokenizer

    from ftl.data.sampling import sequence_lengths

    data = pair_data(pairs_dir, tiny_bert, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    rows = read(pairs_dir / "train.csv")
    pair_lengths = [len(tokenizer(r["note"], r["summary"], truncation=True, max_length=64)["input_ids"]) for r in rows]
    first_lengths = [len(tokenizer(r["note"], truncation=True, max_length=64)["input_ids"]) for r in rows]
    assert sequence_lengths(data.datasets["train"]) == pair_lengths
    assert all(p > f for p, f in zip(pair_lengths, first_lengths, strict=True))
    for batch in data.train_dataloader():  # padded to the longest pair of the batch, never to max_length
        longest = max(pair_lengths[i] for i in batch["row_idx"].tolist())
        assert batch["input_ids"].shape[1] == longest
        assert batch["token_type_ids"].shape == batch["input_ids"].shape
    # records and predictions carry both texts
    assert data.input_columns() == ["note", "summary"]
    assert data.row_inputs("test")[0] == {k: read(pairs_dir / "test.csv")[0][k] for k in ("note", "summary")}


def test_a_missing_pair_column_is_one_line(pairs_dir, tiny_bert, tmp_path):
    from ftl.errors import FTLError

    with pytest.raises(FTLError, match="text pair column 'answer' not in the train split .*data.text_pair_column"):
        pair_data(pairs_dir, tiny_bert, tmp_path, second="answer")


# ---------------------------------------------------------------------------------------------- relevance pairs
def test_relevance_pairs_give_each_question_its_answer_and_another_seeded():
    from ftl.data.pairs import relevance_pairs

    rows = tiny_qa_rows()
    questions, answers = [r["question"] for r in rows], [r["answer"] for r in rows]
    pairs = relevance_pairs(questions, answers, seed="42-train")
    assert len(pairs) == 2 * len(rows)
    own = dict(zip(questions, answers, strict=True))
    for i, question in enumerate(questions):
        (q1, a1, y1), (q2, a2, y2) = pairs[2 * i], pairs[2 * i + 1]
        assert (q1, a1, y1) == (question, own[question], 1)
        assert q2 == question and y2 == 0 and a2 != own[question] and a2 in answers  # another question's answer
    assert pairs == relevance_pairs(questions, answers, seed="42-train")
    assert pairs != relevance_pairs(questions, answers, seed="43-train")
    qtypes = [r["qtype"] for r in rows]
    by_type = relevance_pairs(questions, answers, seed="42-train", groups=qtypes)
    answer_type = {a: t for a, t in zip(answers, qtypes, strict=True)}
    assert all(answer_type[a] == qtypes[i // 2] for i, (_, a, y) in enumerate(by_type) if y == 0)


def test_relevance_data_is_split_by_question_before_pairing(tmp_path, tiny_bert):
    """One file: val/test are carved out by question, and every negative answer comes from the same split."""
    from ftl.data.pairs import QARelevanceDataModule

    rows = tiny_qa_rows()
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps({"Question": r["question"], "Answer": r["answer"]}) + "\n"
                                               for r in rows))
    data = QARelevanceDataModule(data_files=str(tmp_path / "qa.jsonl"), tokenizer=str(tiny_bert),
                                 val_fraction=0.25, test_fraction=0.25, cache_dir=str(tmp_path / "cache"))
    assert data.label_names == ["irrelevant", "relevant"]
    questions = {}
    for split, ds in data.raw.items():
        labels = list(ds["labels"])
        assert labels.count(1) == labels.count(0) == len(ds) // 2
        questions[split] = set(ds["question"])
        answers_here = {a for a, y in zip(ds["answer"], ds["labels"], strict=True) if y == 1}
        assert {a for a, y in zip(ds["answer"], ds["labels"], strict=True) if y == 0} <= answers_here
    assert not (questions["train"] & questions["test"]) and not (questions["val"] & questions["test"])
    assert sum(len(ds) for ds in data.raw.values()) == 2 * len(rows)


def test_qa_relevance_config_fits_and_shows_both_texts_in_records_predict_and_pipeline(tmp_path, tiny_bert,
                                                                                     tiny_qa_dir, cli):
    from transformers import pipeline

    run = tmp_path / "run"
    common = ["--config", str(ROOT / "configs" / "qa_relevance.yaml"), "--model.pretrained", str(tiny_bert),
              "--data.data_dir", str(tiny_qa_dir), "--data.dataset", "null", "--data.max_length", "64",
              "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    cli("fit", *common, "--trainer.max_epochs", "1", "--ci_resamples", "200", "--run_dir", str(run))
    test = [json.loads(line) for line in (tiny_qa_dir / "test.jsonl").read_text().splitlines()]
    records = read(run / "test_predictions.csv")
    assert len(records) == 2 * len(test)
    assert list(records[0])[:4] == ["question", "answer", "label", "predicted_label"]
    assert [r["question"] for r in records[::2]] == [t["question"] for t in test]
    assert [r["answer"] for r in records[::2]] == [t["answer"] for t in test]  # each question's own answer first
    assert {r["label"] for r in records} == {"irrelevant", "relevant"}
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("accuracy", "f1_macro"):
        assert metrics[f"test/{key}_ci_low"] <= metrics[f"test/{key}"] <= metrics[f"test/{key}_ci_high"]

    inputs = tmp_path / "pairs.csv"
    with open(inputs, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "answer"])
        writer.writerows([[r["question"], r["answer"]] for r in records[:6]])
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    cli("predict", *common, "--ckpt_path", str(best), "--data.predict_file", str(inputs), "--run_dir",
        str(tmp_path / "p"))
    predicted = read(tmp_path / "p" / "predictions.csv")
    assert [(r["question"], r["answer"]) for r in predicted] == [(r["question"], r["answer"]) for r in records[:6]]
    for row, record in zip(predicted, records, strict=False):
        assert float(row["prob_relevant"]) == pytest.approx(float(record["prob_relevant"]), abs=1e-5)
    classify = pipeline("text-classification", model=str(run / "hf_model"), device="cpu", truncation=True, top_k=None)
    answers = classify([{"text": r["question"], "text_pair": r["answer"]} for r in predicted])
    for scores, row in zip(answers, predicted, strict=True):
        by_label = {s["label"]: s["score"] for s in scores}
        assert set(by_label) == {"irrelevant", "relevant"}
        assert by_label["relevant"] == pytest.approx(float(row["prob_relevant"]), abs=1e-5)
