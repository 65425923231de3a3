"""Hugging Face export: a folder that `AutoModel*.from_pretrained` and `transformers.pipeline` load without ftl.

At the end of `fit` the best checkpoint goes to `<run_dir>/hf_model/` (callback `ftl.callbacks.HFExport`);
`ftl export --ckpt_path X.ckpt --out DIR` does the same for any checkpoint. The folder holds the model (LoRA
adapters merged), its tokenizer, and for classifiers `id2label`/`label2id` with the label names.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
from pathlib import Path
from typing import Any

import lightning as L

from ftl.errors import FTLError


def save_hf_folder(module: L.LightningModule, out_dir: str | Path, tokenizer: Any = None) -> Path:
    """Save `module.model` (adapters merged) and `tokenizer` with `save_pretrained` into `out_dir`.

    Classifiers' label names become `id2label`/`label2id`, so pipelines answer with names. A tuned binary
    decision threshold is kept as `ftl_decision_threshold` in config.json for the record: pipelines use argmax.
    """
    from ftl.models.lora import export_model

    if not hasattr(getattr(module, "model", None), "save_pretrained"):
        raise FTLError(f"{type(module).__name__} has no Hugging Face model at `.model`: nothing to export")
    model = export_model(module)
    names = getattr(module, "label_names", None)
    if names:
        model.config.id2label = dict(enumerate(names))
        model.config.label2id = {name: i for i, name in enumerate(names)}
    threshold = getattr(module, "threshold", None)
    if threshold is not None:
        model.config.ftl_decision_threshold = float(threshold)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def module_from_checkpoint(module_class: type[L.LightningModule], ckpt_path: str | Path) -> L.LightningModule:
    """`load_from_checkpoint` on CPU with `weights_only=True` (a checkpoint cannot run code); errors in one line."""
    import pickle

    try:
        return module_class.load_from_checkpoint(str(ckpt_path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, KeyError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise FTLError(f"cannot load '{ckpt_path}' as {module_class.__name__} ({first}): pass a checkpoint "
                       "written by ftl and the config it was trained with (--config)") from None


def tokenizer_for(module: L.LightningModule) -> Any:
    """The tokenizer of the module's `pretrained` (the data module's tokenizer is the same one, by the CLI link)."""
    from ftl.models.hub import load_tokenizer

    hparams = dict(module.hparams)
    if not hparams.get("pretrained"):
        return None
    return load_tokenizer(hparams["pretrained"], trust_remote_code=bool(hparams.get("trust_remote_code")))


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path, config: str | Path | None = None,
                      tokenizer: Any = None, overwrite: bool = False) -> Path:
    """Build the module of `config` (default: the run's config.yaml beside `checkpoints/`) from the checkpoint
    and save it as a Hugging Face folder. Writes into a temporary sibling first, so a failure leaves no half folder."""
    ckpt = Path(ckpt_path).expanduser()
    if not ckpt.is_file():
        raise FTLError(f"checkpoint '{ckpt_path}' not found: pass a .ckpt file (runs/<task>/<run>/checkpoints/)")
    out = Path(out_dir).expanduser()
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise FTLError(f"--out '{out_dir}' already exists and is not empty: pick a new folder")
    module = module_from_checkpoint(_module_class(ckpt, config), ckpt)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_hf_folder(module, tmp, tokenizer if tokenizer is not None else tokenizer_for(module))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _module_class(ckpt: Path, config: str | Path | None) -> type[L.LightningModule]:
    """The LightningModule class named by `model.class_path` in the config (the checkpoint does not record it)."""
    import yaml

    candidates = [Path(config).expanduser()] if config else [ckpt.parent.parent / "config.yaml",
                                                            ckpt.parent / "config.yaml"]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        where = f"'{config}' not found" if config else f"no config.yaml beside {ckpt.parent}"
        raise FTLError(f"cannot tell which model class wrote '{ckpt}' ({where}): pass --config <its config.yaml>")
    try:
        class_path = (yaml.safe_load(found.read_text()) or {})["model"]["class_path"]
        module_name, _, class_name = str(class_path).rpartition(".")
        return getattr(importlib.import_module(module_name), class_name)
    except (KeyError, TypeError, ValueError, ImportError, AttributeError, yaml.YAMLError):
        raise FTLError(f"config '{found}' has no importable model.class_path: pass the config the checkpoint "
                       "was trained with (--config)") from None


def main(argv: list[str]) -> None:
    """`ftl export --ckpt_path X.ckpt --out DIR [--config run/config.yaml]`."""
    parser = argparse.ArgumentParser(
        prog="ftl export",
        description="Save a Lightning checkpoint as a Hugging Face folder (model + tokenizer + label names) that "
        "transformers.AutoModel*.from_pretrained and pipeline(...) load.",
    )
    parser.add_argument("--ckpt_path", required=True, help="the checkpoint (runs/<task>/<run>/checkpoints/*.ckpt)")
    parser.add_argument("--out", required=True, help="new folder to write")
    parser.add_argument("--config", default=None,
                        help="config the checkpoint was trained with (default: the run's config.yaml)")
    args = parser.parse_args(argv)
    out = export_checkpoint(args.ckpt_path, args.out, args.config)
    print(f"ftl: exported {args.ckpt_path} to {out} (transformers.pipeline(..., model='{out}') loads it)",
          file=sys.stderr)
