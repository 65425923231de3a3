"""AdamW with the usual transformer parameter groups and a warmup schedule, shared by every ftl module."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

SchedulerName = Literal["linear", "cosine", "constant"]


@dataclass
class OptimizerSettings:
    """AdamW and its schedule, as one typed group (the base task module builds it from its flat arguments,
    so YAMLs, sweeps and `--model.learning_rate` overrides stay one level deep)."""

    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: SchedulerName = "linear"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0

# Parameters of these layers are scales/shifts, not weights: decaying them only hurts (BERT, GPT-2 recipes).
_NO_DECAY_TYPES = (nn.LayerNorm,)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weights with `weight_decay`, and biases + normalisation parameters without."""
    no_decay: set[str] = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, _NO_DECAY_TYPES) or "norm" in type(module).__name__.lower()
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if is_norm or param_name.endswith("bias"):
                no_decay.add(full)
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if name in no_decay else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def warmup_steps_for(total_steps: int, warmup_steps: int, warmup_ratio: float) -> int:
    """`warmup_steps` wins when set; otherwise `warmup_ratio` of the total (HF Trainer's rule)."""
    if warmup_steps > 0:
        return warmup_steps
    return int(round(warmup_ratio * total_steps))


def configure_adamw(model: nn.Module, settings: OptimizerSettings, total_steps: int) -> dict:
    """The `configure_optimizers` return value: AdamW (fused kernel on CPU and CUDA) + a per-step schedule."""
    from transformers import get_scheduler

    params = parameter_groups(model, settings.weight_decay)
    # torch's fused AdamW runs on CPU too (HF Trainer's default since torch 2.8); the per-tensor loop it replaces
    # cost ~12% of a MiniLM step on 2 cores. Other devices (MPS, XLA) keep torch's default implementation.
    devices = {p.device.type for g in params for p in g["params"]}
    fused = True if devices and devices <= {"cpu", "cuda"} else None
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, betas=tuple(settings.betas), eps=settings.eps,
                                  fused=fused)
    warmup = warmup_steps_for(total_steps, settings.warmup_steps, settings.warmup_ratio)
    if warmup >= total_steps > 0:  # e.g. a recipe's 50 warmup steps on a short run: lr never reaches its peak
        print(f"ftl: warning: {warmup} warmup steps >= the run's {total_steps} optimizer steps, so the learning "
              f"rate never reaches {settings.learning_rate:g}: lower model.warmup_steps or use model.warmup_ratio",
              file=sys.stderr)
    name = {"constant": "constant_with_warmup"}.get(settings.scheduler, settings.scheduler)
    schedule = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1}}
