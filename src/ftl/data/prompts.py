"""Prompts for causal-LM fine-tuning: the tokenizer's chat template or a plain text template, one encoder for both.

Every row becomes segments of text, each tokenized on its own and labelled or not: the prompt (everything the
model is given) and the completion (what it learns to say, with the template's end-of-turn token). Tokenizing
the prompt alone means its tokens are exactly those the model sees when it generates from it (`prompt_length`
marks where they end), and the loss covers completion tokens only.

Chat rows are split where the template's own renderings of the conversation so far end: the text of
`messages[:i]` with the generation prompt is what comes before assistant turn `i`, the text of
`messages[:i + 1]` what comes up to its end. That holds for every template whose rendering of a conversation
starts with the rendering of each of its beginnings (ChatML/SmolLM, Llama 3, Mistral, Gemma, Phi); one that
does not (it rewrites earlier turns) gets a one-line error rather than silently wrong labels.
"""

from __future__ import annotations

from typing import Any

from ftl.errors import FTLError

IGNORE_INDEX = -100  # the label value PyTorch's cross-entropy (and every HF loss) skips
PROMPT_FORMATS = ("auto", "chat", "template")
ASSISTANT_TURNS = ("all", "last")


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_prompt_format(tokenizer: Any, prompt_format: str, tokenizer_name: str | None = None) -> str:
    """`chat` or `template`: `auto` is `chat` when the tokenizer has a chat template (instruct models), else
    `template` (base models, whose tokenizers have none)."""
    if prompt_format not in PROMPT_FORMATS:
        raise FTLError(f"data.prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
    if prompt_format == "auto":
        return "chat" if has_chat_template(tokenizer) else "template"
    if prompt_format == "chat" and not has_chat_template(tokenizer):
        raise FTLError(f"data.prompt_format chat: tokenizer '{tokenizer_name}' has no chat template: use "
                       "data.prompt_format template (or auto)")
    return prompt_format


def check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    """`messages` as a list of {role, content} dicts with string contents, or a one-line error naming `where`."""
    if not isinstance(messages, list) or not messages:
        raise FTLError(f"{where}: messages must be a non-empty list of {{role, content}} objects, got "
                       f"{type(messages).__name__}: fix the data")
    out = []
    for turn in messages:
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or turn.get("content") is None:
            raise FTLError(f"{where}: every message needs a 'role' and a 'content', got {turn!r}: fix the data")
        out.append({"role": turn["role"], "content": str(turn["content"])})
    return out


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def chat_segments(
    tokenizer: Any, messages: list[dict[str, str]], assistant_turns: str = "all", answer: bool = True
) -> list[tuple[str, bool]]:
    """(text, labelled) segments of a conversation rendered with the chat template.

    With `answer`, the conversation's last message must be the assistant's (the completion); the assistant turns
    before it are labelled too when `assistant_turns` is "all". Without `answer` (prediction), the whole
    conversation is the prompt, followed by the template's generation prompt.
    """
    if not answer:
        return [(_render(tokenizer, messages, generation_prompt=True), False)]
    if messages[-1]["role"] != "assistant":
        raise FTLError("a conversation must end with an assistant message (the completion to learn): fix the data")
    full = _render(tokenizer, messages, generation_prompt=False)
    last = len(messages) - 1
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and (assistant_turns == "all" or i == last)]
    segments: list[tuple[str, bool]] = []
    pos = 0
    for i in turns:
        before = _render(tokenizer, messages[:i], generation_prompt=True)
        through = full if i == last else _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not (through.startswith(before) and full.startswith(through) and len(before) >= pos):
            raise FTLError(
                "the tokenizer's chat template renders a conversation differently from its beginning, so assistant "
                "turns cannot be located: use data.assistant_turns last, or data.prompt_format template"
            )
        segments += [(full[pos:len(before)], False), (through[len(before):], True)]
        pos = len(through)
    if pos < len(full):
        segments.append((full[pos:], False))
    return segments


def encode_segments(
    tokenizer: Any, rows: list[list[tuple[str, bool]]], max_length: int
) -> dict[str, list]:
    """input_ids, attention_mask, labels and prompt_length for rows of (text, labelled) segments.

    The last labelled segment is the completion, everything before it the prompt (earlier labelled segments keep
    their labels inside it). Truncation as for question/answer rows (`ftl.data.qa.encode_qa`): a prompt longer
    than half of `max_length` keeps its last half (the end holds the turn being answered), the completion is cut
    to fit, and a cut completion loses its end-of-turn token, as it must (it did not end there).
    Rows without a labelled segment (prediction) are prompts only and get no labels.
    """
    texts = [text for row in rows for text, _ in row]
    ids = iter(tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else iter(())
    keep = max(1, max_length // 2)
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "prompt_length": []}
    labelled_rows = any(flag for row in rows for _, flag in row)
    for row in rows:
        tokens: list[int] = []
        labels: list[int] = []
        completion_start = None
        for _text, labelled in row:
            seg = next(ids)
            if labelled:
                completion_start = len(tokens)
            tokens += seg
            labels += seg if labelled else [IGNORE_INDEX] * len(seg)
        start = len(tokens) if completion_start is None else completion_start
        prompt, prompt_labels = tokens[:start][-keep:], labels[:start][-keep:]
        room = max_length - len(prompt)
        completion, completion_labels = tokens[start:][:room], labels[start:][:room]
        out["input_ids"].append(prompt + completion)
        out["attention_mask"].append([1] * (len(prompt) + len(completion)))
        out["labels"].append(prompt_labels + completion_labels)
        out["prompt_length"].append(len(prompt))
    if not labelled_rows:
        del out["labels"]
    return out


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """The token ids that end an assistant turn: EOS, plus the special tokens the chat template puts after an
    assistant message (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, ...). Generation stops at any of them."""
    stops = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if has_chat_template(tokenizer):
        marker = "ftl-end-marker"
        try:
            text = _render(tokenizer, [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}],
                           generation_prompt=False)
        except Exception:  # a template that needs other roles or fields: EOS alone
            return stops
        tail = text[text.rfind(marker) + len(marker):]
        special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        for token in tokenizer(tail, add_special_tokens=False)["input_ids"]:
            if token in special:
                if token not in stops:
                    stops.append(token)
                break
    return stops
