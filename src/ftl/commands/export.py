"""`ftl export --ckpt_path X.ckpt --out DIR`: a checkpoint as a Hugging Face folder (see `ftl.reports.export`)."""

from __future__ import annotations

import sys
from pathlib import Path

from ftl.commands.parsing import function_command, prog_name


def export(ckpt_path: str, out: str, run_config: str | None = None) -> Path:
    """Save a Lightning checkpoint as a Hugging Face folder (model + tokenizer + label names) that
    transformers.AutoModel*.from_pretrained and pipeline(...) load.

    Args:
        ckpt_path: the checkpoint (runs/<task>/<run>/checkpoints/*.ckpt).
        out: a new folder to write (refused if it exists and is not empty).
        run_config: the config the checkpoint was trained with (default: the run's config.yaml).
    """
    from ftl.reports.export import export_checkpoint

    folder = export_checkpoint(ckpt_path, out, run_config)
    print(f"ftl: exported {ckpt_path} to {folder} (transformers.pipeline(..., model='{folder}') loads it)",
          file=sys.stderr)
    return folder


def main(argv: list[str]) -> None:
    function_command(prog_name("export"), export, argv)
