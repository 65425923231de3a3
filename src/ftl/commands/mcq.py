"""Multiple-choice evaluation of a causal LM (MMLU-style): each choice is scored by its log-likelihood given
the question, and the best-scoring choice is the model's answer.

    ftl mcq --data_file mmlu_medical.jsonl --pretrained smollm2-135m
    ftl mcq --data_file mmlu_medical.jsonl --ckpt_path runs/medquad/<run>/checkpoints/last.ckpt

Input: JSONL lines `{"question": str, "choices": [str, ...], "answer": int | "B" | <choice text>}`.
Each choice is scored as the answer in the same prompt template QA fine-tuning uses, tokenized the same
way (`ftl.data.qa.encode_qa`), so a model fine-tuned with `configs/medquad.yaml` is asked in its own format.
Reports `accuracy` (sum of choice-token log-probs) and `accuracy_norm` (divided by the choice's length in
characters, which removes the bias toward short choices; lm-evaluation-harness's `acc_norm`).
"""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path
from typing import Any

from ftl.data.qa import DEFAULT_TEMPLATE, IGNORE_INDEX, encode_qa, fill_template, pad_batch
from ftl.errors import FTLError


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
    """Validated multiple-choice items: question, choices (2 or more) and the answer as an index."""
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
        missing = [key for key in ("question", "choices", "answer") if key not in row]
        if missing:
            raise FTLError(f"line {number} of '{path}' lacks {missing}: each line needs question, choices, answer")
        choices = row["choices"]
        if not isinstance(choices, list) or len(choices) < 2:
            raise FTLError(f"line {number} of '{path}': choices must be a list of 2 or more strings")
        choices = [str(c) for c in choices]
        items.append({"question": str(row["question"]), "choices": choices,
                      "answer": _answer_index(row["answer"], choices, number)})
        if max_samples and len(items) >= max_samples:
            break
    if not items:
        raise FTLError(f"data_file '{path}' has no items: add {{question, choices, answer}} lines")
    return items


def choice_logprobs(
    model: Any,
    tokenizer: Any,
    items: list[dict[str, Any]],
    prompt_template: str = DEFAULT_TEMPLATE,
    batch_size: int = 8,
    max_length: int = 1024,
) -> list[list[float]]:
    """Per item, per choice: the sum of log P(choice token | prompt, earlier choice tokens)."""
    import torch

    pairs = [(i, j, fill_template(prompt_template, item["question"].strip()), choice.strip())
             for i, item in enumerate(items) for j, choice in enumerate(item["choices"])]
    encoded = encode_qa(tokenizer, [p[2] for p in pairs], [p[3] for p in pairs], max_length, add_eos=False)
    order = sorted(range(len(pairs)), key=lambda k: len(encoded["input_ids"][k]))  # less padding per batch
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    scores = [[0.0] * len(item["choices"]) for item in items]
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            ids = pad_batch([encoded["input_ids"][k] for k in chunk], pad).to(device)
            mask = pad_batch([encoded["attention_mask"][k] for k in chunk], 0).to(device)
            labels = pad_batch([encoded["labels"][k] for k in chunk], IGNORE_INDEX).to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            targets = labels[:, 1:]
            logp = torch.log_softmax(logits, dim=-1)
            picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            sums = (picked * (targets != IGNORE_INDEX)).sum(-1).tolist()
            for k, value in zip(chunk, sums, strict=True):
                i, j = pairs[k][0], pairs[k][1]
                scores[i][j] = float(value)
    return scores


def evaluate(model: Any, tokenizer: Any, items: list[dict[str, Any]], prompt_template: str = DEFAULT_TEMPLATE,
             batch_size: int = 8, max_length: int = 1024) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(metrics, one record per item): accuracy by summed and by length-normalised log-likelihood."""
    scores = choice_logprobs(model, tokenizer, items, prompt_template, batch_size, max_length)
    records = []
    for item, row in zip(items, scores, strict=True):
        norm = [s / max(1, len(c.strip())) for s, c in zip(row, item["choices"], strict=True)]
        best = max(range(len(row)), key=row.__getitem__)
        best_norm = max(range(len(norm)), key=norm.__getitem__)
        records.append({**item, "predicted": best, "predicted_norm": best_norm,
                        "logprobs": [round(s, 4) for s in row]})
    n = len(records)
    metrics = {
        "accuracy": sum(r["predicted"] == r["answer"] for r in records) / n,
        "accuracy_norm": sum(r["predicted_norm"] == r["answer"] for r in records) / n,
        "chance": sum(1 / len(r["choices"]) for r in records) / n,
        "n": n,
    }
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
    batch_size: int = 8,
    max_samples: int | None = None,
    run_dir: str | None = None,
    runs_root: str = "runs",
    trust_remote_code: bool = False,
) -> dict[str, float]:
    """Score a local multiple-choice JSONL; write mcq.json and mcq_predictions.jsonl to the run directory.

    Args:
        data_file: JSONL of {question, choices, answer} lines (answer: index, letter or choice text).
        pretrained: hub id, local folder or alias (smollm2-135m); with ckpt_path, the base it was tuned from.
        ckpt_path: a CausalLM checkpoint from `ftl fit` (scores the fine-tuned model).
        prompt_template: prompt with a {question} field; each choice is scored as its answer.
        batch_size: (question, choice) pairs per forward pass.
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
    metrics, records = evaluate(model, tokenizer, items, prompt_template, batch_size, limit)
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
