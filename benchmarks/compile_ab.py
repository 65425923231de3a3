"""Eager against `--model.compile true` (torch.compile, inductor) on the CPU: training steps/s of one model, both
variants in one process, compile time reported on its own.

Both variants are ftl's `SequenceClassifier` built the same way (the compiled one through the option's own code
path, `nn.Module.compile`), seeded alike, and trained with ftl's AdamW settings on the same fixed-shape batches.
The first `--warmup` steps of each are timed apart: for the compiled model they hold the compilation (cold: inductor
gets a new empty cache unless `--warm-cache`). Then
`--rounds` alternating rounds of `--steps` steps each are timed (eager, compiled, eager, ...), so a busy machine
slows both alike; the medians give steps/s and the ratio. `--lengths` > 1 feeds batches of that many padded
lengths in turn, as ftl's length-grouped batches are: each new shape costs the compiled model a recompilation
(or, from the second, a dynamic-shape graph), which the warm-up then includes.

    python benchmarks/compile_ab.py                         # a few minutes on 2 cores
    python benchmarks/compile_ab.py --lengths 4 --json-out benchmarks/results/compile_ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def tiny_bert(folder: Path, hidden: int, layers: int, vocab: int, dropout: float) -> str:
    """A random BERT encoder (no head) saved with a WordPiece tokenizer: no downloads."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(vocab - 5)]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, model_max_length=512).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                        max_position_embeddings=512, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    BertModel(config).save_pretrained(folder)
    return str(folder)


def batches(n: int, batch_size: int, lengths: list[int], vocab: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` batches with random token ids, their padded lengths taking `lengths` in turn (a quarter of each row
    is padding, as in a length-grouped batch)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = lengths[i % len(lengths)]
        mask = torch.ones(batch_size, length, dtype=torch.long)
        mask[batch_size // 2:, 3 * length // 4:] = 0
        out.append({"input_ids": torch.randint(5, vocab, (batch_size, length), generator=generator) * mask,
                    "attention_mask": mask, "labels": torch.randint(0, 2, (batch_size,), generator=generator)})
    return out


class Variant:
    """One model (eager or compiled) with its optimizer, stepping through the shared batches."""

    def __init__(self, name: str, model_dir: str, compile: bool, total_steps: int) -> None:
        import torch

        from ftl.models.classifier import SequenceClassifier
        from ftl.models.optim import OptimizerSettings, configure_adamw

        torch.manual_seed(0)
        self.name = name
        self.module = SequenceClassifier(pretrained=model_dir, num_labels=2, compile=compile).train()
        self.optimizer = configure_adamw(self.module.model, OptimizerSettings(), total_steps)["optimizer"]
        self.seconds: list[float] = []

    def step(self, batch: dict[str, Any]) -> float:
        loss = self.module.loss(self.module(batch), batch["labels"])
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def timed(self, data: list[dict[str, Any]]) -> float:
        start = time.perf_counter()
        for batch in data:
            self.step(batch)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--dropout", type=float, default=0.1, help="hidden and attention dropout (BERT's 0.1)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=128, help="padded length of every batch (with --lengths 1)")
    parser.add_argument("--lengths", type=int, default=1, help="how many padded lengths the batches cycle through")
    parser.add_argument("--warmup", type=int, default=3, help="steps timed apart (compilation)")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    # one thread: on a busy 2-core machine torch's spinning threads slow small steps many-fold (tests/conftest.py)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warm-cache", action="store_true",
                        help="use inductor's usual on-disk cache (default: a new empty one, so compile time is cold)")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="compile-ab-"))
    if not args.warm_cache:  # a second run would otherwise load the compiled graphs: seconds instead of a minute
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor-cache")
    import torch

    torch.set_num_threads(args.threads)
    lengths = [args.length - 16 * i for i in range(args.lengths)]
    model_dir = tiny_bert(work / "model", args.hidden, args.layers, args.vocab, args.dropout)
    total = args.warmup + args.rounds * args.steps
    variants = [Variant("eager", model_dir, False, total), Variant("compiled", model_dir, True, total)]
    warm = batches(max(args.warmup, len(lengths)), args.batch_size, lengths, args.vocab, seed=1)
    data = batches(args.steps, args.batch_size, lengths, args.vocab, seed=2)
    first = {}
    for v in variants:  # warm-up: the compiled model compiles here (once per shape)
        first[v.name] = v.timed(warm)
        print(f"# {v.name}: first {len(warm)} steps {first[v.name]:.2f} s", flush=True)
    for r in range(args.rounds):
        for v in variants:
            v.seconds.append(v.timed(data))
        print(f"# round {r}: " + ", ".join(f"{v.name} {args.steps / v.seconds[-1]:.2f} steps/s" for v in variants),
              flush=True)
    rates = {v.name: args.steps / statistics.median(v.seconds) for v in variants}
    compile_s = first["compiled"] - first["eager"]
    result = {
        "config": {**vars(args), "padded_lengths": lengths, "torch": torch.__version__,
                   "python": platform.python_version(), "cpu_threads": torch.get_num_threads()},
        "steps_per_s": rates, "ratio_compiled_over_eager": rates["compiled"] / rates["eager"],
        "warmup_seconds": first, "compile_seconds": compile_s,
        "rounds_seconds": {v.name: v.seconds for v in variants},
        "break_even_steps": (compile_s / (1 / rates["eager"] - 1 / rates["compiled"])
                             if rates["compiled"] > rates["eager"] else None),
    }
    print(f"eager {rates['eager']:.2f} steps/s, compiled {rates['compiled']:.2f} steps/s (median of {args.rounds} "
          f"rounds of {args.steps}): compiled/eager {result['ratio_compiled_over_eager']:.3f}x;"
          f" compilation {compile_s:.1f} s over the first {len(warm)} steps"
          + (f"; pays for itself after {result['break_even_steps']:.0f} steps" if result["break_even_steps"] else ""))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
