"""`ftl fit|validate|test|predict` (LightningCLI) and the entry point that dispatches every `ftl` command.

One run directory per run (`ftl.commands.rundir`), linked arguments, test-after-fit, one-line user errors.

Model and data are given in subclass mode (`class_path` in the YAML), so any LightningModule or
LightningDataModule plugs in without touching this file. The CLI adds only what every task shares:
- links: `model.pretrained` -> `data.tokenizer`; the data's `num_labels`/`label_names` -> the model;
- a fresh run directory (`runs/<config name>/<timestamp>`) that holds config, checkpoints, logs, metrics;
- after `fit`, the best checkpoint is tested when there is a test split (`--test_after_fit false` skips it),
  and compared with the model before fine-tuning with `--compare_after_fit true`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.model_helpers import is_overridden

from ftl.commands.parsing import FTLArgumentParser, check_config_files, find_user_error
from ftl.commands.quiet import quiet_library_noise
from ftl.commands.rundir import (
    FINISHED,
    RunDirectory,
    clear_derived,
    current_run_dir,
    given_run_dir,
    mark_finished,
    new_run_dir,
    newest_resumable,
    newest_with_last,
)
from ftl.data.text import TextDataModule
from ftl.errors import FTLError
from ftl.reports.callbacks import (
    HFExport,
    Plots,
    PredictionWriter,
    ResumeRandomState,
    RunOutputs,
    RunSummary,
    Throughput,
)
from ftl.reports.checkpoint import RunCheckpoint, read_checkpoint_lazily, stream_checkpoints
from ftl.reports.interrupt import SaveOnInterrupt
from ftl.reports.intervals import CISettings
from ftl.reports.loggers import WandbReport, finish_wandb, log_config, prepare_wandb_env, start_wandb, wandb_loggers
from ftl.reports.progress import ProgressLines
from ftl.speedups import CPUSpeedups

_CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"
# from the data module, see link_arguments
_LINKED_INTO_MODEL = ("num_labels", "label_names", "label_counts", "target_stats")
_RUN_DIR_ENV = "FTL_RUN_DIR"  # lets DDP worker processes find the run directory rank 0 made


class FTLCLI(LightningCLI):
    """LightningCLI with ftl's shared defaults; everything task-specific lives in the YAML."""

    run_label: str | None = None  # names run directories made without a subcommand (run=False), e.g. "compare"

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        self.run_dir: Path | None = None
        self._run_directory: RunDirectory | None = None
        self._train_further = False  # resuming a finished run on purpose (--run_dir X --ckpt_path last)
        self._speedups = CPUSpeedups()  # switched by --cpu_speedups before the trainer exists
        self._progress_lines = ProgressLines()  # switched on when output is not a terminal (_progress_for)
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
            trainer_defaults={"callbacks": [RunOutputs(), PredictionWriter(), WandbReport(), RunSummary(),
                                            Plots(), HFExport(), ResumeRandomState(), self._speedups,
                                            SaveOnInterrupt(), self._progress_lines]},
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
        parser.add_argument("--runs_root", type=str, default="runs",
                            help="Where run directories are made (`--trainer.default_root_dir` sets the same).")
        parser.add_argument("--progress_every", type=float, default=30.0,
                            help="When output is not a terminal (a log file, nohup, a cluster job): a plain progress "
                            "line every this many seconds instead of the progress bar.")
        parser.add_argument("--cpu_speedups", type=bool, default=True,
                            help="On CPU: 16-bit dropout masks and glibc malloc thresholds (ftl.speedups); they change "
                            "the random stream relative to torch's dropout. false: torch's dropout and malloc.")
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="After fit, test the best checkpoint when the data has a test split.")
        parser.add_argument("--compare_after_fit", type=bool, default=False,
                            help="After fit, compare the model before fine-tuning with the best checkpoint on the "
                            "test split (compare.md, compare.json).")
        parser.add_argument("--ci_resamples", type=int, default=1000,
                            help="Bootstrap resamples of the test rows for the 95% interval beside every test metric "
                            "(metrics.json `<key>_ci_low`/`_ci_high`, summary.md) and the paired tests of `compare`; "
                            "0 turns the intervals off.")
        parser.add_lightning_class_args(CISettings, "statistics")  # the trainer callback that carries it
        parser.link_arguments("ci_resamples", "statistics.resamples")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_lightning_class_args(Throughput, "throughput")  # --throughput.peak_tflops, for MFU
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
        # regression: the training targets' [mean, std], for standardize_targets (only models that take it)
        parser.link_arguments("data.target_stats", "model.init_args.target_stats", apply_on="instantiate")

    # ------------------------------------------------------------------ run directory
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        # Lightning's convention: --trainer.default_root_dir DIR puts the runs under DIR (ftl's --runs_root)
        user_root, user_ckpt_dir = config.trainer.get("default_root_dir"), config.checkpoint.dirpath
        if user_root:
            config.runs_root = str(user_root)
        self.run_dir = self._make_run_dir(config)
        config.trainer.default_root_dir = str(self.run_dir)
        if not config.checkpoint.dirpath:
            config.checkpoint.dirpath = str(self.run_dir / "checkpoints")
        # config.yaml records what the user gave, not this run's paths: re-using it must make a new run
        self.save_config_kwargs["restore"] = {"trainer.default_root_dir": user_root,
                                              "checkpoint.dirpath": user_ckpt_dir, "run_dir": None}
        self._speedups.enabled = bool(config.get("cpu_speedups", True))
        self._speedups.prepare(config.trainer.get("accelerator"))  # malloc, before data and model allocate
        self._progress_for(config)
        config.trainer.logger = self._loggers_in(config.trainer.logger, self.run_dir)
        self._adjust_callbacks(config.trainer)
        self._without_validation(config)
        self._earlier_metrics = self._metrics_before_resume(config)
        if self.subcommand == "fit" and config.get("ckpt_path") and not self._run_directory.created:
            self._train_further = (self.run_dir / FINISHED).is_file()
            clear_derived(self.run_dir)

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

        state = read_checkpoint_lazily(ckpt)
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
                    if "epoch" in values:
                        values["epoch"] = int(values["epoch"])
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

    def _progress_for(self, config: Any) -> None:
        """On a terminal, Lightning's rich bar (elapsed and remaining time); otherwise plain lines (ProgressLines)
        every --progress_every seconds, since a bar writes nothing readable to a file until the run ends."""
        if sys.stderr.isatty():
            return
        self._progress_lines.every_s = float(config.get("progress_every", 30.0))
        self._progress_lines.enabled = True
        if config.trainer.get("enable_progress_bar") is None:
            config.trainer.enable_progress_bar = False

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
        """`--ckpt_path last` without `--run_dir`: `fit` continues the newest run of this config whose training
        was interrupted, in that run's own directory (Lightning finds last.ckpt in its checkpoints/), never a
        finished one; other subcommands evaluate the newest last.ckpt and write to a new directory as usual.
        """
        if config.get("ckpt_path") != "last" or config.run_dir or config.checkpoint.dirpath:
            return None
        root, name = config.runs_root, config.run_name or self._config_name(config)
        base = Path(root).expanduser() / name
        if self.subcommand != "fit":  # evaluate the newest last.ckpt, finished or not
            found = newest_with_last(root, name)
            if found is None:
                raise FTLError(f"--ckpt_path last: no run under '{base}' has checkpoints/last.ckpt: train one first, "
                               "or pass a checkpoint file")
            config.ckpt_path = str(found / "checkpoints" / "last.ckpt")
            return None
        found = newest_resumable(root, name)
        if found is None:
            finished = newest_with_last(root, name)
            if finished is not None:
                raise FTLError(f"--ckpt_path last: no interrupted run under '{base}' to resume (the newest, "
                               f"'{finished}', finished): start a new run without --ckpt_path, or train that one "
                               f"further with --run_dir {finished} --ckpt_path last --trainer.max_epochs <more>")
            raise FTLError(
                f"--ckpt_path last: no run under '{base}' has checkpoints/last.ckpt: "
                "train one first, or pass --run_dir of the run to resume (or a checkpoint file)"
            )
        print(f"ftl: resuming the interrupted run {found} from {found / 'checkpoints' / 'last.ckpt'}", file=sys.stderr)
        return found

    def _make_run_dir(self, config) -> Path:
        inherited = os.environ.get(_RUN_DIR_ENV)
        if inherited and os.environ.get("LOCAL_RANK", "0") != "0":  # a DDP worker: rank 0 made it
            self._run_directory = RunDirectory(Path(inherited), created=False)
            return Path(inherited)
        resumed = self._resume_last(config)
        fit = self.subcommand == "fit"
        if resumed is not None:
            self._run_directory = RunDirectory(resumed, created=False)
        elif config.run_dir:
            last = Path(config.run_dir).expanduser() / "checkpoints" / "last.ckpt"
            if fit and config.ckpt_path == "last" and not config.checkpoint.dirpath and not last.is_file():
                raise FTLError(f"--ckpt_path last: '{last}' does not exist: check --run_dir or pass a checkpoint file")
            self._run_directory = given_run_dir(config.run_dir, fit=fit, resuming=bool(config.get("ckpt_path")))
        else:
            label = self.subcommand or self.run_label
            self._run_directory = new_run_dir(config.runs_root, config.run_name or self._config_name(config),
                                              None if label == "fit" else label)
        path = self._run_directory.path
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
        stream_checkpoints(self.trainer)
        if isinstance(self.trainer.checkpoint_callback, RunCheckpoint):
            self.trainer.checkpoint_callback.train_further = self._train_further

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            start_wandb(self.trainer)  # here, where a W&B that cannot start falls back instead of ending the run
            super()._run_subcommand(subcommand)
        except BaseException as err:
            finish_wandb(getattr(self, "trainer", None), self.run_dir, ok=False)
            if isinstance(err, Exception) and find_user_error(err):
                self._discard_run_dir()
            raise
        if subcommand == "fit" and self.trainer.is_global_zero and not self.trainer.interrupted:
            mark_finished(self.run_dir, self.trainer.current_epoch, self.trainer.global_step)
        # after test-after-fit, so the summary, comparison and plots other callbacks wrote are there to send
        finish_wandb(self.trainer, self.run_dir, ok=True)
        if self.run_dir is not None:
            print(f"ftl: outputs in {self.run_dir}", file=sys.stderr)

    def _discard_run_dir(self) -> None:
        """A run that failed on bad input leaves nothing behind (and never touches other runs)."""
        if self._run_directory is not None:
            self._run_directory.discard()

    def after_fit(self) -> None:
        config = self.config["fit"]
        datamodule = self.datamodule
        has_test = datamodule.has_split("test") if isinstance(datamodule, TextDataModule) \
            else is_overridden("test_dataloader", datamodule)
        if not has_test:
            return
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
        if config.test_after_fit:
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, weights_only=True)
        if config.compare_after_fit and self.trainer.world_size == 1:  # (multi-process: run `ftl compare` after)
            from ftl.reports.compare import compare_after_fit  # (imported when used: it loads torchmetrics plots)

            # the test just run is the "after" side (not tested twice); only the base model is tested anew
            compare_after_fit(self.model, self.datamodule, self.run_dir, best or None, config.seed_everything,
                              config.trainer, resamples=config.ci_resamples, tested=bool(config.test_after_fit))


