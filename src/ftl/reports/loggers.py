"""Weights & Biases around LightningCLI: offline without an account, the full config once, test tables, a clean end.

The logger itself is Lightning's `WandbLogger`, declared in the task YAMLs; this module only adds what the
CLI needs around it. W&B must never end or stall a run, so every call into wandb here is guarded: a failure
prints one `ftl:` line and the run goes on (offline, or without W&B).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from ftl.models.base import TaskModule
from ftl.models.outputs import TaskOutputs

_OFFLINE_MODES = ("offline", "dryrun", "disabled")
MAX_TABLE_ROWS = 500  # rows of sample predictions / generated answers sent to W&B per run
RUN_FILES = ("summary.md", "compare.md", "compare.json", "confusion_matrix.csv")  # logged when they exist


def _say(message: str) -> None:
    print(f"ftl: {message}", file=sys.stderr)


def _guarded(what: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Call into wandb; on any error say so in one line and carry on (W&B is never worth a lost run)."""
    try:
        return fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - deliberately broad: see the module docstring
        first = (str(err).strip().splitlines() or [""])[0][:200]
        _say(f"W&B {what} failed ({type(err).__name__}: {first}); the run goes on")
        return None


# ---------------------------------------------------------------------------------------------- mode
def wandb_credentials_found() -> bool:
    """Whether wandb would find an API key: `WANDB_API_KEY`, an identity token file, or a netrc entry.

    Hand-written because wandb's own lookup (`wandb.sdk.lib.wbauth`) is private API that moves between releases.
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    import netrc
    from urllib.parse import urlsplit

    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    candidates = [os.environ["NETRC"]] if os.environ.get("NETRC") else ["~/.netrc", "~/_netrc"]
    for candidate in candidates:
        path = Path(candidate).expanduser()
        try:
            if path.is_file() and netrc.netrc(str(path)).authenticators(host):
                return True
        except (netrc.NetrcParseError, OSError):
            continue
    return False


def prepare_wandb_env() -> str:
    """Environment for a run with a W&B logger, set before wandb starts; the user's own settings win.

    - With no `WANDB_MODE` and no API key, W&B runs offline (wandb itself would raise, or prompt on a terminal).
    - wandb's own caches (debug logs, table staging) go under ftl's cache, not ~/.cache and ~/.local/share.
    Returns the mode in effect ("" when wandb decides: online with a key).
    """
    from ftl.hub import cache_root

    for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        os.environ.setdefault(var, str(cache_root() / "wandb"))
    mode = os.environ.get("WANDB_MODE", "")
    if not mode and not wandb_credentials_found():
        os.environ["WANDB_MODE"] = mode = "offline"
        _say("no W&B API key found, so W&B logs offline into the run directory "
             "(upload later with `wandb sync <run_dir>/wandb/offline-run-*`; `wandb login` to log online)")
    return mode


# ---------------------------------------------------------------------------------------------- start
def wandb_loggers(trainer: L.Trainer | None) -> list[WandbLogger]:
    return [lg for lg in (trainer.loggers if trainer is not None else []) if isinstance(lg, WandbLogger)]


def _start(logger: WandbLogger) -> Any:
    """The logger's wandb run, started now; online failures fall back to offline, then to no W&B at all."""
    if logger._wandb_init.get("anonymous", 0) is None:
        # Lightning passes `anonymous=None` when unset, and wandb >= 0.19 warns that the setting "has no effect"
        # whenever it is passed at all: not passing it is the same run without the line
        del logger._wandb_init["anonymous"]
    try:
        return logger.experiment
    except Exception as err:  # noqa: BLE001 - wandb raises many types (UsageError, CommError, timeouts)
        first = (str(err).strip().splitlines() or [""])[0][:200]
        if os.environ.get("WANDB_MODE") in _OFFLINE_MODES:
            _say(f"W&B could not start ({type(err).__name__}: {first}); the run goes on without W&B")
            return None
        _say(f"W&B could not start online ({type(err).__name__}: {first}); logging to W&B offline instead")
        # an init argument, not WANDB_MODE: wandb reads the environment once per process
        logger._wandb_init["mode"] = "offline"
        logger._experiment = None
        return _guarded("offline start", lambda: logger.experiment)


