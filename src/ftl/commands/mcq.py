"""Multiple-choice evaluation of a causal LM (MMLU-style), scored the way lm-evaluation-harness scores it.

    ftl mcq --data_file mmlu_medical.jsonl --pretrained smollm2-135m
    ftl mcq --data_file mmlu_medical.jsonl --pretrained smollm2-135m --prompt_format mmlu
    ftl mcq --data_file mmlu_medical.jsonl --ckpt_path runs/medquad/<run>/checkpoints/last.ckpt

Input: JSONL lines `{"question": str, "choices": [str, ...], "answer": int | "B" | <choice text>}`, optionally
with a `subject` (the JSONL export of `cais/mmlu` is accepted as it is).

Every choice becomes one (context, continuation) pair, as a harness `multiple_choice` task makes it:

- `qa` (default): context = the QA fine-tuning prompt (`--prompt_template`, default
  `"Question: {question}\\nAnswer: "`), continuation = the choice's text, so a model fine-tuned with
  `configs/medquad.yaml` is asked in its own format;
- `mmlu`: the harness's MMLU prompt (`_default_template_yaml`, zero-shot): the subject's description, the
  question, the choices lettered `A. ...`, `Answer:`, and the continuations `" A"`, `" B"`, ...

Each pair is tokenized like the harness's `HFLM._encode_pair`: trailing whitespace of the context moves to
the continuation, the whole string is encoded (the tokenizer's own special tokens, e.g. Llama's BOS, GPT-2
none) and split after the context's tokens. A choice's score is the sum of its continuation tokens'
log-probabilities (`loglikelihood`); `accuracy` is the harness's `acc` (the arg-max choice, first on ties)
and `accuracy_norm` its `acc_norm` (score divided by the choice's length in characters: the choice text in
`qa`, the letter in `mmlu`, without the space before it). benchmarks/mcq_harness.py checks the equality.
"""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path
from typing import Any, Literal

from ftl.data.qa import DEFAULT_TEMPLATE, fill_template, pad_batch
from ftl.errors import FTLError

PromptFormat = Literal["qa", "mmlu"]
PROMPT_FORMATS = ("qa", "mmlu")
# lm-evaluation-harness, lm_eval/tasks/mmlu/default/mmlu_<subject>.yaml's `description` and
# _default_template_yaml's `doc_to_text` (written there for 4 choices; here for any number up to 26).
MMLU_DESCRIPTION = "The following are multiple choice questions (with answers) about {subject}.\n\n"
MMLU_DESCRIPTION_NO_SUBJECT = "The following are multiple choice questions (with answers).\n\n"


def _answer_index(answer: Any, choices: list[str], line: int) -> int:
    """An int index, a letter (A, b, ...) or the text of a choice -> the choice's index."""
    if isinstance(answer, bool):
        answer = None
    if isinstance(answer, int) and 0 <= answer < len(choices):
        return answer
    if isinstance(answer, str):
        text = answer.strip()
        if len(text) == 1 and text.upper() in string.ascii_uppercase[: len(choices)]:
            return string.ascii_uppercase.index(text.upper())
        if text in choices:
            return choices.index(text)
        if text.isdigit() and int(text) < len(choices):
            return int(text)
    raise FTLError(
        f"line {line}: answer {answer!r} is not a choice index (0-{len(choices) - 1}), a letter or a choice's "
        "text: fix the data"
    )


