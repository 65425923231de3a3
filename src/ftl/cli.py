"""`ftl` / `python -m ftl`: LightningCLI with one run directory per run, linked arguments and test-after-fit.

Model and data are given in subclass mode (`class_path` in the YAML), so any LightningModule or
LightningDataModule plugs in without touching this file. The CLI adds only what every task shares:
- links: `model.pretrained` -> `data.tokenizer`; the data's `num_labels`/`label_names` -> the model;
- a fresh run directory (`runs/<config name>/<timestamp>`) that holds config, checkpoints, logs, metrics;
- after `fit`, the best checkpoint is tested when there is a test split (`--test_after_fit false` skips it),
  and compared with the model before fine-tuning with `--compare_after_fit true`.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from ftl.callbacks import HFExport, Plots, PredictionWriter, ResumeRandomState, RunOutputs, RunSummary, Throughput
from ftl.errors import FTLError
from ftl.loggers import WandbReport, finish_wandb, log_config, prepare_wandb_env, start_wandb, wandb_loggers
from ftl.malloc import tune_malloc

_CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"
_LINKED_INTO_MODEL = ("num_labels", "label_names", "label_counts")  # from the data module, see link_arguments
_RUN_DIR_ENV = "FTL_RUN_DIR"  # lets DDP worker processes find the run directory rank 0 made


class FTLCLI(LightningCLI):
    """LightningCLI with ftl's shared defaults; everything task-specific lives in the YAML."""

    run_label: str | None = None  # names run directories made without a subcommand (run=False), e.g. "compare"

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        self.run_dir: Path | None = None
        self._made_run_dir = False
        tune_malloc()  # before the model and data allocate anything: see ftl.malloc
        import_builtin_classes()
        kwargs.setdefault("parser_class", FTLArgumentParser)
        super().__init__(
            model_class=None,
            datamodule_class=None,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=42,
            save_config_callback=RunConfig,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"callbacks": [RunOutputs(), PredictionWriter(), WandbReport(), Throughput(), RunSummary(),
                                            Plots(), HFExport(), ResumeRandomState()]},
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
        parser.add_argument("--compare_after_fit", type=bool, default=False,
                            help="After fit, compare the model before fine-tuning with the best checkpoint on the "
                            "test split (compare.md, compare.json).")
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
        # training rows per label, for class_weights: balanced (dropped for models without `label_counts`)
        parser.link_arguments("data.train_label_counts", "model.init_args.label_counts", apply_on="instantiate")

    # ------------------------------------------------------------------ run directory
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        self.run_dir = self._make_run_dir(config)
        config.trainer.default_root_dir = str(self.run_dir)
        if not config.checkpoint.dirpath:
            config.checkpoint.dirpath = str(self.run_dir / "checkpoints")
        config.trainer.logger = self._loggers_in(config.trainer.logger, self.run_dir)
        self._adjust_callbacks(config.trainer)
        self._without_validation(config)
        self._earlier_metrics = self._metrics_before_resume(config)

    def _metrics_before_resume(self, config) -> list[dict[str, float]]:
        """The rows of a resumed run's metrics.csv up to its checkpoint: Lightning's CSV logger deletes the file
        it finds, so they are handed to the new logger (`_keep_earlier_metrics`) and metrics.csv keeps every epoch."""
        path = self.run_dir / "metrics.csv" if self.run_dir else None
        if self.subcommand != "fit" or not config.get("ckpt_path") or not path or not path.is_file():
            return []
        ckpt = Path(config.checkpoint.dirpath) / "last.ckpt" if config.ckpt_path == "last" else Path(config.ckpt_path)
        if not ckpt.is_file():
            return []
        import csv

        import torch

        state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        step, epoch = state.get("global_step", 0), state.get("epoch", 0)
        rows = []
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                try:
                    values = {key: float(value) for key, value in row.items() if key and value not in ("", None)}
                except ValueError:
                    continue
                if values.get("step", 0) <= step and values.get("epoch", 0) <= epoch:  # not the interrupted epoch
                    values["step"] = int(values.get("step", 0))
                    rows.append(values)
        return rows

    def _keep_earlier_metrics(self) -> None:
        from lightning.pytorch.loggers import CSVLogger
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        rows = getattr(self, "_earlier_metrics", None)
        if not rows or rank_zero_only.rank != 0:
            return
        for logger in self.trainer.loggers:
            if isinstance(logger, CSVLogger) and Path(logger.log_dir).resolve() == self.run_dir.resolve():
                logger.experiment.metrics[:0] = rows  # written out with the resumed run's first rows

    def _adjust_callbacks(self, trainer: Any) -> None:
        """No LearningRateMonitor from a task config when `--trainer.logger false` leaves it nowhere to log.

        (The progress bar needs nothing here: with `rich` installed, as ftl requires, Lightning's default is
        RichProgressBar; `--trainer.enable_progress_bar false` turns it off for logs.)
        """
        if trainer.get("logger") is False and any(_callback_name(cb).endswith("LearningRateMonitor")
                                                 for cb in trainer.get("callbacks") or []):
            trainer.callbacks = [cb for cb in trainer.callbacks
                                 if not _callback_name(cb).endswith("LearningRateMonitor")]

    def _without_validation(self, config: Any) -> None:
        """`--trainer.limit_val_batches 0` (a quick or timing run): nothing to stop early or pick a best checkpoint
        on, so the config's EarlyStopping is dropped and checkpoints keep the latest model, said in one line."""
        if config.trainer.get("limit_val_batches") not in (0, 0.0):
            return
        callbacks = config.trainer.get("callbacks") or []
        kept = [cb for cb in callbacks if not _callback_name(cb).endswith("EarlyStopping")]
        if len(kept) != len(callbacks) or config.checkpoint.monitor:
            print("ftl: validation is off (limit_val_batches 0): no early stopping, checkpoints keep the latest "
                  "model", file=sys.stderr)
        config.trainer.callbacks = kept
        config.checkpoint.monitor = None

    def _resume_last(self, config) -> Path | None:
        """`--ckpt_path last` without `--run_dir`: the newest run of this config that saved a last.ckpt.

        `fit` continues in that run's own directory (Lightning finds last.ckpt in its checkpoints/); other
        subcommands evaluate that checkpoint and write their outputs to a new directory as usual.
        """
        if config.get("ckpt_path") != "last" or config.run_dir or config.checkpoint.dirpath:
            return None
        base = Path(config.runs_root).expanduser() / (config.run_name or self._config_name(config))
        found = [p for p in base.glob("*/checkpoints/last.ckpt") if p.is_file()]
        if not found:
            raise FTLError(
                f"--ckpt_path last: no run under '{base}' has checkpoints/last.ckpt: "
                "train one first, or pass --run_dir of the run to resume (or a checkpoint file)"
            )
        last = max(found, key=lambda p: p.stat().st_mtime)
        if self.subcommand != "fit":
            config.ckpt_path = str(last)
            return None
        print(f"ftl: resuming {last}", file=sys.stderr)
        return last.parent.parent

    def _make_run_dir(self, config) -> Path:
        resumed = self._resume_last(config)
        inherited = os.environ.get(_RUN_DIR_ENV)
        if inherited and os.environ.get("LOCAL_RANK", "0") != "0":
            return Path(inherited)
        if resumed is not None:
            os.environ[_RUN_DIR_ENV] = str(resumed)
            print(f"ftl: run directory: {resumed}", file=sys.stderr)
            return resumed
        resuming = bool(getattr(config, "ckpt_path", None))
        if config.run_dir:
            path = Path(config.run_dir).expanduser()
            if self.subcommand == "fit" and not resuming and path.is_dir() and any(path.iterdir()):
                raise FTLError(
                    f"run_dir '{path}' already holds a run: pick a new --run_dir, or resume it with --ckpt_path last"
                )
            last = path / "checkpoints" / "last.ckpt"
            if self.subcommand == "fit" and config.ckpt_path == "last" and not config.checkpoint.dirpath \
                    and not last.is_file():
                raise FTLError(f"--ckpt_path last: '{last}' does not exist: check --run_dir or pass a checkpoint file")
        else:
            name = config.run_name or self._config_name(config)
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            label = self.subcommand or self.run_label
            if label and label != "fit":
                stamp += f"-{label}"
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
        if any(str(item.class_path).endswith("WandbLogger") for item in loggers):
            prepare_wandb_env()  # offline, said in one line, when there is no API key and no WANDB_MODE
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
    def _parse_ckpt_path(self) -> None:
        """Lightning copies a checkpoint's hyperparameters into the config, among them the values of links the
        model did not take (a model without `label_counts` still records `label_counts: None`), which would then
        fail as unexpected arguments: leave linked values to the links."""
        super()._parse_ckpt_path()
        subcommand = self.config.get("subcommand")
        model = self.config[subcommand].get("model") if subcommand else None
        extra = model.get("dict_kwargs") if model is not None and hasattr(model, "get") else None
        for key in _LINKED_INTO_MODEL:
            if extra:
                extra.pop(key, None)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:
            if find_user_error(err):
                self._discard_run_dir()
            raise
        self._keep_earlier_metrics()

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            start_wandb(self.trainer)  # here, where a W&B that cannot start falls back instead of ending the run
            super()._run_subcommand(subcommand)
        except BaseException as err:
            finish_wandb(getattr(self, "trainer", None), self.run_dir, ok=False)
            if isinstance(err, Exception) and find_user_error(err):
                self._discard_run_dir()
            raise
        # after test-after-fit, so the summary, comparison and plots other callbacks wrote are there to send
        finish_wandb(self.trainer, self.run_dir, ok=True)
        if self.run_dir is not None:
            print(f"ftl: outputs in {self.run_dir}", file=sys.stderr)

    def _discard_run_dir(self) -> None:
        """A run that failed on bad input leaves nothing behind (and never touches other runs)."""
        if self._made_run_dir and self.run_dir is not None and not any(self.run_dir.glob("checkpoints/*.ckpt")):
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def after_fit(self) -> None:
        config = self.config["fit"]
        has_test = getattr(self.datamodule, "has_split", lambda split: False)("test")
        if not has_test:
            return
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
        if config.test_after_fit:
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, weights_only=True)
        if config.compare_after_fit and self.trainer.world_size == 1:  # (multi-process: run `ftl compare` after)
            from ftl.compare import compare_after_fit

            compare_after_fit(self.model, self.datamodule, self.run_dir, best or None, config.seed_everything,
                              config.trainer)