def _nested_config_holds_them(params: Any) -> None:
    """Stands in for `WandbLogger.log_hyperparams` once the full config is in the run (see `start_wandb`)."""


def start_wandb(trainer: L.Trainer | None) -> None:
    """Start every W&B logger's run now: Lightning would start it at setup, where an error ends the run.
    Loggers whose run cannot start are dropped from the trainer; the run goes on with the others."""
    for logger in wandb_loggers(trainer):
        if _start(logger) is None:
            trainer.loggers = [lg for lg in trainer.loggers if lg is not logger]


def log_config(trainer: L.Trainer, config: dict[str, Any], run_name: str | None = None) -> None:
    """Put the full resolved config into every started W&B run, nested, once.

    Lightning would also log the module's init args flat at every fit/test (`log_hyperparams`): a partial
    second copy of what the nested config holds, so that is switched off for these loggers only.
    """
    for logger in wandb_loggers(trainer):
        if (run := _run_of(logger)) is None:
            continue
        _guarded("config upload", run.config.update, config, allow_val_change=True)
        logger.log_hyperparams = _nested_config_holds_them  # instance attribute: other loggers keep theirs
        if run_name and getattr(logger, "_name", None) is None and not os.environ.get("WANDB_SWEEP_ID"):
            _guarded("run naming", setattr, run, "name", run_name)


def _run_of(logger: WandbLogger) -> Any:
    """The logger's wandb run if it was started (a logger never used has none; other ranks have a dummy)."""
    run = getattr(logger, "_experiment", None)
    return run if run is not None and hasattr(run, "log") and hasattr(run, "finish") else None


def _runs(trainer: L.Trainer | None) -> list[Any]:
    return [run for run in map(_run_of, wandb_loggers(trainer)) if run is not None]


# ---------------------------------------------------------------------------------------------- test tables
def metric_table(metrics: dict[str, Any], label_names: list[str]) -> list[list[Any]]:
    """Every test metric with its 95% interval (None where it has none), in the reading order of the tables."""
    from ftl.reports.tables import CI_HIGH, CI_LOW, metric_rows

    def number(key: str) -> float | None:
        value = metrics.get(key)
        if value is None:
            return None
        return float(value.item() if hasattr(value, "item") else value)

    return [[name, key, number(key), number(key + CI_LOW), number(key + CI_HIGH)]
            for key, name in metric_rows(list(metrics), "test", label_names or None) if number(key) is not None]


def test_tables(outputs: TaskOutputs, metrics: dict[str, Any], max_rows: int = MAX_TABLE_ROWS
                ) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """Per-class metrics and sample predictions of a finished test, as (columns, rows) per table name, from the
    task contract (`TaskOutputs`) and the logged metrics. Tasks without labels get their records as they are
    written; JSONL records (generated answers) are sent from the run directory by `log_run_files`."""
    names = list(outputs.label_names or [])
    tables: dict[str, tuple[list[str], list[list[Any]]]] = {}
    summary = metric_table(metrics, names)
    if summary:
        tables["test/metrics"] = (["metric", "key", "value", "ci_low", "ci_high"], summary)
    if not names:
        if outputs.records and outputs.records_format == "csv":
            rows = outputs.rows()[:max_rows]
            columns = list(rows[0])
            tables["test/predictions"] = (columns, [[_cell(row.get(c)) for c in columns] for row in rows])
        return tables
    matrix = outputs.confusion_matrix
    support = [sum(row) for row in matrix.counts] if matrix is not None and matrix.square else [None] * len(names)

    def value(kind: str, name: str) -> float | None:
        item = metrics.get(f"test/{kind}/{name}")
        return None if item is None else float(item)

    tables["test/per_class"] = (
        ["label", "precision", "recall", "f1", "support"],
        [[name, value("precision", name), value("recall", name), value("f1", name), n]
         for name, n in zip(names, support, strict=True)],
    )
    records = outputs.records[:max_rows]
    if records:
        inputs = list(records[0].inputs)
        rows = [[*(str(r.inputs.get(c, "")) for c in inputs), r.reference, r.prediction,
                 round(max(r.scores.values()), 4) if r.scores else None, r.reference == r.prediction]
                for r in records]
        tables["test/predictions"] = ([*inputs, "label", "prediction", "probability", "correct"], rows)
    return tables