def load_items(path: str | Path, max_samples: int | None = None) -> list[dict[str, Any]]:
    """Validated multiple-choice items: question, choices (2 or more), the answer as an index, and the
    `subject` when the line has one (MMLU's export does)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FTLError(f"data_file '{path}' not found: pass a JSONL file of {{question, choices, answer}} lines")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise FTLError(f"line {number} of '{path}' is not JSON ({err}): write one JSON object per line") from err
        if not isinstance(row, dict):
            raise FTLError(f"line {number} of '{path}' is not a JSON object: write one {{question, choices, answer}} "
                           "object per line")
        missing = [key for key in ("question", "choices", "answer") if key not in row]
        if missing:
            raise FTLError(f"line {number} of '{path}' lacks {missing}: each line needs question, choices, answer")
        choices = row["choices"]
        if not isinstance(choices, list) or len(choices) < 2:
            raise FTLError(f"line {number} of '{path}': choices must be a list of 2 or more strings")
        choices = [str(c) for c in choices]
        item = {"question": str(row["question"]), "choices": choices,
                "answer": _answer_index(row["answer"], choices, number)}
        if row.get("subject"):
            item["subject"] = str(row["subject"])
        items.append(item)
        if max_samples and len(items) >= max_samples:
            break
    if not items:
        raise FTLError(f"data_file '{path}' has no items: add {{question, choices, answer}} lines")
    return items


def mmlu_prompt(item: dict[str, Any]) -> str:
    """lm-evaluation-harness's zero-shot MMLU context: description, question, lettered choices, "Answer:"."""
    if len(item["choices"]) > len(string.ascii_uppercase):
        raise FTLError(f"an item has {len(item['choices'])} choices, more than the letters A-Z: use "
                       "--prompt_format qa for it")
    subject = item.get("subject")
    description = (MMLU_DESCRIPTION.format(subject=subject.replace("_", " ")) if subject
                   else MMLU_DESCRIPTION_NO_SUBJECT)
    lines = [item["question"].strip()]
    lines += [f"{letter}. {choice}" for letter, choice in zip(string.ascii_uppercase, item["choices"], strict=False)]
    return description + "\n".join(lines) + "\nAnswer:"


def choice_requests(
    item: dict[str, Any], prompt_format: PromptFormat = "qa", prompt_template: str = DEFAULT_TEMPLATE
) -> list[tuple[str, str, str]]:
    """Per choice: (context, continuation, choice string), as the harness's request and `doc_to_choice`.

    The choice string's length in characters is what `acc_norm` divides by (the harness's
    `completion_len`: the choice without the target delimiter before it).
    """
    if prompt_format == "mmlu":
        context = mmlu_prompt(item)
        return [(context, " " + letter, letter) for letter in string.ascii_uppercase[: len(item["choices"])]]
    if prompt_format != "qa":
        raise FTLError(f"prompt_format {prompt_format!r} is unknown: use one of {', '.join(PROMPT_FORMATS)}")
    context = fill_template(prompt_template, item["question"].strip())
    choices = [choice.strip() for choice in item["choices"]]
    if not all(choices):
        raise FTLError(f"question {item['question'][:60]!r} has an empty choice: give every choice text, or use "
                       "--prompt_format mmlu (which scores the letters)")
    return [(context, choice, choice) for choice in choices]


