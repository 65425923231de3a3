"""LoRA adapters (PEFT) shared by every ftl module: wrap a Hugging Face model, count what trains, merge for export.

One implementation for all modules (classifier, causal LM, extensions): a module takes `lora: LoraSettings | None`
and calls `apply_lora(model, lora, task_type)`; export calls `mergeable_copy`/`export_model` to get a plain HF model.
Checkpoints keep the whole wrapped state dict (frozen base + adapters), so `--ckpt_path` resumes without
anything else. `peft` is imported only when LoRA is used (`pip install -e ".[peft]"`).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from ftl.errors import FTLError

# peft knows default target modules for most architectures; these are the ones it lacks that ftl's configs use.
_EXTRA_TARGETS: dict[str, list[str]] = {"distilbert": ["q_lin", "v_lin"]}


@dataclass
class LoraSettings:
    """`lora:` in a YAML: rank `r`, scaling `alpha` (effective scale alpha/r), `dropout` on the adapter input,
    `target_modules` (module names to adapt; default: peft's choice for the architecture, e.g. query/value)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | None = field(default=None)


def lora_settings(value: LoraSettings | dict[str, Any] | None) -> LoraSettings | None:
    """Accept the dataclass (from the CLI) or a plain dict (from a checkpoint's hyperparameters)."""
    if value is None or isinstance(value, LoraSettings):
        return value
    try:
        return LoraSettings(**dict(value))
    except TypeError as err:
        known = ", ".join(LoraSettings.__dataclass_fields__)
        raise FTLError(f"bad lora settings {dict(value)} ({err}): use only the keys {known}") from None


def as_hparam(value: LoraSettings | dict[str, Any] | None) -> dict[str, Any] | None:
    """Plain dict for `save_hyperparameters`: checkpoints then load with `weights_only=True`."""
    settings = lora_settings(value)
    return None if settings is None else asdict(settings)


def _peft():
    try:
        import peft
    except ImportError as err:
        raise FTLError("lora needs the package peft: pip install -e '.[peft]' (or pip install peft)") from err
    return peft


def _target_modules(model: nn.Module, settings: LoraSettings) -> list[str] | None:
    if settings.target_modules:
        return list(settings.target_modules)
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as KNOWN

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in KNOWN:
        return None  # peft picks them
    if model_type in _EXTRA_TARGETS:
        return list(_EXTRA_TARGETS[model_type])
    linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
    raise FTLError(
        f"no default LoRA target modules for model type '{model_type}': set model.lora.target_modules "
        f"to some of its linear layers {linear[:12]}"
    )


def apply_lora(model: nn.Module, settings: LoraSettings | dict[str, Any], task_type: str) -> nn.Module:
    """`model` wrapped by `peft.get_peft_model`: base weights frozen, adapters trainable.

    `task_type` is peft's name ("SEQ_CLS", "CAUSAL_LM"); for SEQ_CLS peft also trains (and saves) the fresh
    classification head, which LoRA alone would leave at its random initialisation.
    """
    peft = _peft()
    settings = lora_settings(settings)
    config = peft.LoraConfig(
        task_type=task_type,
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=_target_modules(model, settings),
    )
    try:
        return peft.get_peft_model(model, config)
    except ValueError as err:  # e.g. target modules not found in the model
        first = str(err).strip().splitlines()[0]
        raise FTLError(f"cannot apply LoRA ({first}): fix model.lora.target_modules") from err


def is_lora(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total


def merged_copy(model: nn.Module) -> nn.Module:
    """A plain Hugging Face model with the adapters merged into the base weights; `model` is left untouched.

    `merge_and_unload` rewrites the wrapped model in place, hence the deep copy. The result has the base
    architecture (and, for classification, the trained head), so `save_pretrained` writes a folder that
    `AutoModel*.from_pretrained` and `pipeline` load without peft.
    """
    if not is_lora(model):
        return model
    merged = copy.deepcopy(model).merge_and_unload()
    for param in merged.parameters():
        param.requires_grad_(True)  # an ordinary model again (peft left the base frozen)
    return merged


def export_model(module_or_model: nn.Module) -> nn.Module:
    """What an HF export should `save_pretrained`: the module's `.model`, with LoRA adapters merged if any.

    Accepts a LightningModule holding the HF model as `.model` (every ftl module does) or the model itself.
    """
    model = merged_copy(getattr(module_or_model, "model", module_or_model))
    # a task may change the exported weights (the classifier folds its calibration temperature into its head)
    fold = getattr(module_or_model, "exported_model", None)
    return fold(model) if callable(fold) else model


def log_parameter_counts(module: Any) -> tuple[int, int]:
    """Send trainable/total parameter counts of a LightningModule to its loggers (as hyperparameters: they
    describe the run) and print them once; with LoRA the trainable share is what tells runs apart."""
    from lightning.pytorch.utilities import rank_zero_info

    trainable, total = count_parameters(module)
    for logger in module.loggers:
        logger.log_hyperparams({"trainable_params": trainable, "total_params": total})
    rank_zero_info(f"ftl: trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)")
    return trainable, total
