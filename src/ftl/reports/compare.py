"""Before/after fine-tuning on the same test split: `compare.md` and `compare.json` (the command is
`ftl compare --config X.yaml --ckpt_path Y`, in `ftl.commands.compare`, or `fit --compare_after_fit true`).

"Before" is the model the config builds, under the config's seed: the same pretrained weights and, where the
module adds a task head, the very head that fine-tuning started from. "After" is a Lightning checkpoint or an
exported Hugging Face folder (`hf_model/`). Both are tested by Lightning with ftl's own callbacks into
`compare/before/` and `compare/after/` (metrics.json, test_predictions.csv...), and the table's rows are the
metrics each module logs (see `ftl.reports.tables`), so classification and causal LM need no special cases here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L

from ftl.errors import FTLError
from ftl.models.base import TaskModule, accepted_arguments
from ftl.reports.stats import DEFAULT_RESAMPLES
from ftl.reports.tables import format_value, format_with_interval, markdown_table, metric_rows


# ---------------------------------------------------------------------------------------------- models
def fresh_model(module: L.LightningModule, seed: int | None) -> L.LightningModule:
    """A new instance of `module`'s class from its init arguments, built right after seeding with `seed`.

    The CLI seeds and then builds the model, so this reproduces the fine-tuning run's starting point.
    """
    if seed is not None and seed is not False:
        L.seed_everything(int(seed), verbose=False)
    return type(module)(**init_args(module))


def init_args(module: L.LightningModule) -> dict[str, Any]:
    """The module's saved init arguments: LightningCLI adds private `_class_path`-style keys and the values of
    links the module may not take (`label_counts`...); only what its `__init__` accepts is passed back."""
    import inspect

    args = {key: value for key, value in dict(module.hparams).items() if not key.startswith("_")}
    if isinstance(module, TaskModule):
        accepted = accepted_arguments(type(module))
    else:
        params = inspect.signature(type(module).__init__).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return args
        accepted = {p.name for p in params}
    return {key: value for key, value in args.items() if key in accepted}


def restore_checkpoint(module: L.LightningModule, ckpt_path: str | Path) -> L.LightningModule:
    """Load a Lightning checkpoint's weights (and the module's own extras, e.g. a tuned threshold) into `module`.

    The same two steps as `LightningModule.load_from_checkpoint`, on an existing instance whose init arguments
    come from the config; `weights_only=True` so a checkpoint cannot run code.
    """
    import pickle

    import torch

    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FTLError(f"checkpoint '{ckpt_path}' not found: pass a .ckpt file (runs/<task>/<run>/checkpoints/)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise FTLError(f"cannot load checkpoint '{ckpt_path}' with weights_only=True ({first}): "
                       "pass a checkpoint written by ftl") from None
    if "state_dict" not in checkpoint:
        raise FTLError(f"'{ckpt_path}' is not a Lightning checkpoint (no state_dict): pass a .ckpt written by ftl")
    module.on_load_checkpoint(checkpoint)
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0][:200]
        raise FTLError(f"checkpoint '{ckpt_path}' does not fit the model the config builds ({first}): "
                       "pass the config the checkpoint was trained with") from None
    return module


def finetuned_model(module: L.LightningModule, path: str | Path, seed: int | None = None) -> L.LightningModule:
    """The fine-tuned side: `module`'s class with the checkpoint's weights, or with `pretrained` = an HF folder."""
    location = Path(path).expanduser()
    if location.is_dir():
        _check_hf_labels(module, location)
        return type(module)(**{**init_args(module), "pretrained": str(location)})
    return restore_checkpoint(fresh_model(module, seed), location)


def _check_hf_labels(module: L.LightningModule, folder: Path) -> None:
    """A classifier built on a folder with other labels would get a fresh head and compare nonsense: refuse."""
    names = module.label_names if isinstance(module, TaskModule) else None
    config_file = folder / "config.json"
    if not names or not config_file.is_file():
        return
    id2label = json.loads(config_file.read_text()).get("id2label") or {}
    saved = [str(id2label[k]) for k in sorted(id2label, key=int)]
    if saved and saved != list(names):
        raise FTLError(f"'{folder}' was exported with labels {saved}, the data has {list(names)}: "
                       "compare it on the data it was trained on")


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate(module: L.LightningModule, datamodule: L.LightningDataModule, out_dir: Path,
             trainer_kwargs: dict[str, Any] | None = None, resamples: int = DEFAULT_RESAMPLES) -> dict[str, float]:
    """Test `module` on the data's test split in one process; returns (and leaves in `out_dir`) metrics.json.

    The trainer has only ftl's throughput and run-output callbacks: no logger, no checkpoints, so the run
    directory's own metrics and logs stay those of the run.
    """
    from ftl.reports.callbacks import RunOutputs, Throughput
    from ftl.reports.intervals import CISettings

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_file = out_dir / "metrics.json"
    metrics_file.unlink(missing_ok=True)
    trainer = L.Trainer(
        **(trainer_kwargs or {}),
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        default_root_dir=str(out_dir),
        callbacks=[Throughput(), RunOutputs(), CISettings(resamples)],
    )
    trainer.test(module, datamodule=datamodule, verbose=False)
    return json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}


def eval_trainer_kwargs(trainer_config: Any) -> dict[str, Any]:
    """The parts of the run's trainer config that matter for evaluation: where and at which precision."""
    kwargs: dict[str, Any] = {}
    for key in ("accelerator", "precision"):
        value = trainer_config.get(key) if hasattr(trainer_config, "get") else getattr(trainer_config, key, None)
        if isinstance(value, str) or (key == "precision" and isinstance(value, int)):
            kwargs[key] = value
    return kwargs


