"""SFT data shapes and prompt formats: loss on completion/assistant tokens only, chat prompts identical at training
and generation, end-of-turn stops, max_new_tokens from the data, repeatable greedy test metrics."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from ftl.data.prompts import IGNORE_INDEX, chat_segments, end_of_turn_ids
from ftl.data.qa import QADataModule
from ftl.errors import FTLError
from ftl.models.causal_lm import CausalLM, generated_tokens, token_loss_sum
from tests.helpers import tiny_qa_rows


def write_splits(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, part in {"train": rows[:32], "val": rows[32:40], "test": rows[40:]}.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return folder


@pytest.fixture(scope="module")
def prompt_completion_dir(tmp_path_factory) -> Path:
    rows = [{"instruction": f"Patient asks: {r['question']}", "output": r["answer"]} for r in tiny_qa_rows()]
    return write_splits(tmp_path_factory.mktemp("pc"), rows)


@pytest.fixture(scope="module")
def messages_dir(tmp_path_factory) -> Path:
    """Two-turn conversations: the first answer is a short acknowledgement, the second the real answer."""
    rows = [{"conversation": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": f"Hello, ask about {r['qtype']}."},
        {"role": "user", "content": r["question"]},
        {"role": "assistant", "content": r["answer"]},
    ]} for r in tiny_qa_rows()]
    return write_splits(tmp_path_factory.mktemp("messages"), rows)


def make_dm(tokenizer: Path, data_dir: Path, **kwargs) -> QADataModule:
    kwargs.setdefault("max_length", 128)
    kwargs.setdefault("batch_size", 4)
    dm = QADataModule(data_dir=str(data_dir), tokenizer=str(tokenizer), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def labelled_spans(row: dict) -> list[list[int]]:
    """The runs of consecutive labelled positions of a tokenized row, as token ids."""
    spans, current = [], []
    for token, label in zip(row["input_ids"], row["labels"], strict=True):
        if label == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            assert label == token  # a label is always the token at its own position
            current.append(token)
    return spans + ([current] if current else [])


# ---------------------------------------------------------------- which tokens carry loss, per format
def test_chat_question_answer_labels_the_answer_and_end_of_turn_only(tiny_chat_llama, tiny_qa_dir):
    dm = make_dm(tiny_chat_llama, tiny_qa_dir)
    assert dm.format == "chat"  # auto: the tokenizer has a chat template
    tok, row, raw = dm.tokenizer, dm.datasets["train"][0], dm.raw["train"][0]
    (span,) = labelled_spans(row)
    assert tok.decode(span) == raw["answer"] + "<|im_end|>\n"
    assert row["prompt_length"] == len(row["input_ids"]) - len(span)


def test_template_format_is_used_when_asked_even_with_a_chat_template(tiny_chat_llama, tiny_qa_dir):
    dm = make_dm(tiny_chat_llama, tiny_qa_dir, prompt_format="template")
    tok, row, raw = dm.tokenizer, dm.datasets["train"][0], dm.raw["train"][0]
    assert tok.decode(row["input_ids"][: row["prompt_length"]]) == f"Question: {raw['question']}\nAnswer:"
    (span,) = labelled_spans(row)
    assert tok.decode(span) == " " + raw["answer"] + tok.eos_token


def test_prompt_completion_columns_of_any_name(tiny_chat_llama, tiny_gpt2, prompt_completion_dir):
    raw_row = json.loads((prompt_completion_dir / "train.jsonl").read_text().splitlines()[0])
    chat = make_dm(tiny_chat_llama, prompt_completion_dir, prompt_column="instruction", completion_column="output")
    row = chat.datasets["train"][0]
    expected = chat.tokenizer.apply_chat_template([{"role": "user", "content": raw_row["instruction"]}],
                                                  add_generation_prompt=True, tokenize=False)
    assert chat.tokenizer.decode(row["input_ids"][: row["prompt_length"]]) == expected
    assert chat.tokenizer.decode(labelled_spans(row)[0]) == raw_row["output"] + "<|im_end|>\n"
    # a model without a chat template: the prompt is used as given (no question template around it)
    plain = make_dm(tiny_gpt2, prompt_completion_dir, prompt_column="instruction", completion_column="output")
    row = plain.datasets["train"][0]
    assert plain.tokenizer.decode(row["input_ids"][: row["prompt_length"]]) == raw_row["instruction"]
    # (prompt and completion are joined as given, as TRL joins them: no space added)
    assert plain.tokenizer.decode(labelled_spans(row)[0]) == raw_row["output"] + plain.tokenizer.eos_token


@pytest.mark.parametrize("turns", ["all", "last"])
def test_conversations_label_assistant_turns_only(tiny_chat_llama, messages_dir, turns):
    dm = make_dm(tiny_chat_llama, messages_dir, messages_column="conversation", assistant_turns=turns)
    tok = dm.tokenizer
    conversation = dm.raw["train"][0]["conversation"]
    spans = [tok.decode(s) for s in labelled_spans(dm.datasets["train"][0])]
    assistant = [m["content"] + "<|im_end|>\n" for m in conversation if m["role"] == "assistant"]
    assert spans == (assistant if turns == "all" else assistant[-1:])
    # the prompt for generation is the conversation before its last answer, with the generation prompt
    row = dm.datasets["train"][0]
    expected = tok.apply_chat_template(conversation[:-1], add_generation_prompt=True, tokenize=False)
    assert tok.decode(row["input_ids"][: row["prompt_length"]]) == expected
    assert dm.row_references("test")[0] == dm.raw["test"][0]["conversation"][-1]["content"]
    assert dm.row_inputs("test")[0]["conversation"] == dm.raw["test"][0]["conversation"][:-1]


@pytest.mark.parametrize("shape", ["template", "chat", "prompt_completion", "messages"])
def test_loss_does_not_move_when_prompt_positions_change(shape, tiny_chat_llama, tiny_qa_dir,
                                                         prompt_completion_dir, messages_dir):
    """Whatever the model predicts at prompt (and padding) positions, and whatever labels would say there, the
    loss is the same: only completion/assistant tokens are scored."""
    options = {"template": (tiny_qa_dir, {"prompt_format": "template"}),
               "chat": (tiny_qa_dir, {}),
               "prompt_completion": (prompt_completion_dir, {"prompt_column": "instruction",
                                                             "completion_column": "output"}),
               "messages": (messages_dir, {"messages_column": "conversation", "assistant_turns": "last"})}
    data_dir, kwargs = options[shape]
    dm = make_dm(tiny_chat_llama, data_dir, **kwargs)
    batch = dm.collate([dm.datasets["train"][i] for i in range(4)])
    lm = CausalLM(pretrained=str(tiny_chat_llama)).eval()
    with torch.no_grad():
        logits = lm(batch)
    base, count = token_loss_sum(logits, batch["labels"])
    prompt = [int(dm.datasets["train"][i]["prompt_length"]) for i in range(4)]
    noisy, relabelled = logits.clone(), batch["labels"].clone()
    for i, p in enumerate(prompt):
        noisy[i, : p - 1] = torch.randn_like(noisy[i, : p - 1]) * 10  # predictions of prompt tokens
        noisy[i, int(batch["attention_mask"][i].sum()):] = 7.0  # predictions after the row's end (padding)
        relabelled[i, :p] = IGNORE_INDEX  # a prompt token's label changed (to unscored: -100 already)
    assert torch.equal(token_loss_sum(noisy, relabelled)[0], base)
    assert int(count) == sum(len(dm.datasets["train"][i]["input_ids"]) - p for i, p in enumerate(prompt))
    scored = batch["labels"].clone()
    scored[0, 1] = batch["input_ids"][0, 1]  # score one prompt token after all: now the loss moves
    assert token_loss_sum(logits, scored)[0] > base


# ---------------------------------------------------------------- chat prompts: training == generation
def test_chat_prompt_tokens_at_training_equal_those_at_generation(tiny_chat_llama, tiny_qa_dir, tmp_path):
    dm = make_dm(tiny_chat_llama, tiny_qa_dir, system_prompt="Answer as a nurse.")
    tok = dm.tokenizer
    raw = dm.raw["test"]
    questions = [raw[i]["question"] for i in range(len(raw))]
    (tmp_path / "ask.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))
    predict = QADataModule(data_dir=str(tiny_qa_dir), tokenizer=str(tiny_chat_llama), max_length=128,
                           system_prompt="Answer as a nurse.", predict_file=str(tmp_path / "ask.jsonl"))
    predict.setup("predict")
    for i, question in enumerate(questions):
        row = dm.datasets["test"][i]
        trained = row["input_ids"][: row["prompt_length"]]
        messages = [{"role": "system", "content": "Answer as a nurse."}, {"role": "user", "content": question}]
        by_template = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        by_template = list(by_template["input_ids"] if hasattr(by_template, "keys") else by_template)
        assert trained == by_template
        assert predict.datasets["predict"][i]["input_ids"] == trained
    # and the left-padded generation prompts of a test batch are those same tokens
    batch = dm.collate([dm.datasets["test"][i] for i in range(3)])
    for i in range(3):
        mask = batch["prompt_attention_mask"][i].bool()
        row = dm.datasets["test"][i]
        assert batch["prompt_input_ids"][i][mask].tolist() == row["input_ids"][: row["prompt_length"]]


def test_end_of_turn_ends_generation(tiny_chat_llama, tiny_gpt2):
    from transformers import AutoTokenizer

    chat = AutoTokenizer.from_pretrained(tiny_chat_llama)
    assert end_of_turn_ids(chat) == [chat.eos_token_id, chat.convert_tokens_to_ids("<|im_end|>")]
    plain = AutoTokenizer.from_pretrained(tiny_gpt2)
    assert end_of_turn_ids(plain) == [plain.eos_token_id]
    stop = chat.convert_tokens_to_ids("<|im_end|>")
    new = torch.tensor([[5, 6, stop, 0, 0], [5, 6, 7, 8, 9], [stop, 1, 1, 1, 1]])
    assert generated_tokens(new, [chat.eos_token_id, stop]) == 3 + 5 + 1


def test_template_that_rewrites_earlier_turns_is_refused(tiny_chat_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_chat_llama)
    # a template that prints the number of messages first: no rendering is a prefix of a longer one
    tok.chat_template = "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(FTLError, match="chat template renders a conversation differently"):
        chat_segments(tok, messages)


def test_bad_settings_fail_in_one_line(tiny_gpt2, tiny_qa_dir, messages_dir):
    with pytest.raises(FTLError, match="prompt_format must be one of"):
        QADataModule(data_dir=str(tiny_qa_dir), tokenizer=str(tiny_gpt2), prompt_format="chatml")
    with pytest.raises(FTLError, match="set both data.prompt_column and data.completion_column"):
        QADataModule(data_dir=str(tiny_qa_dir), tokenizer=str(tiny_gpt2), prompt_column="q")
    with pytest.raises(FTLError, match="has no chat template"):
        make_dm(tiny_gpt2, tiny_qa_dir, prompt_format="chat")
    with pytest.raises(FTLError, match="messages_column needs a chat template"):
        make_dm(tiny_gpt2, messages_dir, messages_column="conversation")


# ---------------------------------------------------------------- evaluation: repeatable, not cut short
def test_max_new_tokens_defaults_to_the_longest_training_completion(tiny_chat_llama, tiny_qa_dir):
    dm = make_dm(tiny_chat_llama, tiny_qa_dir)
    train = dm.datasets["train"]
    longest = max(len(r["input_ids"]) - r["prompt_length"] for r in train)
    lm = CausalLM(pretrained=str(tiny_chat_llama))
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, max_steps=0)
    trainer.strategy.connect(lm)
    trainer.datamodule = dm  # what fit/test attach
    lm.trainer = trainer
    lm.setup("test")
    assert lm.max_new_tokens == longest
    assert CausalLM(pretrained=str(tiny_chat_llama), max_new_tokens=5).max_new_tokens == 5
    # the model stops at EOS and at the template's end of turn
    assert set(lm.model.generation_config.eos_token_id) >= set(dm.stop_token_ids)


def test_greedy_test_metrics_repeat_exactly(tiny_chat_llama, tiny_qa_dir, tmp_path):
    results = []
    for attempt in range(2):
        dm = make_dm(tiny_chat_llama, tiny_qa_dir, eval_batch_size=3)
        lm = CausalLM(pretrained=str(tiny_chat_llama), max_new_tokens=8)
        assert not lm._sampling  # greedy is the default
        trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=str(tmp_path / str(attempt)))
        torch.manual_seed(attempt)  # the global generator differs between the two runs; greedy ignores it
        (metrics,) = trainer.test(lm, datamodule=dm, verbose=False)
        results.append({k: v for k, v in metrics.items() if "per_sec" not in k})
    assert results[0] == results[1]
    assert {"test/rougeL", "test/gen_tokens"} <= set(results[0]) and results[0]["test/gen_tokens"] > 0


def test_epoch_token_weighting_makes_the_mean_step_loss_the_token_mean(tiny_chat_llama, tiny_qa_dir):
    """`model.loss_tokens epoch`: each step's summed answer-token loss over the epoch's mean answer tokens per
    batch, so the mean of an epoch's step losses is the token mean over the epoch, whatever the batch sizes in
    tokens (the per-batch mean differs from it when batches hold answers of different lengths)."""
    from ftl.models.causal_lm import scored_tokens_per_batch

    dm = make_dm(tiny_chat_llama, tiny_qa_dir, batch_size=5)  # 32 rows: 6 batches of 5, one of 2
    batches = [dm.collate(list(dm.datasets["train"].select(range(i, min(i + 5, 32))))) for i in range(0, 32, 5)]
    module = CausalLM(pretrained=str(tiny_chat_llama)).eval()  # loss_tokens "epoch" is the default
    per_batch = scored_tokens_per_batch(dm)
    counts = [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches]
    assert per_batch == pytest.approx(sum(counts) / len(batches))  # labels counted in Arrow, as the loss counts them
    module._tokens_per_batch = per_batch
    with torch.no_grad():
        steps = [float(module.training_step(b, i)) for i, b in enumerate(batches)]
        sums = [token_loss_sum(module(b), b["labels"]) for b in batches]
    token_mean = sum(float(t) for t, _ in sums) / sum(int(c) for _, c in sums)
    assert sum(steps) / len(steps) == pytest.approx(token_mean, rel=1e-5)
    last_total, last_mean = float(sums[-1][0]), float(sums[-1][0]) / int(sums[-1][1])
    assert steps[-1] == pytest.approx(last_total / per_batch, rel=1e-5)
    assert steps[-1] < 0.6 * last_mean  # the 2-row batch holds well under the mean tokens: it weighs less
    with pytest.raises(FTLError, match="loss_tokens"):
        CausalLM(pretrained=str(tiny_chat_llama), loss_tokens="row")
