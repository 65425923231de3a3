"""`ftl` / `python -m ftl`: LightningCLI with one run directory per run, linked arguments and test-after-fit.

Model and data are given in subclass mode (`class_path` in the YAML), so any LightningModule or
LightningDataModule plugs in without touching this file. The CLI adds only what every task shares:
- links: `model.pretrained` -> `data.tokenizer`; the data's `num_labels`/`label_names` -> the model;
- a fresh run directory (`runs/<config name>/<timestamp>`) that holds config, checkpoints, logs, metrics;
- after `fit`, the best checkpoint is tested when there is a test split (`--test_after_fit false` skips it).
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ftl.callbacks import PredictionWriter, RunOutputs
from ftl.errors import FTLError

_CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"
_RUN_DIR_ENV = "FTL_RUN_DIR"  # lets DDP worker processes find the run directory rank 0 made


class FTLCLI(LightningCLI):
    """LightningCLI with ftl's shared defaults; everything task-specific lives in the YAML."""

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        self.run_dir: Path | None = None
        self._made_run_dir = False
        super().__init__(
            model_class=None,
            datamodule_class=None,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=42,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"callbacks": [RunOutputs(), PredictionWriter()]},
            auto_configure_optimizers=False,
            args=args,
            run=run,
            **kwargs,
        )

    # ------------------------------------------------------------------ arguments
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_dir", type=str | None, default=None,
                            help="Run directory (default: <runs_root>/<run_name>/<timestamp>, always new).")
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="Name of the run family (default: the config file's name).")
        parser.add_argument("--runs_root", type=str, default="runs", help="Where run directories are made.")
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="After fit, test the best checkpoint when the data has a test split.")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch}-step{step}",
                "checkpoint.auto_insert_metric_name": False,
                "trainer.accelerator": "auto",
            }
        )
        parser.link_arguments("model.init_args.pretrained", "data.init_args.tokenizer")
        parser.link_arguments("data.num_labels", "model.init_args.num_labels", apply_on="instantiate")
        parser.link_arguments("data.label_names", "model.init_args.label_names", apply_on="instantiate")

    # ------------------------------------------------------------------ run directory
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        self.run_dir = self._make_run_dir(config)
        config.trainer.default_root_dir = str(self.run_dir)
        if not config.checkpoint.dirpath:
            config.checkpoint.dirpath = str(self.run_dir / "checkpoints")
        config.trainer.logger = self._loggers_in(config.trainer.logger, self.run_dir)

    def _make_run_dir(self, config) -> Path:
        inherited = os.environ.get(_RUN_DIR_ENV)
        if inherited and os.environ.get("LOCAL_RANK", "0") != "0":
            return Path(inherited)
        resuming = bool(getattr(config, "ckpt_path", None))
        if config.run_dir:
            path = Path(config.run_dir).expanduser()
            if self.subcommand == "fit" and not resuming and path.is_dir() and any(path.iterdir()):
                raise FTLError(
                    f"run_dir '{path}' already holds a run: pick a new --run_dir, or resume it with --ckpt_path last"
                )
        else:
            name = config.run_name or self._config_name(config)
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            if self.subcommand and self.subcommand != "fit":
                stamp += f"-{self.subcommand}"
            base = Path(config.runs_root).expanduser() / name
            path, n = base / stamp, 1
            while path.exists():
                n += 1
                path = base / f"{stamp}-{n}"
        self._made_run_dir = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        os.environ[_RUN_DIR_ENV] = str(path)
        print(f"ftl: run directory: {path}", file=sys.stderr)
        return path

    @staticmethod
    def _config_name(config) -> str:
        files = [c for c in (config.get("config") or []) if c]
        if files:
            return Path(str(files[-1])).stem
        class_path = str(config.model.class_path) if config.get("model") else "run"
        return class_path.rsplit(".", 1)[-1].lower()

    @staticmethod
    def _loggers_in(logger: Any, run_dir: Path) -> Any:
        """Point every logger at the run directory and make sure a CSV logger writes metrics.csv there."""
        from jsonargparse import Namespace

        if logger is False:
            return False
        loggers = [] if logger in (None, True) else list(logger) if isinstance(logger, list) else [logger]
        for item in loggers:
            init = item.get("init_args") or Namespace()
            if init.get("save_dir") in (None, ".", "", "lightning_logs"):
                init.save_dir = str(run_dir)
            if str(item.class_path).endswith("CSVLogger"):
                init.name, init.version = "", ""
            item.init_args = init
        if not any(str(item.class_path).endswith("CSVLogger") for item in loggers):
            loggers.append(
                Namespace(class_path=_CSV_LOGGER, init_args=Namespace(save_dir=str(run_dir), name="", version=""))
            )
        return loggers

    # ------------------------------------------------------------------ running
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:
            if find_user_error(err):
                self._discard_run_dir()
            raise

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except Exception as err:
            if find_user_error(err):
                self._discard_run_dir()
            raise
        if self.run_dir is not None:
            print(f"ftl: outputs in {self.run_dir}", file=sys.stderr)

    def _discard_run_dir(self) -> None:
        """A run that failed on bad input leaves nothing behind (and never touches other runs)."""
        if self._made_run_dir and self.run_dir is not None and not any(self.run_dir.glob("checkpoints/*.ckpt")):
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def after_fit(self) -> None:
        config = self.config["fit"]
        has_test = getattr(self.datamodule, "has_split", lambda split: False)("test")
        if not (config.test_after_fit and has_test):
            return
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, weights_only=True)


def _configure_environment() -> None:
    """Quiet, offline-safe defaults that a user's environment can still override."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`isinstance.treespec, LeafSpec.` is deprecated.*")


# Subcommands beyond Lightning's fit/validate/test/predict: "module:function" taking the remaining argv.
EXTRA_COMMANDS: dict[str, str] = {}


def main(args: Any = None) -> None:
    """Entry point of `ftl` and `python -m ftl`; user errors print one line and exit with status 2."""
    _configure_environment()
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if argv and argv[0] in EXTRA_COMMANDS:
            import importlib

            module, function = EXTRA_COMMANDS[argv[0]].split(":")
            getattr(importlib.import_module(module), function)(argv[1:])
        else:
            check_config_files(argv)
            FTLCLI(args=argv)
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None:
            raise
        print(f"ftl: error: {user_error}", file=sys.stderr)
        raise SystemExit(2) from None


def check_config_files(argv: list[str]) -> None:
    """Missing or malformed `--config` files become one clear line (jsonargparse prints a parser dump)."""
    import yaml

    for flag, value in zip(argv, argv[1:], strict=False):
        if flag not in ("--config", "-c"):
            continue
        path = Path(value).expanduser()
        if not path.is_file():
            raise FTLError(f"config file '{value}' not found: check the path (task configs live in configs/)")
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise FTLError(f"config file '{value}' is not valid YAML{where} ({problem}): fix the YAML") from None


def find_user_error(err: BaseException | None) -> FTLError | None:
    """The FTLError behind `err`, if any: jsonargparse wraps errors raised while instantiating classes."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, FTLError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
