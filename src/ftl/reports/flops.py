"""Tokens and model FLOPs of a batch, and the device's peak, for tokens/s, achieved TFLOP/s and MFU.

MFU (model FLOPs utilisation) is the model's FLOPs per second divided by the device's peak, as PaLM defines it
and LitGPT and Lightning's `ThroughputMonitor` report it. The FLOPs are the standard analytic count for a
transformer, per non-padding token of a batch whose rows are padded to `T` tokens:

    forward = 2 * N + 4 * n_layer * d_model * T

(N: parameters outside the embeddings, 2 FLOPs per multiply-add; the second term is the attention scores and
their weighted sum, which grow with the sequence). Training adds the backward pass: 2x forward for the input
gradients plus 1x forward for the weight gradients of the trainable share of N (all of it in full fine-tuning,
so 3x forward; a LoRA run, whose base weights are frozen, comes close to 2x). Padding tokens are not counted:
computing them is waste, not useful work. This is the count LitGPT's `estimate_flops` makes; Lightning's
`measure_flops` would count every op on a meta-device copy of the model, but needs the model built a second time.

The peak comes from Lightning's table of GPU peaks by name and compute dtype (`get_available_flops`); CPUs have
no entry, so MFU is left out there unless `--throughput.peak_tflops` gives one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def batch_tokens(batch: Any) -> torch.Tensor | int:
    """Non-padding tokens of a batch: its attention mask's sum (kept on the device: no sync per step), else the
    size of `input_ids`; 0 for batches without either."""
    if not isinstance(batch, Mapping):
        return 0
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor):
        return mask.sum()
    ids = batch.get("input_ids")
    return int(ids.numel()) if isinstance(ids, torch.Tensor) else 0


def batch_length(batch: Any) -> int:
    """The padded length `T` of a batch (the second dimension of its `input_ids`), 0 when it has none."""
    ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
    return int(ids.shape[-1]) if isinstance(ids, torch.Tensor) and ids.ndim >= 2 else 0


def transformer_shape(model: torch.nn.Module) -> tuple[int, int, int, int] | None:
    """(non-embedding parameters, trainable ones among them, layers, hidden size) of a transformers model, or
    None when the module has no transformers config to read the shape from."""
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if not layers or not width:
        return None
    embeddings = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    params = [p for p in model.parameters() if id(p) not in embeddings]
    return (sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad), int(layers),
            int(width))


def flops_per_token(shape: tuple[int, int, int, int], length: int, training: bool) -> float:
    """Model FLOPs per non-padding token (see the module docstring) for a batch padded to `length` tokens."""
    params, trainable, layers, width = shape
    forward = 2 * params + 4 * layers * width * length
    if not training:
        return float(forward)
    return float(forward * (2 + (trainable / params if params else 1.0)))


def compute_dtype(precision: str) -> torch.dtype:
    """The matmul dtype of a Lightning precision setting ("bf16-mixed", "16-mixed", "32-true"...)."""
    precision = str(precision)
    if "bf16" in precision:
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float64 if precision.startswith("64") else torch.float32


def peak_flops(device: torch.device, precision: str, given_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one device: `given_tflops` when set, else Lightning's table (None when unknown, e.g. CPU)."""
    if given_tflops:
        return float(given_tflops) * 1e12
    if device.type != "cuda":
        return None
    from lightning.fabric.utilities.throughput import get_available_flops

    found = get_available_flops(device, compute_dtype(precision))
    return float(found) if found else None