def _callback_name(callback: Any) -> str:
    """The class path of a callback as the config holds it (a class_path namespace, or an instance)."""
    return str(callback.get("class_path", "")) if hasattr(callback, "get") else type(callback).__name__


# ftl's own modules and data modules, imported before parsing so `--model SequenceClassifier` or
# `--data TextClassificationDataModule` work by class name (jsonargparse resolves names among loaded subclasses).
BUILTIN_MODULES = (
    "ftl.models.classifier", "ftl.models.causal_lm", "ftl.models.multilabel", "ftl.models.regressor",
    "ftl.data.classification", "ftl.data.qa", "ftl.data.multilabel", "ftl.data.synthetic", "ftl.data.pairs",
    "ftl.data.regression",
)


def import_builtin_classes() -> None:
    import importlib

    for name in BUILTIN_MODULES:
        importlib.import_module(name)


class RunConfig(SaveConfigCallback):
    """Saves the resolved config to the run directory, and the same config, nested, into W&B runs.

    Lightning writes config.yaml to the first logger's save_dir (a W&B save_dir shared by runs would make
    them overwrite each other's config); here it always goes to the run directory.
    """

    def __init__(self, *args: Any, restore: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.restore = restore or {}

    def _as_given(self) -> Any:
        """The config with this run's own paths put back to what the user gave (see before_instantiate_classes)."""
        config = self.config.clone()
        for key, value in self.restore.items():
            if key in config:
                config[key] = value
        return config

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / self.config_filename
            path.parent.mkdir(parents=True, exist_ok=True)
            self.parser.save(self._as_given(), str(path), skip_none=False, overwrite=self.overwrite,
                             multifile=self.multifile)
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        import yaml

        if not wandb_loggers(trainer):
            return
        config = yaml.safe_load(self.parser.dump(self._as_given(), skip_none=False))
        # values linked in from the data (num_labels, label_names) are what the model received: add them
        init_args = (config.get("model") or {}).setdefault("init_args", {})
        for key, value in dict(pl_module.hparams_initial).items():
            if not key.startswith("_") and key not in init_args:
                init_args[key] = list(value) if isinstance(value, tuple) else value
        from ftl.reports.summary import run_record

        run_dir = Path(trainer.default_root_dir)
        config["run_dir"] = str(run_dir)
        config["ftl_run"] = run_record(trainer.datamodule)  # code version and commit, data file fingerprints
        log_config(trainer, config, run_name=f"{run_dir.parent.name}/{run_dir.name}")


def _configure_environment() -> None:
    """Quiet, offline-safe defaults that a user's environment can still override."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_library_noise()  # known-harmless lines, each with its reason: ftl.commands.quiet


# Subcommands beyond Lightning's fit/validate/test/predict: "module:function" taking the remaining argv.
EXTRA_COMMANDS: dict[str, str] = {
    "compare": "ftl.commands.compare:main",  # base vs fine-tuned model on the same test split -> compare.md
    "export": "ftl.commands.export:main",  # a checkpoint as a Hugging Face folder
    "mcq": "ftl.commands.mcq:main",  # multiple-choice (MMLU-style) accuracy of a causal LM
    "sweep": "ftl.commands.sweep:main",  # a W&B sweep file run locally, trials as `ftl fit` runs, leaderboard
}


def _interrupted() -> None:
    """Ctrl-C: one line saying what was kept and how to go on, exit status 130, no empty run directory."""
    run = current_run_dir()
    last = run.path / "checkpoints" / "last.ckpt" if run is not None else None
    if run is not None:
        run.discard()  # only a folder this command made that holds no checkpoint
    if last is not None and last.is_file():
        print(f"ftl: interrupted; {last} holds the state after {_saved_step(last)}: run the same command with "
              "--ckpt_path last to continue", file=sys.stderr)
    else:
        print("ftl: interrupted before anything was saved" + (" (its run directory was removed)" if run else ""),
              file=sys.stderr)
    raise SystemExit(130)


def _saved_step(checkpoint: Path) -> str:
    """'training step 12 (epoch 2)': what a checkpoint holds, read without loading its tensors."""
    try:
        state = read_checkpoint_lazily(checkpoint)
        return f"training step {int(state['global_step'])} (epoch {int(state['epoch']) + 1})"
    except Exception:  # the line must come out whatever the file holds
        return "the last saved step"


def main(args: Any = None) -> None:
    """Entry point of `ftl` and `python -m ftl`; user errors print one line and exit with status 2."""
    _configure_environment()
    argv = list(sys.argv[1:] if args is None else args)
    try:
        _run(argv)
    except KeyboardInterrupt:
        _interrupted()
    except SystemExit as stop:
        if isinstance(stop.__context__, KeyboardInterrupt):  # Lightning's graceful shutdown ends in sys.exit(1)
            _interrupted()
        raise


def _run(argv: list[str]) -> None:
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