# ---------------------------------------------------------------------------------------------- the table
PAIRED_NOTE = ("Change = After - Before, with its paired 95% bootstrap interval (the same resampled test rows for "
               "both models). p: accuracy by the exact McNemar test (binomial test on the rows exactly one model "
               "gets right), ECE by the paired bootstrap, every other metric by a paired permutation test (each row's "
               "two outputs swapped at random, at least 9,999 times); p-values Holm-corrected over the table's rows; "
               "verdict at 0.05, and only where the change's interval excludes 0 "
               "(better/worse: for After; lower is better for loss, perplexity, ECE, Brier and errors such as "
               "MSE). Runtime rows are not tested.")


def comparison_rows(before: dict[str, float], after: dict[str, float], label_names: list[str] | None = None,
                    changes: dict[str, Any] | None = None, lower_is_better: list[str] | None = None
                    ) -> list[dict[str, Any]]:
    """One row per test metric of either side: name, before, after, change = after - before (None if one lacks
    it) and, with `changes` (`ftl.reports.stats.paired_changes`, keyed without `test/`), the change's paired
    interval, its p-value, the Holm-adjusted p-value and the verdict."""
    from ftl.reports.stats import verdict

    keys = list(dict.fromkeys([*after, *before]))
    rows = []
    for key, name in metric_rows(keys, "test", label_names):
        b, a = before.get(key), after.get(key)
        change = a - b if a is not None and b is not None else None
        row = {"metric": key, "name": name, "before": b, "after": a, "change": change}
        if changes is not None:
            paired = changes.get(key.split("/", 1)[1]) if change is not None else None
            row.update(change_ci_low=getattr(paired, "low", None), change_ci_high=getattr(paired, "high", None),
                       p_value=getattr(paired, "p_value", None), test=getattr(paired, "test", None))
        rows.append(row)
    if changes is not None:
        adjusted = holm_by_metric(rows)
        for row, p_holm in zip(rows, adjusted, strict=True):
            row["p_holm"] = p_holm
            row["verdict"] = verdict(row["change"], p_holm, row["metric"], lower_is_better=lower_is_better or (),
                                     interval=(row.get("change_ci_low"), row.get("change_ci_high"))) \
                if row["change"] is not None else None
    return rows


def holm_by_metric(rows: list[dict[str, Any]], key: str = "metric") -> list[float | None]:
    """Holm-adjusted p of each row, the family being the distinct tests: a metric shown twice ("Accuracy on X"
    is "Recall (X)") is one test, not two."""
    from ftl.reports.stats import holm

    family: dict[Any, float | None] = {}
    for row in rows:
        family.setdefault(row[key], row.get("p_value"))
    adjusted = dict(zip(family, holm(list(family.values())), strict=True))
    return [adjusted[row[key]] for row in rows]


def format_p(p: float | None) -> str:
    if p is None:
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _side(metric: str, value: float | None, metrics: dict[str, Any] | None) -> str:
    if metrics is None:
        return format_value(metric, value)
    return format_with_interval(metric, {**metrics, metric: value})


def _change(row: dict[str, Any]) -> str:
    text = format_value(row["metric"], row["change"], signed=True)
    if row.get("change_ci_low") is None or row.get("change_ci_high") is None:
        return text
    return (f"{text} [{format_value(row['metric'], row['change_ci_low'], signed=True)}, "
            f"{format_value(row['metric'], row['change_ci_high'], signed=True)}]")


def render_markdown(result: dict[str, Any]) -> str:
    paired = any("verdict" in r for r in result["rows"])
    header = ["Metric", "Before", "After", "Change"] + (["p (Holm)", "Verdict"] if paired else [])
    table_rows = []
    for r in result["rows"]:
        cells = [r["name"], _side(r["metric"], r["before"], result.get("before")),
                 _side(r["metric"], r["after"], result.get("after")), _change(r)]
        if paired:
            cells += [format_p(r.get("p_holm")), (r.get("verdict") or "").replace("_", " ")]
        table_rows.append(cells)
    table = markdown_table(header, table_rows, align="lrrrrl" if paired else None)
    lines = [
        "# Before / after fine-tuning",
        "",
        f"- **Before**: {result['before_model']}",
        f"- **After**: {result['after_model']}",
        f"- **Test split**: {result['test_rows']} rows" if result.get("test_rows") else "- **Test split**: the data's",
        "",
        table,
        "",
        (PAIRED_NOTE + " Before and After: value [95% bootstrap interval over the test rows]. " if paired
         else "Change = After - Before. ")
        + ("Accuracy on <label> = share of that label's rows predicted as it (its recall). "
           if result.get("label_names") else "")
        + "Runtime and throughput: one pass over the test split"
        + (f" on {result['device']}." if result.get("device") else "."),
    ]
    return "\n".join(lines) + "\n"


