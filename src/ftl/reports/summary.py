"""`summary.md`: the run summary a person reads first (when, where, what model and data, every setting, results).

`collect` gathers the facts from a trainer that has run; `render` turns them into markdown. The callback
`ftl.reports.callbacks.RunSummary` writes the file after fit and again after test: it holds the latest numbers.
"""

from __future__ import annotations

import platform
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning as L

from ftl.data.text import TextDataModule
from ftl.models.base import TaskModule
from ftl.reports.tables import (
    CI_LOW,
    epoch_table,
    format_value,
    format_with_interval,
    markdown_table,
    metric_rows,
    read_metrics_csv,
)

LIBRARIES = ("torch", "lightning", "transformers", "torchmetrics", "datasets", "tokenizers", "peft", "wandb", "ftl")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def code_version() -> dict[str, Any]:
    """ftl's version and, when it runs from a git checkout, the commit and whether the tree had uncommitted
    changes: what a result was produced by."""
    import subprocess

    info: dict[str, Any] = {"ftl": library_versions().get("ftl", "unknown")}
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10)
            info["commit"] = commit.stdout.strip()
            info["uncommitted_changes"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):  # no git: the version alone
        pass
    return info


def file_fingerprints(paths: list[Path]) -> list[dict[str, Any]]:
    """sha256 and size of each data file, so a result names the exact data it came from."""
    import hashlib

    out = []
    for path in paths:
        if not path.is_file():
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        out.append({"path": str(path), "sha256": digest.hexdigest(), "bytes": path.stat().st_size})
    return out


def run_record(datamodule: Any) -> dict[str, Any]:
    """The code and the data files a run used (summary.md and the W&B config)."""
    files = datamodule.source_files() if isinstance(datamodule, TextDataModule) else []
    return {"code": code_version(), "data_files": file_fingerprints(files)}


def device_description(trainer: L.Trainer) -> str:
    """E.g. 'cuda:0 (NVIDIA A100), 1 device(s), precision 16-mixed' or 'cpu (x86_64, 2 threads), ...'."""
    import torch

    device = trainer.strategy.root_device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        name = f"{platform.machine() or 'cpu'}, {torch.get_num_threads()} threads"
    else:
        name = device.type
    return f"{device} ({name}), {trainer.num_devices} device(s), precision {trainer.precision}"


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        out = []
        for key, item in value.items():
            out += _flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return out
    return [(prefix, value)]


def hyperparameters(run_dir: Path, pl_module: L.LightningModule) -> list[tuple[str, Any]]:
    """Every setting: the resolved config.yaml of the run, plus the values the CLI linked into the model."""
    import yaml

    config_file = run_dir / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    items = _flatten(config or {})
    known = {key for key, _ in items}
    for key, value in dict(pl_module.hparams).items():
        name = f"model.init_args.{key}"
        if name not in known and not key.startswith("_"):  # `_class_path`...: LightningCLI's, not arguments
            items.append((name + " (linked)" if config else name, value))
    return items


def data_sizes(datamodule: Any) -> dict[str, int]:
    return datamodule.split_sizes() if isinstance(datamodule, TextDataModule) else {}


def collect(trainer: L.Trainer, pl_module: L.LightningModule, metrics: dict[str, float],
            fit_seconds: float | None = None, started: datetime | None = None) -> dict[str, Any]:
    """Everything summary.md shows, as plain data. `metrics` = metrics.json merged with the latest logged values."""
    from ftl.models.lora import count_parameters

    run_dir = Path(trainer.default_root_dir)
    trainable, total = count_parameters(pl_module)
    datamodule = trainer.datamodule
    hparams = dict(pl_module.hparams)
    return {
        "run_dir": str(run_dir),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "started": started.astimezone().isoformat(timespec="seconds") if started else None,
        "device": device_description(trainer),
        "versions": library_versions(),
        **run_record(datamodule),
        "model_class": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
        "pretrained": hparams.get("pretrained"),
        "trainable_params": trainable,
        "total_params": total,
        "data_class": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}" if datamodule else None,
        "data_sizes": data_sizes(datamodule),
        "label_names": list((pl_module.label_names if isinstance(pl_module, TaskModule) else None) or []),
        "hyperparameters": hyperparameters(run_dir, pl_module),
        "fit_seconds": fit_seconds,
        "epochs": read_metrics_csv(run_dir / "metrics.csv"),
        "metrics": metrics,
    }


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return "null" if value is None else str(value)


