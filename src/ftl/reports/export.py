"""Hugging Face export: a folder that `AutoModel*.from_pretrained` and `transformers.pipeline` load without ftl.

At the end of `fit` the best checkpoint goes to `<run_dir>/hf_model/` (callback `ftl.reports.callbacks.HFExport`);
`ftl export --ckpt_path X.ckpt --out DIR` does the same for any checkpoint. The folder holds the model (LoRA
adapters merged), its tokenizer, and for classifiers `id2label`/`label2id` with the label names.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path
from typing import Any

import lightning as L

from ftl.errors import FTLError
from ftl.models.base import TaskModule


def save_hf_folder(module: TaskModule, out_dir: str | Path, tokenizer: Any = None,
                   max_length: int | None = None) -> Path:
    """Save `module.model` (adapters merged) and `tokenizer` with `save_pretrained` into `out_dir`.

    Classifiers' label names become `id2label`/`label2id`, so pipelines answer with names; the task's
    `export_config()` adds its entries (e.g. a tuned threshold, for the record: pipelines use argmax). The
    tokenizer is saved with `model_max_length = max_length` (the run's), so `pipeline(..., truncation=True)`
    cuts inputs where training did instead of at the base tokenizer's 512.
    """
    from ftl.models.lora import export_model

    if not isinstance(module, TaskModule):
        raise FTLError(f"{type(module).__name__} is not an ftl task (ftl.models.base.TaskModule): nothing to export")
    model = export_model(module)
    names = module.label_names
    if names:
        model.config.id2label = dict(enumerate(names))
        model.config.label2id = {name: i for i, name in enumerate(names)}
    for key, value in module.export_config().items():
        setattr(model.config, key, value)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
        if max_length:
            _set_tokenizer_max_length(out, max_length)
    return out


def _set_tokenizer_max_length(folder: Path, max_length: int) -> None:
    """`model_max_length` in the saved tokenizer_config.json (the live tokenizer is shared with the data: untouched)."""
    import json

    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    config["model_max_length"] = int(max_length)
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def export_module(module: TaskModule, out_dir: str | Path, tokenizer: Any = None, max_length: int | None = None,
                  overwrite: bool = False) -> Path:
    """`save_hf_folder` into a temporary sibling, renamed into place at the end: a failure or an interrupt
    never leaves a half folder that looks like an export."""
    out = Path(out_dir).expanduser()
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise FTLError(f"--out '{out_dir}' already exists and is not empty: pick a new folder")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_hf_folder(module, tmp, tokenizer, max_length)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def module_from_checkpoint(module_class: type[L.LightningModule], ckpt_path: str | Path) -> L.LightningModule:
    """`load_from_checkpoint` on CPU with `weights_only=True` (a checkpoint cannot run code); errors in one line."""
    import pickle

    try:
        return module_class.load_from_checkpoint(str(ckpt_path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, KeyError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise FTLError(f"cannot load '{ckpt_path}' as {module_class.__name__} ({first}): pass a checkpoint "
                       "written by ftl and the config it was trained with (--run_config)") from None


def tokenizer_for(module: L.LightningModule) -> Any:
    """The tokenizer of the module's `pretrained` (the data module's tokenizer is the same one, by the CLI link)."""
    from ftl.hub import load_tokenizer

    hparams = dict(module.hparams)
    if not hparams.get("pretrained"):
        return None
    return load_tokenizer(hparams["pretrained"], trust_remote_code=bool(hparams.get("trust_remote_code")))


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path, config: str | Path | None = None,
                      tokenizer: Any = None, overwrite: bool = False) -> Path:
    """Build the module of `config` (default: the run's config.yaml beside `checkpoints/`) from the checkpoint
    and save it as a Hugging Face folder (see `export_module`)."""
    ckpt = Path(ckpt_path).expanduser()
    if not ckpt.is_file():
        raise FTLError(f"checkpoint '{ckpt_path}' not found: pass a .ckpt file (runs/<task>/<run>/checkpoints/)")
    out = Path(out_dir).expanduser()
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise FTLError(f"--out '{out_dir}' already exists and is not empty: pick a new folder")
    found = _config_file(ckpt, config)
    module = module_from_checkpoint(_module_class(found), ckpt)
    return export_module(module, out, tokenizer if tokenizer is not None else tokenizer_for(module),
                         max_length=_data_max_length(found), overwrite=overwrite)


def _config_file(ckpt: Path, config: str | Path | None) -> Path:
    candidates = [Path(config).expanduser()] if config else [ckpt.parent.parent / "config.yaml",
                                                            ckpt.parent / "config.yaml"]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        where = f"'{config}' not found" if config else f"no config.yaml beside {ckpt.parent}"
        raise FTLError(f"cannot tell which model class wrote '{ckpt}' ({where}): pass --run_config <its config.yaml>")
    return found


def _data_max_length(config_file: Path) -> int | None:
    import yaml

    try:
        value = ((yaml.safe_load(config_file.read_text()) or {}).get("data") or {}).get("init_args", {})["max_length"]
    except (KeyError, TypeError, AttributeError, yaml.YAMLError):
        return None
    return int(value) if isinstance(value, int) else None


def _module_class(found: Path) -> type[L.LightningModule]:
    """The LightningModule class named by `model.class_path` in the config (the checkpoint does not record it)."""
    import yaml

    try:
        class_path = (yaml.safe_load(found.read_text()) or {})["model"]["class_path"]
        module_name, _, class_name = str(class_path).rpartition(".")
        return getattr(importlib.import_module(module_name), class_name)
    except (KeyError, TypeError, ValueError, ImportError, AttributeError, yaml.YAMLError):
        raise FTLError(f"config '{found}' has no importable model.class_path: pass the config the checkpoint "
                       "was trained with (--run_config)") from None
