"""Question answering data for causal LMs: a prompt template, EOS after the answer, loss on answer tokens only.

Each row becomes `prompt tokens + answer tokens (+ EOS)`; `labels` copy the answer tokens and mark every
prompt (and, after batching, padding) token with -100, so the model is trained and scored on answers only.
Rows also keep `prompt_length`, so evaluation can generate from the prompt alone.
"""

from __future__ import annotations

from typing import Any

from ftl.data.text import TextDataModule, column, column_error
from ftl.errors import FTLError

IGNORE_INDEX = -100  # the label value PyTorch's cross-entropy (and every HF loss) skips
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
    """(question, answer) pairs from any source `TextDataModule` reads, for causal-LM fine-tuning.

    `max_samples` caps the train split and `max_eval_samples` (default: `max_samples`) caps val and test,
    so `max_samples=700, max_eval_samples=150` gives the reference 700/150/150 run. A split carved out of
    train keeps every copy of a question on one side (see `group_column`).
    """

    def __init__(
        self,
        *args: Any,
        question_column: str = "question",
        answer_column: str = "answer",
        prompt_template: str = DEFAULT_TEMPLATE,
        add_eos: bool = True,
        max_eval_samples: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.question_column = question_column
        self.answer_column = answer_column
        self.prompt_template = prompt_template
        self.add_eos = add_eos
        self.max_eval_samples = max_eval_samples
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

    # ------------------------------------------------------------------ hooks
    def required_columns(self) -> list[str]:
        return [self.question_column, self.answer_column]

    def input_columns(self) -> list[str]:
        return [self.question_column]

    def reference_column(self) -> str | None:
        return self.answer_column  # generations.jsonl and ROUGE compare with the full answer, never truncated

    def group_column(self) -> str | None:
        return self.question_column

    def tokenization_settings(self) -> dict[str, Any]:
        # (the columns are in the cache key already: required_columns)
        return {"prompt_template": self.prompt_template, "add_eos": self.add_eos}

    def _prepare_raw(self, raw):
        """Check columns (falling back to a case-insensitive match: hub copies use `Question`/`Answer`)
        and drop rows without a question or an answer, which teach nothing."""
        import datasets

        out = {}
        for split, ds in raw.items():
            for kind, name, option in (
                ("question", self.question_column, "data.question_column"),
                ("answer", self.answer_column, "data.answer_column"),
            ):
                if name not in ds.column_names:
                    matches = [c for c in ds.column_names if c.lower() == name.lower()]
                    if len(matches) != 1:
                        raise column_error(kind, name, split, ds.column_names, option)
                    ds = ds.rename_column(matches[0], name)
            keep = [
                i for i, (q, a) in enumerate(zip(column(ds, self.question_column), column(ds, self.answer_column),
                                                 strict=True))
                if q is not None and str(q).strip() and a is not None and str(a).strip()
            ]
            if len(keep) < len(ds):
                print(f"ftl: dropped {len(ds) - len(keep)} rows without a question or answer from the {split} split")
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

    def _tokenize_batch(self, batch: dict[str, list]) -> dict[str, list]:
        prompts = self._prompts(batch[self.question_column])
        answers = batch.get(self.answer_column)
        if answers is not None:
            answers = [str(a).strip() for a in answers]
        return encode_qa(self.tokenizer, prompts, answers, self.max_length, self.add_eos)

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """Training inputs padded right (labels with -100), plus the prompts alone padded LEFT for generation.

        Hand-written because one batch needs two paddings on opposite sides with different fill values;
        per batch (to `padding_multiple`), never to max_length.
        """

        pad, multiple = self.tokenizer.pad_token_id, self.padding_multiple or 1
        ids = [list(f["input_ids"]) for f in features]
        prompts = [seq[: int(f["prompt_length"])] for seq, f in zip(ids, features, strict=True)]
        batch = {
            "input_ids": pad_batch(ids, pad, multiple=multiple),
            "attention_mask": pad_batch([[1] * len(s) for s in ids], 0, multiple=multiple),
            "prompt_input_ids": pad_batch(prompts, pad, left=True, multiple=multiple),
            "prompt_attention_mask": pad_batch([[1] * len(p) for p in prompts], 0, left=True, multiple=multiple),
        }
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
