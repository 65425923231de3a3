"""A/B on this machine: torch's dropout vs a cheaper-mask prototype, on ftl's real training batches.

`benchmarks/step_cost.py` profiles dropout's random masks (`aten::bernoulli_`) at about a quarter of a
training step on CPU, and in training with attention dropout SDPA takes its math path. This prototype, NOT
used by ftl, tests how much a cheaper mask would save: every `nn.Dropout` compares 16-bit random words with
p x 65536 (random 64-bit words cut in four; same keep rate, p quantised to 1/65536), and a registered
attention function applies the same dropout to softmax(QK^T) in training (SDPA otherwise). `--check` first
compares its logits with the stock model's, dropout off. Each mode runs in its own process, alternating, so
machine drift hits both alike. Minutes to run; not run by pytest.

    python benchmarks/dropout_ab.py --data ../shared/data/depression_reddit --steps 30 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def fast_dropout(x, p: float):
    import torch

    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    keep = words.view(torch.int16)[:n].view_as(x) >= (-32768 + round(p * 65536))
    return x * keep * (1.0 / (1.0 - p))


def build_model(path: str, fast: bool):
    import torch
    from torch import nn
    from transformers import AttentionInterface, AutoModelForSequenceClassification
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    class FastDropout(nn.Module):
        def __init__(self, p: float) -> None:
            super().__init__()
            self.p = p

        def forward(self, x):
            return fast_dropout(x, self.p) if self.training and self.p > 0 else x

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        if not (module.training and dropout > 0):
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
        scores = torch.matmul(query, key.transpose(-1, -2)) * (scaling or query.shape[-1] ** -0.5)
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        elif attention_mask is not None:
            scores = scores + attention_mask
        probs = fast_dropout(scores.softmax(-1), dropout)
        return torch.matmul(probs, value).transpose(1, 2).contiguous(), None

    # Without the mask registration transformers hands a custom attention function no padding mask.
    AttentionInterface.register("fast_dropout", attention)
    AttentionMaskInterface.register("fast_dropout", sdpa_mask)
    torch.manual_seed(0)
    extra = {"attn_implementation": "fast_dropout"} if fast else {}
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, **extra)
    if fast:
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Dropout):
                    setattr(module, name, FastDropout(child.p))
    return model


def check(path: str) -> float:
    """Largest logit difference, stock vs prototype, with dropout kept on the prototype's path but dropping nothing."""
    import torch
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(path)(
        ["a short one", "a longer text with several more tokens in it than the first"],
        padding=True,
        return_tensors="pt",
    )
    stock, fast = build_model(path, False).eval(), build_model(path, True).train()
    for module in fast.modules():
        if hasattr(module, "p"):
            module.p = 1e-9  # keeps every value (threshold rounds to 0) but takes the dropout code paths
    with torch.no_grad():
        return (stock(**enc).logits - fast(**enc).logits).abs().max().item()


def time_steps(data: str, model_name: str, steps: int, fast: bool) -> float:
    import torch
    from padding import ftl_training_batches, train_texts_and_lengths  # benchmarks/padding.py
    from transformers import AutoTokenizer

    from ftl.models.hub import resolve_pretrained

    path = resolve_pretrained(model_name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts, lengths = train_texts_and_lengths(data, tokenizer, 256)
    encoded = ftl_training_batches(texts, lengths, tokenizer, 16, steps + 1, 256, 42)
    model = build_model(path, fast).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    labels = torch.zeros(16, dtype=torch.long)

    def step(enc) -> None:
        model(**enc, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(encoded[0])  # warm-up
    start = time.perf_counter()
    for enc in encoded[1:]:
        step(enc)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "depression_reddit"))
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--one", choices=("stock", "fast"), help=argparse.SUPPRESS)  # a single timed child run
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.one:
        print(f"{time_steps(args.data, args.model, args.steps, args.one == 'fast'):.3f}")
        return
    from ftl.models.hub import resolve_pretrained

    difference = check(resolve_pretrained(args.model))
    print(f"# logits, stock vs prototype (dropout dropping nothing): max difference {difference:.2e}")
    seconds: dict[str, list[float]] = {"stock": [], "fast": []}
    for repeat in range(args.repeats):
        for mode in ("stock", "fast") if repeat % 2 == 0 else ("fast", "stock"):
            cmd = [sys.executable, __file__, "--data", args.data, "--model", args.model, "--steps", str(args.steps)]
            out = subprocess.run([*cmd, "--one", mode], check=True, capture_output=True, text=True)
            seconds[mode].append(float(out.stdout.strip().splitlines()[-1]))
            print(f"{mode}: {seconds[mode][-1]:.2f} s for {args.steps} steps", flush=True)
    stock, fast = (statistics.median(seconds[m]) for m in ("stock", "fast"))
    print(f"\nmedian of {args.repeats}: stock {stock:.2f} s, prototype {fast:.2f} s, ratio {stock / fast:.2f}x")


if __name__ == "__main__":
    main()
