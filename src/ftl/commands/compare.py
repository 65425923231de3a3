"""`ftl compare --config X.yaml (--ckpt_path CKPT | --finetuned HF_DIR) [overrides]`: the base model and the
fine-tuned one on the same test split, into compare.md / compare.json of a new run directory.

Parsed by the same LightningCLI as `ftl test` (every `--model.*`, `--data.*`, `--trainer.*` option, `--config`,
`--help`), plus the two options naming the fine-tuned model; the comparison itself is `ftl.reports.compare`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ftl.commands.cli import FTLCLI
from ftl.commands.parsing import check_config_files, prog_name
from ftl.errors import FTLError
from ftl.reports.compare import compare_models, describe_base, eval_trainer_kwargs, finetuned_model


class CompareCLI(FTLCLI):
    """FTLCLI without a subcommand: builds model and data from the config, then `main` compares."""

    run_label = "compare"

    def add_arguments_to_parser(self, parser: Any) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="Lightning checkpoint of the fine-tuned model (runs/<task>/<run>/checkpoints/*.ckpt, "
                            "or `last`: the newest run of this config).")
        parser.add_argument("--finetuned", type=str | None, default=None,
                            help="An exported Hugging Face folder (hf_model/) of the fine-tuned model, or a "
                            "checkpoint.")

    def before_instantiate_classes(self) -> None:
        given = [value for value in (self.config.ckpt_path, self.config.finetuned) if value]
        if len(given) != 1:
            raise FTLError("ftl compare needs the fine-tuned model: --ckpt_path <file.ckpt> or --finetuned "
                           "<hf folder> (one of them)")
        if self.config.ckpt_path != "last" and not Path(given[0]).expanduser().exists():
            raise FTLError(f"fine-tuned model '{given[0]}' not found: pass a .ckpt file or an exported hf_model/ "
                           "folder")
        super().before_instantiate_classes()  # resolves `--ckpt_path last` to the newest run's last.ckpt


def main(argv: list[str]) -> None:
    """`ftl compare --config X.yaml --ckpt_path Y [overrides]`."""
    check_config_files(argv)
    cli = CompareCLI(args=argv, run=False, parser_kwargs={"prog": prog_name("compare")})
    seed = cli.config.get("seed_everything")
    path = cli.config.ckpt_path or cli.config.finetuned
    try:
        cli.parser.save(cli.config, str(cli.run_dir / "config.yaml"), skip_none=False, overwrite=True)
        # LightningCLI seeded and then built cli.model: it is the "before" model (see fresh_model)
        finetuned = finetuned_model(cli.model, path)
        compare_models(cli.model, finetuned, cli.datamodule, cli.run_dir, before_model=describe_base(cli.model, seed),
                       after_model=f"`{path}`", trainer_kwargs=eval_trainer_kwargs(cli.config.trainer))
    except FTLError:
        cli._discard_run_dir()  # bad input leaves no run directory behind, as for the other subcommands
        raise
    print(f"ftl: outputs in {cli.run_dir}", file=sys.stderr)