class WandbReport(L.Callback):
    """At test end, sends W&B the per-class metrics table, the confusion matrix and sample predictions.

    A no-op without a started W&B logger, so it sits in every trainer's defaults.
    """

    def __init__(self, max_rows: int = MAX_TABLE_ROWS) -> None:
        self.max_rows = max_rows

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        runs = _runs(trainer) if trainer.is_global_zero else []
        outputs = pl_module.test_outputs if isinstance(pl_module, TaskModule) else None
        if runs and outputs is not None:
            # metrics.json holds the intervals (written by RunOutputs, which runs first)
            path = Path(trainer.default_root_dir) / "metrics.json"
            saved = json.loads(path.read_text()) if path.is_file() else {}
            metrics = {**{k: v for k, v in saved.items() if k.startswith("test/")}, **trainer.callback_metrics}
            _guarded("test tables", self._log_tables, runs, outputs, metrics)

    def _log_tables(self, runs: list[Any], outputs: TaskOutputs, metrics: dict[str, Any]) -> None:
        import wandb

        tables = test_tables(outputs, metrics, self.max_rows)
        payload: dict[str, Any] = {key: wandb.Table(columns=cols, data=rows) for key, (cols, rows) in tables.items()}
        names = list(outputs.label_names or [])
        matrix = outputs.confusion_matrix
        if names and matrix is not None and matrix.square and outputs.records:
            index = {name: i for i, name in enumerate(names)}
            payload["test/confusion_matrix"] = wandb.plot.confusion_matrix(
                y_true=[index[r.reference] for r in outputs.records],
                preds=[index[r.prediction] for r in outputs.records],
                class_names=names, title="Test confusion matrix",
            )
        for run in runs:
            run.log(payload)


# ---------------------------------------------------------------------------------------------- end of run
def log_run_files(run: Any, run_dir: Path, log_model: bool = False, max_rows: int = MAX_TABLE_ROWS) -> None:
    """Send what the run directory holds at the end: metrics.json into the summary (its val/* are the best
    checkpoint's, so online sweeps rank on the same number as `ftl sweep`), summary/comparison files, plots,
    generated answers (any *.jsonl whose rows have `generated`) as a table, and `hf_model/` as an artifact
    when the logger has `log_model` set."""
    import wandb

    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        run.summary.update(json.loads(metrics_path.read_text()))
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            run.save(str(run_dir / name), base_path=str(run_dir), policy="now")
    payload: dict[str, Any] = {}
    for png in sorted((run_dir / "plots").glob("*.png")):
        payload[f"plots/{png.stem}"] = wandb.Image(str(png))
    for path in sorted(run_dir.glob("*.jsonl")):
        rows = _jsonl_head(path, max_rows)
        if rows and "generated" in rows[0]:
            columns = list(rows[0])
            payload[path.stem] = wandb.Table(
                columns=columns, data=[[_cell(row.get(c)) for c in columns] for row in rows])
    if payload:
        run.log(payload)
    hf_model = run_dir / "hf_model"
    if log_model and hf_model.is_dir():
        artifact = wandb.Artifact(f"hf_model-{run.id}", type="model", metadata={"run_dir": str(run_dir)})
        artifact.add_dir(str(hf_model))
        run.log_artifact(artifact)


def _jsonl_head(path: Path, n: int) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(rows) >= n:
                break
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict):
                    return []
                rows.append(row)
    return rows


def _cell(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else json.dumps(value)


def finish_wandb(trainer: L.Trainer | None, run_dir: Path | None, ok: bool) -> None:
    """End every started W&B run: send the run directory's files (when the run succeeded), finish it, and stop
    wandb's service. A later run in the same process (tests, in-process sweeps) then starts afresh: the service
    would otherwise keep writing to this run's logs, and wandb would keep the settings it read at first start."""
    finished = False
    for logger in wandb_loggers(trainer):
        if (run := _run_of(logger)) is None:
            continue
        if ok and run_dir is not None:
            _guarded("upload of run files", log_run_files, run, run_dir, bool(getattr(logger, "_log_model", False)))
        _guarded("finish", run.finish, exit_code=0 if ok else 1)
        finished = True
    if finished:
        import wandb

        _guarded("shutdown", wandb.teardown)
