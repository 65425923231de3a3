"""`ftl compare --config X.yaml (--ckpt_path CKPT | --finetuned HF_DIR) [overrides]`: the base model and the
fine-tuned one on the same test split, into compare.md / compare.json of a new run directory.

`ftl compare --runs RUN_A RUN_B [...] [--baseline RUN]`: finished runs compared on their per-row test records
(`ftl.reports.compare_runs`), no model loaded.

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
        parser.add_argument("--runs", type=list[str] | None, default=None,
                            help="Instead of a model: run directories to compare on their test records (`ftl compare "
                            "--runs RUN_A RUN_B [...] [--baseline RUN] [--ci_resamples N] [--out DIR]`).")

    def before_instantiate_classes(self) -> None:
        given = [value for value in (self.config.ckpt_path, self.config.finetuned) if value]
        if len(given) != 1:
            raise FTLError("ftl compare needs the fine-tuned model: --ckpt_path <file.ckpt> or --finetuned "
                           "<hf folder> (one of them)")
        if self.config.ckpt_path != "last" and not Path(given[0]).expanduser().exists():
            raise FTLError(f"fine-tuned model '{given[0]}' not found: pass a .ckpt file or an exported hf_model/ "
                           "folder")
        super().before_instantiate_classes()  # resolves `--ckpt_path last` to the newest run's last.ckpt


def runs_parser() -> Any:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog=prog_name("compare"), description="Compare finished runs on their per-row test "
                            "records: each run against the baseline, with paired intervals, p-values and verdicts.")
    parser.add_argument("--runs", nargs="+", required=True,
                        help="Run directories (each tested: metrics.json, test_rows.json); the first is the baseline.")
    parser.add_argument("--baseline", type=str | None, default=None,
                        help="The run the others are compared with (default: the first of --runs).")
    parser.add_argument("--ci_resamples", type=int, default=1000,
                        help="Bootstrap resamples per interval (permutation tests use at least 9,999; 0: no "
                        "intervals, McNemar only).")
    parser.add_argument("--out", type=str | None, default=None,
                        help="Folder for compare.md / compare.json (default: a new runs/compare/<timestamp>-runs).")
    parser.add_argument("--runs_root", type=str, default="runs", help="Where the default --out folder is made.")
    return parser


def main_runs(argv: list[str]) -> None:
    """`ftl compare --runs RUN_A RUN_B [...] [--baseline RUN] [--ci_resamples N] [--out DIR]`."""
    from ftl.commands.rundir import new_run_dir
    from ftl.reports.compare_runs import compare_runs, write_runs_comparison

    parser = runs_parser()
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        return
    args = parser.parse_args(argv)
    if args.ci_resamples < 0:
        raise FTLError(f"--ci_resamples must be 0 (off) or a positive number, got {args.ci_resamples}")
    result = compare_runs(args.runs, args.baseline, args.ci_resamples)  # bad runs fail before a folder is made
    out = Path(args.out).expanduser() if args.out else new_run_dir(args.runs_root, "compare", "runs").path
    out.mkdir(parents=True, exist_ok=True)
    print(write_runs_comparison(result, out))
    print(f"ftl: compare: wrote {out / 'compare.md'} and compare.json", file=sys.stderr)


def main(argv: list[str]) -> None:
    """`ftl compare --config X.yaml --ckpt_path Y [overrides]`, or `ftl compare --runs A B [...]`."""
    if any(arg == "--runs" or arg.startswith("--runs=") for arg in argv):
        main_runs(argv)
        return
    check_config_files(argv)
    cli = CompareCLI(args=argv, run=False, parser_kwargs={"prog": prog_name("compare")})
    seed = cli.config.get("seed_everything")
    path = cli.config.ckpt_path or cli.config.finetuned
    try:
        cli.parser.save(cli.config, str(cli.run_dir / "config.yaml"), skip_none=False, overwrite=True)
        # LightningCLI seeded and then built cli.model: it is the "before" model (see fresh_model)
        finetuned = finetuned_model(cli.model, path)
        compare_models(cli.model, finetuned, cli.datamodule, cli.run_dir, before_model=describe_base(cli.model, seed),
                       after_model=f"`{path}`", trainer_kwargs=eval_trainer_kwargs(cli.config.trainer),
                       resamples=cli.config.ci_resamples)
    except FTLError:
        cli._discard_run_dir()  # bad input leaves no run directory behind, as for the other subcommands
        raise
    print(f"ftl: outputs in {cli.run_dir}", file=sys.stderr)
