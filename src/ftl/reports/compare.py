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
from ftl.reports.tables import format_value, markdown_table, metric_rows


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
             trainer_kwargs: dict[str, Any] | None = None) -> dict[str, float]:
    """Test `module` on the data's test split in one process; returns (and leaves in `out_dir`) metrics.json.

    The trainer has only ftl's throughput and run-output callbacks: no logger, no checkpoints, so the run
    directory's own metrics and logs stay those of the run.
    """
    from ftl.reports.callbacks import RunOutputs, Throughput

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
        callbacks=[Throughput(), RunOutputs()],
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
def comparison_rows(before: dict[str, float], after: dict[str, float],
                    label_names: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per test metric of either side: name, before, after, change = after - before (None if one lacks it)."""
    keys = list(dict.fromkeys([*after, *before]))
    rows = []
    for key, name in metric_rows(keys, "test", label_names):
        b, a = before.get(key), after.get(key)
        change = a - b if a is not None and b is not None else None
        rows.append({"metric": key, "name": name, "before": b, "after": a, "change": change})
    return rows


def render_markdown(result: dict[str, Any]) -> str:
    table = markdown_table(
        ["Metric", "Before", "After", "Change"],
        [[r["name"], format_value(r["metric"], r["before"]), format_value(r["metric"], r["after"]),
          format_value(r["metric"], r["change"], signed=True)] for r in result["rows"]],
    )
    lines = [
        "# Before / after fine-tuning",
        "",
        f"- **Before**: {result['before_model']}",
        f"- **After**: {result['after_model']}",
        f"- **Test split**: {result['test_rows']} rows" if result.get("test_rows") else "- **Test split**: the data's",
        "",
        table,
        "",
        "Change = After - Before. "
        + ("Accuracy on <label> = share of that label's rows predicted as it (its recall). "
           if result.get("label_names") else "")
        + "Runtime and throughput: one pass over the test split"
        + (f" on {result['device']}." if result.get("device") else "."),
    ]
    return "\n".join(lines) + "\n"


def compare_models(base: L.LightningModule, finetuned: L.LightningModule, datamodule: L.LightningDataModule,
                   run_dir: str | Path, *, before_model: str, after_model: str,
                   trainer_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Test both models on the test split; write compare.md / compare.json to `run_dir` and print the table."""
    from ftl.reports.callbacks import write_json, write_text_atomic

    run_dir = Path(run_dir)
    say = lambda msg: print(f"ftl: compare: {msg}", file=sys.stderr)  # noqa: E731
    say("testing the model before fine-tuning")
    before = evaluate(base, datamodule, run_dir / "compare" / "before", trainer_kwargs)
    say("testing the fine-tuned model")
    after = evaluate(finetuned, datamodule, run_dir / "compare" / "after", trainer_kwargs)
    outputs = finetuned.test_outputs if isinstance(finetuned, TaskModule) else None
    label_names = finetuned.label_names if isinstance(finetuned, TaskModule) else None
    result = {
        "before_model": before_model,
        "after_model": after_model,
        "test_rows": len(outputs.records) if outputs is not None and outputs.records else None,
        "device": _device_name(finetuned),
        "label_names": label_names,
        "rows": comparison_rows(before, after, label_names),
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
    has_head = isinstance(module, TaskModule) and module.label_names is not None
    head = f"its new task head initialised as at the start of fine-tuning, {seeded}" if has_head else seeded
    return f"`{pretrained}` as `{type(module).__name__}` loads it before training ({head})"


# ---------------------------------------------------------------------------------------------- entry points
def compare_after_fit(module: L.LightningModule, datamodule: L.LightningDataModule, run_dir: str | Path,
                      ckpt_path: str | None, seed: int | None, trainer_config: Any) -> dict[str, Any]:
    """`fit --compare_after_fit`: the fitted module (restored to `ckpt_path`, the best checkpoint) vs a fresh one."""
    if ckpt_path:
        restore_checkpoint(module, ckpt_path)
    base = fresh_model(module, seed)
    return compare_models(base, module, datamodule, run_dir, before_model=describe_base(base, seed),
                          after_model=f"`{ckpt_path}`" if ckpt_path else "the weights at the end of fit",
                          trainer_kwargs=eval_trainer_kwargs(trainer_config))