def _callback_name(callback: Any) -> str:
    """The class path of a callback as the config holds it (a class_path namespace, or an instance)."""
    return str(callback.get("class_path", "")) if hasattr(callback, "get") else type(callback).__name__


# ftl's own modules and data modules, imported before parsing so `--model SequenceClassifier` or
# `--data TextClassificationDataModule` work by class name (jsonargparse resolves names among loaded subclasses).
BUILTIN_MODULES = (
    "ftl.models.classifier", "ftl.models.causal_lm", "ftl.models.multilabel",
    "ftl.data.classification", "ftl.data.qa", "ftl.data.multilabel", "ftl.data.synthetic",
)


def import_builtin_classes() -> None:
    import importlib

    for name in BUILTIN_MODULES:
        importlib.import_module(name)


class FTLArgumentParser(LightningArgumentParser):
    """Parse errors as a short message and a pointer to --help, instead of the full usage of every option."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "").replace("__main__.py", "python -m ftl")
        sys.stderr.write(f"{prog}: error: {condense_parse_error(message)}\n(`{prog} --help` lists every option)\n")
        raise SystemExit(2)


# The lines of a jsonargparse message that say what was wrong (the rest lists every Union subtype tried).
_PARSE_ERROR_DETAILS = ("Got value", "is not accepted", "Expected a path", "is required", "not a valid", "Import path")


def condense_parse_error(message: str) -> str:
    """`model.learning_rate: Expected a <class 'float'>. Got value: x` from jsonargparse's nested explanation
    of a bad value in subclass mode; other messages are returned unchanged."""
    lines = [line.strip().removeprefix("- ").strip() for line in message.strip().splitlines() if line.strip()]
    if len(lines) == 1:
        return message.strip()
    detail = next((line for line in lines if any(mark in line for mark in _PARSE_ERROR_DETAILS)), None)
    if detail is not None:
        keys = re.findall(r'Parser key "([^"]+)"', message[: message.find(detail)])
    else:  # a plain type mismatch: the first type expected and the value given
        expected = next((line for line in lines if line.startswith("Expected a")), None)
        given = next((line for line in lines if line.startswith("Given value:")), None)
        if expected is None or given is None:
            return message.strip()
        detail, keys = f"{expected}. {given}", re.findall(r'Parser key "([^"]+)"', message)
    return f"{'.'.join(keys)}: {detail}" if keys else detail


class RunConfig(SaveConfigCallback):
    """Saves the resolved config to the run directory, and the same config, nested, into W&B runs.

    Lightning writes config.yaml to the first logger's save_dir (a W&B save_dir shared by runs would make
    them overwrite each other's config); here it always goes to the run directory.
    """

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / self.config_filename
            path.parent.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(path), skip_none=False, overwrite=self.overwrite,
                             multifile=self.multifile)
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        import yaml

        if not wandb_loggers(trainer):
            return
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        # values linked in from the data (num_labels, label_names) are what the model received: add them
        init_args = (config.get("model") or {}).setdefault("init_args", {})
        for key, value in dict(getattr(pl_module, "hparams_initial", {})).items():
            if not key.startswith("_") and key not in init_args:
                init_args[key] = list(value) if isinstance(value, tuple) else value
        run_dir = Path(trainer.default_root_dir)
        config["run_dir"] = str(run_dir)
        log_config(trainer, config, run_name=f"{run_dir.parent.name}/{run_dir.name}")


def _configure_environment() -> None:
    """Quiet, offline-safe defaults that a user's environment can still override."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`isinstance.treespec, LeafSpec.` is deprecated.*")
    # main() hands LightningCLI the argv it was given (sys.argv[1:] minus an extra command's name): not a mistake
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")


# Subcommands beyond Lightning's fit/validate/test/predict: "module:function" taking the remaining argv.
EXTRA_COMMANDS: dict[str, str] = {
    "compare": "ftl.compare:main",  # base vs fine-tuned model on the same test split -> compare.md
    "export": "ftl.export:main",  # a checkpoint as a Hugging Face folder
    "mcq": "ftl.mcq:main",  # multiple-choice (MMLU-style) accuracy of a causal LM
    "sweep": "ftl.sweep:main",  # a W&B sweep file run locally, trials as `ftl fit` runs, leaderboard
}


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
