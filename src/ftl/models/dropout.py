"""Dropout with a cheap random mask on CPU, for every dropout of a transformers model (attention's included).

Why: on CPU, torch draws each dropout mask with `bernoulli_`, one float draw per element; on MiniLM-L6 at
batch 16 that is 23-28% of a training step here (`benchmarks/step_cost.py`). With attention dropout on,
SDPA also leaves its fused CPU kernel for the math path. `cpu_dropout` draws 64-bit random words instead
(`random_`, about 8x cheaper per element), reads each as four 16-bit integers, and keeps an element when its
integer is >= p x 65536: the same Bernoulli(1 - p) mask, with p rounded to a multiple of 1/65536, scaled by
1 / keep rate as torch does. Random numbers come from torch's default generator, so `seed_everything`
makes runs repeat. On CUDA/MPS, torch's dropout and fused attention are fast: this module hands them over.

`enable_fast_cpu_dropout(model)` swaps every `nn.Dropout` for `FastCPUDropout` and, for a model on SDPA
attention, switches to an attention function that is SDPA except in CPU training with attention dropout,
where it computes softmax(QK^T / sqrt(d)) with this dropout. Weights and state dicts are unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

ATTENTION_NAME = "ftl_sdpa_cpu_dropout"
_LEVELS = 65536  # 16-bit integers
_UNSUPPORTED = ("position_bias", "cache", "softcap", "s_aux")  # features this path leaves to SDPA


def _drop_threshold(p: float) -> int:
    """Integers below this of the 65,536 are dropped: round(p x 65536)."""
    return min(_LEVELS, max(0, round(p * _LEVELS)))


def cpu_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout in training on a CPU tensor (`F.dropout(x, p, training=True)` elsewhere); differentiable."""
    if x.device.type != "cpu":
        return nn.functional.dropout(x, p, training=True)
    threshold = _drop_threshold(p)
    if threshold == 0:
        return x
    if threshold == _LEVELS:
        return x * 0.0
    n = x.numel()
    # int64 from -2**63 with no upper bound draws every bit at random (torch's full 64-bit range path).
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    keep = words.view(torch.int16)[:n].view(x.shape) >= threshold - _LEVELS // 2
    return x.mul(keep).mul_(_LEVELS / (_LEVELS - threshold))


class FastCPUDropout(nn.Dropout):
    """`nn.Dropout` (same `p`, same repr, isinstance still holds) whose CPU masks come from `cpu_dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return cpu_dropout(x, self.p)


def _attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, except in CPU training with attention dropout (see the module docstring).

    Masks come from transformers' `sdpa_mask` (registered under the same name): a boolean mask (True = attend),
    a float mask to add, or None, which means causal for a causal module and no mask otherwise, as in SDPA.
    """
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if (
        not (module.training and dropout > 0 and query.device.type == "cpu")
        or any(kwargs.get(name) is not None for name in _UNSUPPORTED)
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)).mul_(scale)
    q_len, kv_len = scores.shape[-2:]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if attention_mask is None and causal and q_len > 1:
        # SDPA's is_causal: query i sees keys 0..i (top-left aligned)
        attention_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril()
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:
        scores = scores + attention_mask
    probs = cpu_dropout(scores.softmax(-1), dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def _register() -> None:
    """Register the attention function and its mask builder (SDPA's) with transformers, once."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    # Without the mask registration, transformers hands a custom attention function no padding mask.
    AttentionInterface.register(ATTENTION_NAME, _attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def enable_fast_cpu_dropout(model: nn.Module) -> nn.Module:
    """Swap the dropouts inside `model` for `FastCPUDropout` and switch every Hugging Face model in it that runs
    SDPA attention to `_attention` (in place). `model` may be a LightningModule, a PEFT wrapper or an HF model.

    Returns `model`. Models on another attention implementation (eager, flash) keep it; their attention-probability
    dropout is then an `nn.Dropout` module, swapped like the others, or torch's dropout inside that kernel.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                fast = FastCPUDropout(child.p, inplace=child.inplace)
                fast.train(child.training)
                setattr(parent, name, fast)
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "_attn_implementation", None) == "sdpa" and hasattr(module, "set_attn_implementation"):
            _register()
            module.set_attn_implementation(ATTENTION_NAME)
    return model