def render(info: dict[str, Any]) -> str:
    m = info["metrics"]
    out = [f"# Run summary: {Path(info['run_dir']).name}", ""]
    out += [f"- **Date**: {info['date']}" + (f" (run started {info['started']})" if info.get("started") else ""),
            f"- **Run directory**: `{info['run_dir']}`",
            f"- **Device**: {info['device']}",
            "- **Libraries**: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items())]
    code = info.get("code") or {}
    if code:
        line = f"- **Code**: ftl {code.get('ftl')}"
        if code.get("commit"):
            line += f", commit `{code['commit'][:12]}`"
            line += " **with uncommitted changes**" if code.get("uncommitted_changes") else " (clean tree)"
        out.append(line)
    for item in info.get("data_files") or []:
        out.append(f"- **Data file**: `{item['path']}` ({item['bytes']:,} bytes, sha256 `{item['sha256'][:16]}`)")
    out.append("")

    out += ["## Model", "", f"- **Module**: `{info['model_class']}`"]
    if info.get("pretrained"):
        out.append(f"- **Pretrained**: `{info['pretrained']}`")
    total, trainable = info["total_params"], info["trainable_params"]
    out += [f"- **Parameters**: {trainable:,} trainable of {total:,} total ({100 * trainable / max(total, 1):.2f}%)",
            ""]

    out += ["## Data", ""]
    if info.get("data_class"):
        out.append(f"- **Data module**: `{info['data_class']}`")
    if info["data_sizes"]:
        out.append("- **Rows per split**: " + ", ".join(f"{s} {n:,}" for s, n in info["data_sizes"].items()))
    if info["label_names"]:
        out.append(f"- **Labels** ({len(info['label_names'])}): " + ", ".join(info["label_names"]))
    out.append("")

    out += ["## Training", ""]
    if "train/runtime" in m or info.get("fit_seconds"):
        if info.get("fit_seconds"):
            out.append(f"- **Training time**: {info['fit_seconds']:.1f} s (whole fit, wall clock)")
        for key, label, unit in (("train/runtime", "Training loop (incl. validation)", " s"),
                                 ("train/samples_per_sec", "Train samples/s", ""),
                                 ("train/steps_per_sec", "Train steps/s", ""),
                                 ("train/tokens_per_sec", "Train tokens/s (non-padding)", ""),
                                 ("train/tokens_per_step", "Train tokens per optimizer step (non-padding)", ""),
                                 ("train/padding_share", "Train padding share", ""),
                                 ("train/tflops", "Train model TFLOP/s (without validation)", ""),
                                 ("train/mfu", "Train MFU", "")):
            if key in m:
                out.append(f"- **{label}**: {format_value(key, m[key])}{unit}")
        final = m.get("train/loss_epoch", m.get("train/loss"))
        if final is not None:
            out.append(f"- **Final train loss** (last epoch's mean): {final:.4f}")
        header, rows = epoch_table(info["epochs"])
        if rows:
            out += ["", markdown_table(header, rows)]
    else:
        out.append("No training in this run.")
    out.append("")

    tests = metric_rows(m, "test", info["label_names"] or None)
    out += ["## Test metrics", ""]
    if tests:
        out.append(markdown_table(["Metric", "Value"], [[name, format_with_interval(key, m)] for key, name in tests]))
        if any(key + CI_LOW in m for key, _ in tests):
            out += ["", "In brackets: the 95% bootstrap confidence interval over the test rows (`--ci_resamples`)."]
    else:
        out.append("No test in this run (yet).")
    out.append("")

    out += ["## Hyperparameters", "", "Every setting of the run (resolved `config.yaml` and linked values).", ""]
    out.append(markdown_table(["Setting", "Value"], [[f"`{k}`", _cell(v)] for k, v in info["hyperparameters"]],
                              align="ll"))
    return "\n".join(out) + "\n"


def write_summary(path: str | Path, info: dict[str, Any]) -> Path:
    path = Path(path)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(render(info), encoding="utf-8")
    tmp.replace(path)
    return path
