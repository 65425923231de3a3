"""Supervised fine-tuning data for causal LMs: question/answer, prompt/completion or conversations; loss on answers.

Each row becomes `prompt tokens + answer tokens (+ EOS or the chat template's end of turn)`; `labels` copy the
answer tokens and mark every prompt (and, after batching, padding) token with -100, so the model is trained and
scored on answers only. Rows also keep `prompt_length`, so evaluation can generate from the prompt alone.
Chat-template encoding: `ftl.data.prompts`; packing: `ftl.data.packing`.
"""

from __future__ import annotations

from typing import Any

from ftl.data.prompts import (
    ASSISTANT_TURNS,
    IGNORE_INDEX,
    PROMPT_FORMATS,
    chat_segments,
    check_messages,
    encode_segments,
    end_of_turn_ids,
    resolve_prompt_format,
)
from ftl.data.sampling import sequence_lengths
from ftl.data.text import TextDataModule, column, column_error
from ftl.errors import FTLError

__all__ = ["IGNORE_INDEX", "MedQuADDataModule", "QADataModule", "encode_qa", "fill_template", "pad_batch"]
DEFAULT_TEMPLATE = "Question: {question}\nAnswer: "


def fill_template(template: str, question: str) -> str:
    """`template` with its `{question}` field filled (not str.format: questions and templates may hold braces)."""
    if "{question}" not in template:
        raise FTLError(f"prompt_template {template!r} has no {{question}} field: add one, e.g. {DEFAULT_TEMPLATE!r}")
    return template.replace("{question}", question)


def split_trailing_spaces(prompt: str) -> tuple[str, str]:
    """(prompt without trailing spaces, those spaces): the spaces are tokenized with the answer.

    BPE tokenizers (GPT-2, Llama, SmolLM) attach a space to the word after it ("ĠAsthma"), so a prompt
    ending in a lone space token would teach (and ask) the model to continue after a token it never sees
    there in ordinary text.
    """
    stripped = prompt.rstrip(" ")
    return stripped, prompt[len(stripped):]