def test_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The `test/` entries of a metrics.json (values and their intervals)."""
    return {key: value for key, value in metrics.items() if key.startswith("test/")}


def compare_models(base: L.LightningModule, finetuned: L.LightningModule, datamodule: L.LightningDataModule,
                   run_dir: str | Path, *, before_model: str, after_model: str,
                   trainer_kwargs: dict[str, Any] | None = None, resamples: int = DEFAULT_RESAMPLES,
                   after: dict[str, float] | None = None) -> dict[str, Any]:
    """Test both models on the test split; write compare.md / compare.json to `run_dir` and print the table.

    `after`: the fine-tuned model's test metrics when it was just tested (`fit`'s own test pass, whose records
    are still in `finetuned.test_outputs`): it is then not tested again.
    """
    from ftl.reports.callbacks import write_json, write_text_atomic

    run_dir = Path(run_dir)
    say = lambda msg: print(f"ftl: compare: {msg}", file=sys.stderr)  # noqa: E731
    say("testing the model before fine-tuning")
    before = evaluate(base, datamodule, run_dir / "compare" / "before", trainer_kwargs, resamples)
    if after is None or getattr(finetuned, "test_outputs", None) is None:
        say("testing the fine-tuned model")
        after = evaluate(finetuned, datamodule, run_dir / "compare" / "after", trainer_kwargs, resamples)
    else:
        say("the fine-tuned model's side is the test the fit just ran (not run again)")
    before, after = test_metrics(before), test_metrics(after)
    outputs = finetuned.test_outputs if isinstance(finetuned, TaskModule) else None
    base_outputs = base.test_outputs if isinstance(base, TaskModule) else None
    label_names = finetuned.label_names if isinstance(finetuned, TaskModule) else None
    changes = None
    lower = list(outputs.lower_is_better) if outputs is not None else []
    if outputs is not None and base_outputs is not None and outputs.records and base_outputs.records:
        from ftl.reports.records import rows_from_outputs
        from ftl.reports.stats import paired_changes

        changes = paired_changes(rows_from_outputs(base_outputs), rows_from_outputs(outputs), resamples)
    result = {
        "before_model": before_model,
        "after_model": after_model,
        "test_rows": len(outputs.records) if outputs is not None and outputs.records else None,
        "device": _device_name(finetuned),
        "label_names": label_names,
        "ci_resamples": resamples,
        "rows": comparison_rows(before, after, label_names, changes, lower),
        "before": before,
        "after": after,
    }
    write_json(run_dir / "compare.json", result)
    text = render_markdown(result)
    write_text_atomic(run_dir / "compare.md", text)
    print(text)
    say(f"wrote {run_dir / 'compare.md'} and compare.json")
    return result


def _device_name(module: L.LightningModule) -> str:
    return str(module.device)


def describe_base(module: L.LightningModule, seed: int | None) -> str:
    pretrained = dict(module.hparams).get("pretrained", type(module).__name__)
    seeded = f"seed {seed}" if seed is not None and seed is not False else "unseeded"
    # classifiers, and regressors (a one-output head without labels), start from a freshly initialised head
    has_head = isinstance(module, TaskModule) and (module.label_names is not None
                                                   or module.auto_class == "AutoModelForSequenceClassification")
    head = f"its new task head initialised as at the start of fine-tuning, {seeded}" if has_head else seeded
    return f"`{pretrained}` as `{type(module).__name__}` loads it before training ({head})"


# ---------------------------------------------------------------------------------------------- entry points
def compare_after_fit(module: L.LightningModule, datamodule: L.LightningDataModule, run_dir: str | Path,
                      ckpt_path: str | None, seed: int | None, trainer_config: Any,
                      resamples: int = DEFAULT_RESAMPLES, tested: bool = False) -> dict[str, Any]:
    """`fit --compare_after_fit`: the fitted module (restored to `ckpt_path`, the best checkpoint) vs a fresh one.

    `tested`: the fit has just tested that checkpoint (test after fit): its metrics.json and records are the
    "after" side, and only the base model is tested.
    """
    after = None
    if tested and isinstance(module, TaskModule) and module.test_outputs is not None:
        metrics_file = Path(run_dir) / "metrics.json"
        after = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    if ckpt_path and after is None:
        restore_checkpoint(module, ckpt_path)
    base = fresh_model(module, seed)
    return compare_models(base, module, datamodule, run_dir, before_model=describe_base(base, seed),
                          after_model=f"`{ckpt_path}`" if ckpt_path else "the weights at the end of fit",
                          trainer_kwargs=eval_trainer_kwargs(trainer_config), resamples=resamples, after=after)