def _encode(tokenizer: Any, text: str) -> list[int]:
    """The harness's `HFLM.tok_encode`: the tokenizer's own special tokens, none if `text` starts with BOS."""
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix is not None and text.startswith(tokenizer.decode(prefix)):
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(text))


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as the harness's `_encode_pair` makes them for a causal LM.

    Trailing whitespace of the context moves to the continuation; context + continuation is encoded whole
    and split after as many tokens as the context alone encodes to.
    """
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = _encode(tokenizer, context + continuation)
    context_ids = _encode(tokenizer, context)
    if not context_ids:  # the harness's empty context: the BOS (else EOS) token stands for it
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [prefix], whole
    return context_ids, whole[len(context_ids):]


def choice_logprobs(
    model: Any,
    tokenizer: Any,
    items: list[dict[str, Any]],
    prompt_template: str = DEFAULT_TEMPLATE,
    batch_size: int = 8,
    max_length: int = 1024,
    prompt_format: PromptFormat = "qa",
) -> list[list[float]]:
    """Per item, per choice: the harness's `loglikelihood`, the sum of log P(continuation token | all before).

    Sequences longer than `max_length` + 1 lose tokens on the left, as in the harness. Requests that feed
    the model the same tokens (MMLU's one-letter continuations after one context) share a forward pass.
    """
    import torch

    scored = []  # (item, choice, model input ids, continuation ids)
    for i, item in enumerate(items):
        for j, (context, continuation, _) in enumerate(choice_requests(item, prompt_format, prompt_template)):
            context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
            if not continuation_ids or len(continuation_ids) > max_length:
                raise FTLError(f"choice {j} of question {item['question'][:60]!r} is {len(continuation_ids)} tokens "
                               f"after its context: it must be 1 to {max_length} (the model's length)")
            ids = (context_ids + continuation_ids)[-(max_length + 1):]
            scored.append((i, j, tuple(ids[:-1]), continuation_ids))
    inputs = list(dict.fromkeys(s[2] for s in scored))  # unique model inputs, first-seen order
    order = sorted(range(len(inputs)), key=lambda k: -len(inputs[k]))  # longest first: less padding per batch
    by_input: dict[tuple[int, ...], list[tuple[int, int, list[int]]]] = {}
    for i, j, ids, continuation_ids in scored:
        by_input.setdefault(ids, []).append((i, j, continuation_ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    scores = [[0.0] * len(item["choices"]) for item in items]
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = [inputs[k] for k in order[start : start + batch_size]]
            ids = pad_batch([list(x) for x in chunk], pad).to(device)
            mask = pad_batch([[1] * len(x) for x in chunk], 0).to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            for row, x in enumerate(chunk):
                for i, j, continuation_ids in by_input[x]:
                    n = len(continuation_ids)
                    logp = torch.log_softmax(logits[row, len(x) - n : len(x)].float(), dim=-1)
                    targets = torch.tensor(continuation_ids, device=logp.device).unsqueeze(-1)
                    scores[i][j] = float(logp.gather(-1, targets).sum())
    return scores


def _first_max(values: list[float]) -> int:
    """numpy's argmax: the first index of the largest value."""
    return max(range(len(values)), key=values.__getitem__)


def evaluate(
    model: Any,
    tokenizer: Any,
    items: list[dict[str, Any]],
    prompt_template: str = DEFAULT_TEMPLATE,
    batch_size: int = 8,
    max_length: int = 1024,
    prompt_format: PromptFormat = "qa",
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(metrics, one record per item): the harness's `acc` and `acc_norm` as accuracy and accuracy_norm.

    With subjects in the items, each subject's accuracy, accuracy_norm and n are added (`accuracy/<subject>`);
    the overall values are over all items, the harness's group score weighted by size.
    """
    scores = choice_logprobs(model, tokenizer, items, prompt_template, batch_size, max_length, prompt_format)
    records = []
    for item, row in zip(items, scores, strict=True):
        lengths = [len(choice) for _, _, choice in choice_requests(item, prompt_format, prompt_template)]
        norm = [s / length for s, length in zip(row, lengths, strict=True)]
        records.append({**item, "predicted": _first_max(row), "predicted_norm": _first_max(norm),
                        "logprobs": [round(s, 6) for s in row]})

    def summary(part: list[dict[str, Any]]) -> dict[str, float]:
        n = len(part)
        return {"accuracy": sum(r["predicted"] == r["answer"] for r in part) / n,
                "accuracy_norm": sum(r["predicted_norm"] == r["answer"] for r in part) / n,
                "chance": sum(1 / len(r["choices"]) for r in part) / n, "n": n}

    metrics = summary(records)
    subjects = sorted({r["subject"] for r in records if "subject" in r})
    for subject in subjects if len(subjects) > 1 else []:
        part = summary([r for r in records if r.get("subject") == subject])
        metrics.update({f"{key}/{subject}": part[key] for key in ("accuracy", "accuracy_norm", "n")})
    return metrics, records


def _load(pretrained: str | None, ckpt_path: str | None, trust_remote_code: bool):
    """(model in eval mode, tokenizer): a fine-tuned checkpoint of CausalLM, or a pretrained model."""
    from transformers import AutoModelForCausalLM

    from ftl.hub import load_model, load_tokenizer

    if ckpt_path:
        from ftl.models.causal_lm import CausalLM

        if not Path(ckpt_path).expanduser().is_file():
            raise FTLError(f"ckpt_path '{ckpt_path}' not found: point to a .ckpt file in a run's checkpoints/")
        overrides = {"pretrained": pretrained} if pretrained else {}
        module = CausalLM.load_from_checkpoint(str(Path(ckpt_path).expanduser()), map_location="cpu", **overrides)
        model, name = module.model, module.hparams.pretrained
    elif pretrained:
        model, name = load_model(AutoModelForCausalLM, pretrained, trust_remote_code=trust_remote_code), pretrained
    else:
        raise FTLError("no model: pass --pretrained (hub id, folder or alias) and/or --ckpt_path")
    tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
    return model.eval(), tokenizer


def run(
    data_file: str,
    pretrained: str | None = None,
    ckpt_path: str | None = None,
    prompt_template: str = DEFAULT_TEMPLATE,
    prompt_format: PromptFormat = "qa",
    batch_size: int = 8,
    max_samples: int | None = None,
    run_dir: str | None = None,
    runs_root: str = "runs",
    trust_remote_code: bool = False,
) -> dict[str, float]:
    """Score a multiple-choice JSONL as lm-evaluation-harness does; write mcq.json and mcq_predictions.jsonl.

    Args:
        data_file: JSONL of {question, choices, answer} lines (answer: index, letter or choice text; an
            optional subject); MMLU's `to_json` export is read as it is.
        pretrained: hub id, local folder or alias (smollm2-135m); with ckpt_path, the base it was tuned from.
        ckpt_path: a CausalLM checkpoint from `ftl fit` (scores the fine-tuned model).
        prompt_template: prompt with a {question} field; each choice is scored as its answer (qa format).
        prompt_format: qa (the prompt template, the choice text scored) or mmlu (lm-evaluation-harness's
            zero-shot MMLU prompt: subject description, lettered choices, " A"/" B"/... scored).
        batch_size: model inputs per forward pass (one per (question, choice), shared by MMLU's letters).
        max_samples: score only the first N items.
        run_dir: output folder (default: <runs_root>/mcq/<timestamp>).
        runs_root: where default run directories are made.
        trust_remote_code: allow model repos' own code.
    """
    import torch

    from ftl.hub import model_max_length

    items = load_items(data_file, max_samples)
    model, tokenizer = _load(pretrained, ckpt_path, trust_remote_code)
    if torch.cuda.is_available():
        model = model.cuda()
    limit = model_max_length(model.config) or 1024
    metrics, records = evaluate(model, tokenizer, items, prompt_template, batch_size, limit, prompt_format)
    from ftl.commands.rundir import given_run_dir, new_run_dir
    from ftl.reports.callbacks import write_json

    made = given_run_dir(run_dir, fit=False, resuming=False) if run_dir else new_run_dir(runs_root, "mcq", "mcq")
    folder = made.path
    write_json(folder / "mcq.json", {"mcq/" + k: v for k, v in metrics.items()})
    with open(folder / "mcq_predictions.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    print(f"accuracy {metrics['accuracy']:.4f}  accuracy_norm {metrics['accuracy_norm']:.4f}  "
          f"chance {metrics['chance']:.4f}  n {metrics['n']}")
    print(f"ftl: outputs in {folder}", file=sys.stderr)
    return metrics


def main(argv: list[str]) -> None:
    """`ftl mcq ...` (registered in ftl.commands.cli.EXTRA_COMMANDS)."""
    from ftl.commands.parsing import function_command, prog_name

    function_command(prog_name("mcq"), run, argv)