def encode_qa(
    tokenizer: Any,
    prompts: list[str],
    answers: list[str] | None,
    max_length: int,
    add_eos: bool = True,
) -> dict[str, list]:
    """Token ids, attention mask, answer-only labels and prompt length for (rendered prompt, answer) pairs.

    Prompt and answer are tokenized separately, so the prompt tokens are exactly those the model sees when
    it generates from the prompt alone. Over-long prompts keep their last half of `max_length` tokens (the
    end holds the "Answer:" cue), leaving the other half for the answer; answers are cut to fit, and get
    EOS only when they fit whole (a cut answer must not teach the model to stop mid-sentence). Without
    `answers` (prediction) only prompts are encoded, truncated the same way, and no labels are made.
    """
    split = [split_trailing_spaces(p) for p in prompts]
    keep = max(1, max_length // 2)
    prompt_ids = [ids[-keep:] for ids in tokenizer([p for p, _ in split], add_special_tokens=True)["input_ids"]]
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "prompt_length": []}
    if answers is None:
        for ids in prompt_ids:
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["prompt_length"].append(len(ids))
        return out
    answer_ids = tokenizer([lead + a for (_, lead), a in zip(split, answers, strict=True)],
                           add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    out["labels"] = []
    for p_ids, a_ids in zip(prompt_ids, answer_ids, strict=True):
        room = max_length - len(p_ids)
        if add_eos and eos is not None and len(a_ids) < room:
            a_ids = a_ids + [eos]
        else:
            a_ids = a_ids[:room]
        out["input_ids"].append(p_ids + a_ids)
        out["attention_mask"].append([1] * (len(p_ids) + len(a_ids)))
        out["labels"].append([IGNORE_INDEX] * len(p_ids) + a_ids)
        out["prompt_length"].append(len(p_ids))
    return out


def pad_batch(sequences: list[list[int]], value: int, left: bool = False, multiple: int = 8):
    """A (batch, length) LongTensor padded with `value` on the right (or left) to a multiple of `multiple`."""
    import torch

    longest = max(len(s) for s in sequences)
    length = -(-longest // multiple) * multiple
    out = torch.full((len(sequences), length), value, dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            if left:
                out[i, length - len(seq):] = torch.tensor(seq, dtype=torch.long)
            else:
                out[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out


class QADataModule(TextDataModule):
    """Supervised fine-tuning data for causal LMs, in the three shapes SFT datasets come in, loss on the answer only.

    - question/answer columns (`question_column`, `answer_column`; the default),
    - prompt/completion columns (`prompt_column`, `completion_column`: any names; the prompt is used as given),
    - conversations (`messages_column`: a list of `{role, content}` per row; loss on assistant turns).

    Prompts use the tokenizer's chat template (`prompt_format: chat`, with an optional `system_prompt`) or a plain
    text template (`template`, `prompt_template`); `auto` picks chat when the tokenizer has a chat template. Rows
    keep `prompt_length`, so evaluation generates from exactly the prompt tokens training used.

    `max_samples` caps the train split and `max_eval_samples` (default: `max_samples`) caps val and test,
    so `max_samples=700, max_eval_samples=150` gives the reference 700/150/150 run. A split carved out of
    train keeps every copy of a question on one side (see `group_column`).
    """

    def __init__(
        self,
        *args: Any,
        question_column: str = "question",
        answer_column: str = "answer",
        prompt_column: str | None = None,
        completion_column: str | None = None,
        messages_column: str | None = None,
        prompt_format: str = "auto",
        prompt_template: str = DEFAULT_TEMPLATE,
        system_prompt: str | None = None,
        assistant_turns: str = "all",
        add_eos: bool = True,
        packing: bool = False,
        max_eval_samples: int | None = None,
        group_batches: int = 4,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            question_column: column of questions (filled into `prompt_template`, or the user turn in chat format).
            answer_column: column of reference answers (the completion).
            prompt_column: column of ready prompts (used as given), with `completion_column`; replaces question/answer.
            completion_column: column of completions for `prompt_column`.
            messages_column: column of conversations (lists of {role, content}); the last assistant turn is the
                answer evaluated; loss on the assistant turns chosen by `assistant_turns`.
            prompt_format: "chat" (the tokenizer's chat template with its generation prompt), "template"
                (`prompt_template`) or "auto" (chat when the tokenizer has a chat template, else template).
            prompt_template: text prompt with a {question} field, for the template format.
            system_prompt: system message put first in chat prompts (None: the template's own default, if any).
            assistant_turns: which assistant turns of a conversation carry loss: "all" or "last".
            add_eos: end each answer with EOS in the template format (chat completions end with the template's
                end-of-turn token).
            packing: pack training sequences best-fit into rows of `max_length` tokens, attention kept inside each
                sequence (`ftl.data.packing`); evaluation is never packed.
            max_eval_samples: rows kept in val and test (default: `max_samples`).
            group_batches: training rows are sorted by length within shuffled windows of this many batches
                (less padding). 4 here, not the classifiers' 64: windows that wide make batches of answers of one
                length, which on MedQuAD are largely answers of one kind, and the test loss paid for it; 4 keeps
                most of the speed (`docs/qa.md`, "Batches and loss weighting").
        """
        super().__init__(*args, group_batches=group_batches, **kwargs)
        self.question_column = question_column
        self.answer_column = answer_column
        self.prompt_column = prompt_column
        self.completion_column = completion_column
        self.messages_column = messages_column
        self.prompt_format = prompt_format
        self.prompt_template = prompt_template
        self.system_prompt = system_prompt
        self.assistant_turns = assistant_turns
        self.add_eos = add_eos
        self.packing = packing
        self.max_eval_samples = max_eval_samples
        self._longest_completion: int | None = None
        if prompt_format not in PROMPT_FORMATS:  # (resolved against the tokenizer when it is loaded)
            raise FTLError(f"data.prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
        if assistant_turns not in ASSISTANT_TURNS:
            raise FTLError(f"data.assistant_turns must be 'all' or 'last', got {assistant_turns!r}")
        if (prompt_column is None) != (completion_column is None):
            raise FTLError("set both data.prompt_column and data.completion_column (or neither)")
        if messages_column and prompt_column:
            raise FTLError("set data.messages_column or data.prompt_column/completion_column, not both")
        if prompt_format != "chat":
            fill_template(prompt_template, "")  # a template without {question} fails now, not after loading

    # ------------------------------------------------------------------ tokenizer
    @property
    def tokenizer(self):
        """The base tokenizer, with EOS as pad token when it has none (GPT-2, many decoders).

        Padding never reaches the loss (labels mark it -100 by position, not by id, so a real EOS at the end
        of an answer keeps its label) and attention masks hide it. `padding_side` is set to left, the side
        batched generation needs; it is saved with the tokenizer, so an exported model generates correctly.
        """
        tok = TextDataModule.tokenizer.fget(self)
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise FTLError(
                    f"tokenizer '{self.tokenizer_name}' has neither a pad nor an eos token: "
                    "use a causal-LM tokenizer (it needs an eos token)"
                )
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"
        tok.init_kwargs["padding_side"] = "left"  # save_pretrained writes init_kwargs, not the attribute
        return tok

    @property
    def format(self) -> str:
        """The prompt format in use: "chat" or "template" (`prompt_format` resolved against the tokenizer)."""
        fmt = resolve_prompt_format(self.tokenizer, self.prompt_format, self.tokenizer_name)
        if self.messages_column and fmt != "chat":
            raise FTLError(f"data.messages_column needs a chat template and tokenizer '{self.tokenizer_name}' has "
                           "none: use a chat model's tokenizer, or question/answer columns")
        return fmt

    @property
    def stop_token_ids(self) -> list[int]:
        """Tokens that end an answer: EOS, and in the chat format the template's end-of-turn token."""
        tok = self.tokenizer
        return end_of_turn_ids(tok) if self.format == "chat" else [tok.eos_token_id]

    def longest_completion(self) -> int | None:
        """The longest completion (tokens, end-of-turn included) among the training rows as encoded: answers
        generated up to this length are as long as any the model was trained to give (`max_new_tokens` auto)."""
        if self._longest_completion is None:
            split = "train" if "train" in self.raw else next(iter(self.raw), None)
            if split is None:
                return None
            ds = self.tokenize_split(split)
            lengths = sequence_lengths(ds)
            prompts = ds.data.column("prompt_length").to_pylist()
            self._longest_completion = max((n - p for n, p in zip(lengths, prompts, strict=True)), default=0)
        return self._longest_completion

    # ------------------------------------------------------------------ hooks
    def _columns(self) -> tuple[str, str | None]:
        """(input column, reference column) of the data's shape."""
        if self.messages_column:
            return self.messages_column, None
        if self.prompt_column:
            return self.prompt_column, self.completion_column
        return self.question_column, self.answer_column

    def required_columns(self) -> list[str]:
        return [c for c in self._columns() if c is not None]

    def input_columns(self) -> list[str]:
        return [self._columns()[0]]

    def reference_column(self) -> str | None:
        return self._columns()[1]  # generations.jsonl and ROUGE compare with the full answer, never truncated

    def group_column(self) -> str | None:
        return None if self.messages_column else self._columns()[0]

    def tokenization_settings(self) -> dict[str, Any]:
        # (the columns are in the cache key already: required_columns; the chat template is in the tokenizer's)
        fmt = self.format
        settings: dict[str, Any] = {"format": fmt, "add_eos": self.add_eos, "layout": 2}
        if fmt == "chat":
            settings.update(system_prompt=self.system_prompt, assistant_turns=self.assistant_turns,
                            chat_template=self.tokenizer.chat_template)
        elif not self.prompt_column:
            settings["prompt_template"] = self.prompt_template
        return settings

    def row_inputs(self, split: str) -> list[dict[str, Any]]:
        """Conversations without their final answer (what the model is asked); other shapes as given."""
        rows = super().row_inputs(split)
        if self.messages_column:
            for row in rows:
                turns = row[self.messages_column] or []
                row[self.messages_column] = turns[:-1] if turns and turns[-1]["role"] == "assistant" else turns
        return rows

    def row_references(self, split: str) -> list[Any] | None:
        """The reference answers; for conversations, the content of the last assistant turn."""
        if not self.messages_column:
            return super().row_references(split)
        turns = column(self._split_data(split), self.messages_column)
        return [t[-1]["content"] if t and t[-1]["role"] == "assistant" else None for t in turns]

    def _prepare_raw(self, raw):
        """Check columns (question/answer fall back to a case-insensitive match: hub copies use `Question`/`Answer`)
        and drop rows without an input or an answer, which teach nothing."""
        import datasets

        out = {}
        for split, ds in raw.items():
            names = [("input", self._columns()[0], "data.messages_column" if self.messages_column else
                      "data.prompt_column" if self.prompt_column else "data.question_column")]
            if self._columns()[1]:
                names.append(("answer", self._columns()[1], "data.completion_column" if self.prompt_column
                              else "data.answer_column"))
            for kind, name, option in names:
                if name not in ds.column_names:
                    matches = [c for c in ds.column_names if c.lower() == name.lower()]
                    if len(matches) != 1 or self.messages_column or self.prompt_column:
                        raise column_error(kind, name, split, ds.column_names, option)
                    ds = ds.rename_column(matches[0], name)
            if self.messages_column:
                keep = [i for i, turns in enumerate(column(ds, self.messages_column))
                        if check_messages(turns, f"row {i + 1} of the {split} split")[-1]["role"] == "assistant"]
                what = "ending in an assistant turn"
            else:
                keep = [i for i, (q, a) in enumerate(zip(*(column(ds, c) for c in self.required_columns()),
                                                         strict=True))
                        if q is not None and str(q).strip() and a is not None and str(a).strip()]
                what = "without an input or answer"
            if len(keep) < len(ds):
                print(f"ftl: dropped {len(ds) - len(keep)} rows {'not ' if self.messages_column else ''}{what} "
                      f"from the {split} split")
                ds = ds.select(keep).flatten_indices()
            out[split] = ds
        return datasets.DatasetDict(out)

    def _limit_samples(self, raw):
        import datasets

        out = {}
        for split, ds in raw.items():
            limit = self.max_samples if split == "train" else (self.max_eval_samples or self.max_samples)
            if limit and len(ds) > limit:
                ds = ds.shuffle(seed=self.seed).select(range(limit)).flatten_indices()
            out[split] = ds
        return datasets.DatasetDict(out)

    def _prompts(self, questions: list) -> list[str]:
        return [fill_template(self.prompt_template, str(q).strip()) for q in questions]

    def _conversation(self, prompt: str, answer: str | None) -> list[dict[str, str]]:
        turns = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        turns.append({"role": "user", "content": prompt})
        if answer is not None:
            turns.append({"role": "assistant", "content": answer})
        return turns

    def _tokenize_batch(self, batch: dict[str, list]) -> dict[str, list]:
        tok, fmt = self.tokenizer, self.format
        inputs_column, answer_column = self._columns()
        inputs = batch[inputs_column]
        if self.messages_column:
            rows = []
            for turns in inputs:
                turns = check_messages(turns, "a conversation")
                if self.system_prompt and turns[0]["role"] != "system":
                    turns = [{"role": "system", "content": self.system_prompt}, *turns]
                answered = turns[-1]["role"] == "assistant"
                rows.append(chat_segments(tok, turns, self.assistant_turns, answer=answered))
            return encode_segments(tok, rows, self.max_length)
        answers = batch.get(answer_column) if answer_column else None
        answers = None if answers is None else [str(a).strip() for a in answers]
        prompts = [str(p).strip() for p in inputs] if self.prompt_column and fmt == "chat" else (
            [str(p) for p in inputs] if self.prompt_column else None)
        if fmt == "chat":
            questions = prompts if prompts is not None else [str(q).strip() for q in inputs]
            rows = [chat_segments(tok, self._conversation(q, None if answers is None else answers[i]),
                                  answer=answers is not None) for i, q in enumerate(questions)]
            return encode_segments(tok, rows, self.max_length)
        return encode_qa(tok, prompts if prompts is not None else self._prompts(inputs), answers, self.max_length,
                         self.add_eos)

    def setup(self, stage: str | None = None) -> None:
        """Tokenized splits; with `packing`, the train split packed into rows (once per data module)."""
        super().setup(stage)
        train = self.datasets.get("train")
        if self.packing and train is not None and "seq_lengths" not in train.column_names:
            from ftl.data.packing import pack_dataset

            self.longest_completion()  # (read from the unpacked rows)
            packed = pack_dataset(train, self.max_length)
            real = sum(sequence_lengths(train))
            print(f"ftl: packed {len(train):,} training sequences into {len(packed):,} rows of up to "
                  f"{self.max_length} tokens ({real / (len(packed) * self.max_length):.1%} of their slots used)")
            self.datasets["train"] = packed

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """Training inputs padded right (labels with -100), plus the prompts alone padded LEFT for generation.

        Hand-written because one batch needs two paddings on opposite sides with different fill values;
        per batch (to `padding_multiple`), never to max_length. Packed rows get per-sequence `position_ids`
        instead (`ftl.data.packing`); their attention mask only marks real tokens (for token counts) and is
        not given to the model.
        """
        pad, multiple = self.tokenizer.pad_token_id, self.padding_multiple or 1
        ids = [list(f["input_ids"]) for f in features]
        batch = {
            "input_ids": pad_batch(ids, pad, multiple=multiple),
            "attention_mask": pad_batch([[1] * len(s) for s in ids], 0, multiple=multiple),
        }
        if "seq_lengths" in features[0]:
            from ftl.data.packing import position_ids

            width = batch["input_ids"].shape[1]
            batch["position_ids"] = pad_batch([position_ids(f["seq_lengths"], width) for f in features], 0,
                                              multiple=multiple)
        else:
            prompts = [seq[: int(f["prompt_length"])] for seq, f in zip(ids, features, strict=True)]
            batch["prompt_input_ids"] = pad_batch(prompts, pad, left=True, multiple=multiple)
            batch["prompt_attention_mask"] = pad_batch([[1] * len(p) for p in prompts], 0, left=True,
                                                       multiple=multiple)
        if "labels" in features[0]:
            batch["labels"] = pad_batch([list(f["labels"]) for f in features], IGNORE_INDEX, multiple=multiple)
        return batch

class MedQuADDataModule(QADataModule):
    """MedQuAD consumer-health questions (Ben Abacha & Demner-Fushman 2019, CC BY 4.0).

    Default source: the hub copy `keivalya/MedQuad-MedicalQnADataset` (one file, `Question`/`Answer`
    columns, split here by question); offline, point `data_dir` at train/val/test jsonl files.
    """

    def __init__(
        self, *args: Any, dataset: str | None = "keivalya/MedQuad-MedicalQnADataset", **kwargs: Any
    ) -> None:
        super().__init__(*args, dataset=dataset, **kwargs)
