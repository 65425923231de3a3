"""`ftl sweep SWEEP.yaml --count N [overrides]`: run a W&B sweep file locally, with no W&B server.

The same file drives an online sweep (`wandb sweep` + `wandb agent`). Locally, parameters are drawn as the
file says (grid or random; see `draw_trials` for bayes), each trial runs the file's `command` (an `ftl fit`)
with its own run directory, and the leaderboard (csv and md, best first) is rewritten after every trial.

A trial's score is its run's `metrics.json[metric.name]`. After fit, `val/*` there are the metrics of the
validation that made the best checkpoint (RunOutputs), i.e. of the model that is tested and exported; the W&B
run summary gets the same values at the end of the run, so online and local sweeps rank on the same number.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import random
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ftl.commands.rundir import given_run_dir, new_run_dir
from ftl.errors import FTLError

METHODS = ("grid", "random", "bayes")
BAYES_UNAVAILABLE = (
    "method 'bayes' needs W&B's own sweep engine (PyPI package `sweeps`), which requires numpy<2 while ftl's "
    "pandas needs numpy>=2, so it cannot be installed beside ftl: run this sweep online (`wandb sweep` + "
    "`wandb agent`), or locally with --method random (same search space, sampled at random)"
)


# ---------------------------------------------------------------------------------------------- sweep file
def load_sweep(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a W&B sweep YAML (the parts a local run uses)."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise FTLError(f"sweep file '{path}' not found: pass a W&B sweep YAML, e.g. sweeps/cancer.yaml")
    try:
        sweep = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise FTLError(f"sweep file '{path}' is not valid YAML ({str(err).splitlines()[0]}): fix its syntax") from None
    if not isinstance(sweep, dict) or not isinstance(sweep.get("parameters"), dict) or not sweep["parameters"]:
        raise FTLError(f"sweep file '{path}' has no `parameters` mapping: add the parameters to sweep over")
    if sweep.get("method") not in METHODS:
        raise FTLError(f"sweep file '{path}' has method {sweep.get('method')!r}: use one of {', '.join(METHODS)}")
    metric = sweep.get("metric")
    if metric is not None and (not isinstance(metric, dict) or "name" not in metric
                               or metric.get("goal", "minimize") not in ("minimize", "maximize")):
        raise FTLError(f"sweep file '{path}': `metric` needs a `name` and a `goal` of maximize or minimize")
    for name, spec in sweep["parameters"].items():
        if not isinstance(spec, dict) or "parameters" in spec:
            raise FTLError(f"sweep parameter '{name}' must be a mapping with value, values or a distribution "
                           "(nested parameters are not supported locally)")
        distribution(name, spec)  # fails early on unknown distributions
    return sweep


def distribution(name: str, spec: dict[str, Any]) -> str:
    """The W&B distribution of a parameter, inferred as W&B does when the file does not name it."""
    if "distribution" in spec:
        kind = spec["distribution"]
    elif "value" in spec:
        kind = "constant"
    elif "values" in spec:
        kind = "categorical"
    elif "min" in spec and "max" in spec:
        kind = "int_uniform" if all(isinstance(spec[k], int) for k in ("min", "max")) else "uniform"
    elif "mu" in spec or "sigma" in spec:
        kind = "normal"
    else:
        raise FTLError(f"sweep parameter '{name}' has no value, values, min/max or distribution: add one")
    if kind not in _SAMPLERS:
        raise FTLError(f"sweep parameter '{name}' has distribution {kind!r}, not supported locally: "
                       f"use one of {', '.join(sorted(_SAMPLERS))}")
    return kind


def _q(value: float, q: float) -> float:
    return round(value / q) * q


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


# Each W&B distribution as a draw from a seeded `random.Random` (W&B's own sampler is the `sweeps` package,
# which cannot be installed beside numpy 2; these follow the definitions in W&B's sweep configuration docs).
_SAMPLERS = {
    "constant": lambda r, s: s["value"],
    "categorical": lambda r, s: r.choices(s["values"], weights=s.get("probabilities"))[0],
    "int_uniform": lambda r, s: r.randint(int(s["min"]), int(s["max"])),
    "uniform": lambda r, s: r.uniform(s["min"], s["max"]),
    "q_uniform": lambda r, s: _q(r.uniform(s["min"], s["max"]), s.get("q", 1)),
    "log_uniform": lambda r, s: math.exp(r.uniform(s["min"], s["max"])),  # min/max are natural-log exponents
    "log_uniform_values": lambda r, s: _log_uniform(r, s["min"], s["max"]),
    "q_log_uniform_values": lambda r, s: _q(_log_uniform(r, s["min"], s["max"]), s.get("q", 1)),
    "inv_log_uniform_values": lambda r, s: 1.0 / _log_uniform(r, 1.0 / s["max"], 1.0 / s["min"]),
    "normal": lambda r, s: r.gauss(s.get("mu", 0.0), s.get("sigma", 1.0)),
    "q_normal": lambda r, s: _q(r.gauss(s.get("mu", 0.0), s.get("sigma", 1.0)), s.get("q", 1)),
    "log_normal": lambda r, s: math.exp(r.gauss(s.get("mu", 0.0), s.get("sigma", 1.0))),
}


def _grid_values(name: str, spec: dict[str, Any]) -> list[Any]:
    kind = distribution(name, spec)
    if kind == "constant":
        return [spec["value"]]
    if kind == "categorical":
        return list(spec["values"])
    if kind == "int_uniform":
        return list(range(int(spec["min"]), int(spec["max"]) + 1))
    raise FTLError(f"grid sweeps need `values` for every parameter, and '{name}' has a {kind} distribution: "
                   "give it values, or run with --method random")


def draw_trials(sweep: dict[str, Any], count: int | None, seed: int = 0) -> list[dict[str, Any]]:
    """The parameter sets of the trials: every grid point (up to `count`), or `count` seeded random draws."""
    params = sweep["parameters"]
    method = sweep["method"]
    if method == "bayes":
        raise FTLError(BAYES_UNAVAILABLE)
    if method == "grid":
        names = list(params)
        grid = itertools.product(*(_grid_values(n, params[n]) for n in names))
        points = [dict(zip(names, point, strict=True)) for point in grid]
        return points[:count] if count else points
    if not count:
        raise FTLError("random sweeps run until stopped online; locally give the number of trials: --count N")
    rng = random.Random(seed)
    kinds = {name: distribution(name, spec) for name, spec in params.items()}
    return [{name: _SAMPLERS[kinds[name]](rng, params[name]) for name in params} for _ in range(count)]


# ---------------------------------------------------------------------------------------------- commands
def _key(flag: str) -> str:
    """`--model.init_args.learning_rate=1` and `--model.learning_rate` -> `model.learning_rate`."""
    key = flag.lstrip("-").split("=", 1)[0]
    return ".".join(part for part in key.split(".") if part != "init_args")


def trial_command(sweep: dict[str, Any], params: dict[str, Any], extra: list[str], run_dir: Path) -> list[str]:
    """The sweep's `command` with W&B's own macro expansion (the same `--name=value` flags `wandb agent`
    passes), run by this interpreter, then the extra overrides and the trial's run directory (these last win)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    macros["interpreter"] = [sys.executable]
    macros["env"] = []  # `wandb agent` runs /usr/bin/env to pass its environment on; a subprocess inherits it
    macros["program"] = [sweep["program"]] if sweep.get("program") else []
    command = []
    for chunk in create_sweep_command(list(sweep.get("command") or [])):
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            if chunk[2:-1] not in macros:
                raise FTLError(f"sweep command macro {chunk} is not supported locally: use ${{args}}")
            command += [str(c) for c in macros[chunk[2:-1]]]
        else:
            command.append(chunk)
    if "fit" not in command or not any(c == "ftl" or c.endswith("/ftl") for c in command):
        raise FTLError(f"local sweeps run `ftl fit` trials, and this sweep's command is {command}: "
                       "use command: [${env}, ${interpreter}, -m, ftl, fit, --config, <config>, ${args}]")
    return [*command, *extra, f"--run_dir={run_dir}"]


# ---------------------------------------------------------------------------------------------- running
@dataclass
class Trial:
    number: int
    params: dict[str, Any]
    run_dir: Path
    status: str = "pending"
    score: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    note: str = ""


class _Tee:
    """Writes to the console and the trial's log (in-process trials; a subprocess writes to the log only)."""

    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.streams[0], name)


def _run_trial(trial: Trial, command: list[str], log: Path, in_process: bool, env: dict[str, str]) -> None:
    with open(log, "w", encoding="utf-8") as out:
        if in_process:
            code = _run_in_process(trial, command, out, env)
        else:
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, check=False).returncode
    if code:
        trial.status = f"failed (exit {code})"
        trial.note = trial.note or _error_line(log.read_text(encoding="utf-8", errors="replace"))


def _error_line(output: str) -> str:
    """The line of a failed trial's output that says why: ftl's or the parser's `error:` line (with the value
    jsonargparse rejected), else the last exception line, else the last line."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if ": error: " in line and not line.startswith("ftl: error:"):  # `python -m ftl fit: error: ...`
            line = line[line.index(": error: ") + 2:]
        if line.startswith(("ftl: error:", "error:")):
            detail = next((ln for ln in lines[i + 1:] if "Got value" in ln), "") if line.endswith(":") else ""
            return f"{line} {detail}".strip()[:300]
    errors = [ln for ln in lines if "Error" in ln.split(":")[0]]
    return (errors or lines or [""])[-1][:300]


def _run_in_process(trial: Trial, command: list[str], out: Any, env: dict[str, str]) -> int:
    import contextlib

    from ftl.commands.cli import main

    argv = command[command.index("ftl") + 1:] if "ftl" in command else command[command.index("fit"):]
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        with contextlib.redirect_stderr(_Tee(sys.stderr, out)):
            main(argv)
        return 0
    except SystemExit as err:
        return err.code if isinstance(err.code, int) else 1
    except Exception as err:  # noqa: BLE001 - a failed trial is recorded, never fatal to the sweep
        trial.note = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"[:300]
        return 1
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _read_score(trial: Trial, metric: str | None) -> None:
    path = trial.run_dir / "metrics.json"
    if path.is_file():
        trial.metrics = json.loads(path.read_text())
    if trial.status != "pending":
        return
    if metric is None:
        trial.status = "ok"
    elif metric in trial.metrics:
        trial.status, trial.score = "ok", float(trial.metrics[metric])
    else:
        trial.status = "no metric"
        trial.note = f"{metric} not in {path}" if path.is_file() else f"no {path}"


def ranked(trials: list[Trial], goal: str) -> list[Trial]:
    """Scored trials best first, then the rest (failed, no metric) in trial order."""
    scored = [t for t in trials if t.score is not None]
    scored.sort(key=lambda t: t.score, reverse=goal == "maximize")
    return scored + [t for t in trials if t.score is None]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write_leaderboard(trials: list[Trial], sweep: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """leaderboard.csv and leaderboard.md in `out_dir`, sorted by the sweep metric, best first."""
    metric = (sweep.get("metric") or {}).get("name")
    goal = (sweep.get("metric") or {}).get("goal", "minimize")
    names = list(sweep["parameters"])
    # beside a val/ metric, the same metric on test: informative, never what trials are ranked on
    paired = "test/" + metric[4:] if metric and metric.startswith("val/") else None
    header = ["rank", "trial", "status", metric or "metric", *( [paired] if paired else []), *names, "run_dir", "note"]
    rows = []
    for rank, t in enumerate(ranked(trials, goal), 1):
        row = [rank if t.score is not None else "", t.number, t.status, t.score]
        row += [t.metrics.get(paired)] if paired else []
        row += [t.params.get(n) for n in names] + [str(t.run_dir), t.note]
        rows.append(row)
    csv_path, md_path = out_dir / "leaderboard.csv", out_dir / "leaderboard.md"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
    title = f"# Sweep {sweep.get('name') or out_dir.parent.name}: {metric or 'no metric'} ({goal}), best first\n\n"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    md_path.write_text(title + "\n".join(lines) + "\n", encoding="utf-8")
    return csv_path, md_path


def plan_sweep(sweep_file: str, count: int | None = None, extra: list[str] | None = None,
               method: str | None = None, seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The sweep as it will run (method override applied, parameters fixed by `extra` removed) and its trials."""
    sweep = load_sweep(sweep_file)
    if method:
        sweep["method"] = method
    fixed = {_key(a) for a in extra or [] if a.startswith("--")}
    for name in [n for n in sweep["parameters"] if _key(n) in fixed]:
        print(f"ftl: sweep: --{name} on the command line fixes that sweep parameter", file=sys.stderr)
        del sweep["parameters"][name]
    if not sweep["parameters"]:
        raise FTLError("every sweep parameter is fixed by a command-line override: drop one of them")
    return sweep, draw_trials(sweep, count or sweep.get("run_cap"), seed)


def run_sweep(sweep_file: str, count: int | None = None, extra: list[str] | None = None, method: str | None = None,
              seed: int = 0, sweep_dir: str | None = None, in_process: bool = False) -> tuple[list[Trial], Path]:
    """Run every trial of the sweep; returns the trials (in run order) and the sweep directory."""
    extra = list(extra or [])
    sweep, trials_params = plan_sweep(sweep_file, count, extra, method, seed)
    command = [str(c) for c in sweep.get("command") or []]
    config = command[command.index("--config") + 1] if "--config" in command[:-1] else None
    if config and not Path(config).is_file():  # relative to where the sweep runs, as for `wandb agent`
        raise FTLError(f"the sweep's config '{config}' is not found from {Path.cwd()}: run ftl sweep from the "
                       "folder the sweep command expects (the repo root for sweeps/*.yaml)")
    stem = Path(sweep_file).stem
    if sweep_dir and Path(sweep_dir).exists() and any(Path(sweep_dir).iterdir()):
        raise FTLError(f"sweep_dir '{sweep_dir}' already holds a sweep: pick a new --sweep_dir")
    out = given_run_dir(sweep_dir, fit=False, resuming=False).path if sweep_dir else \
        new_run_dir(Path("runs") / "sweeps", stem).path
    metric = (sweep.get("metric") or {}).get("name")
    if metric is None:
        print("ftl: sweep: the sweep file names no metric, so the leaderboard is in trial order", file=sys.stderr)
    (out / "sweep.json").write_text(json.dumps({"file": str(sweep_file), "sweep": sweep, "count": count,
                                                "seed": seed, "extra": extra}, indent=2, default=str) + "\n")
    env = dict(os.environ, WANDB_RUN_GROUP=os.environ.get("WANDB_RUN_GROUP", f"sweep-{stem}-{out.name}"))
    trials: list[Trial] = []
    width = max(2, len(str(len(trials_params))))
    for number, params in enumerate(trials_params, 1):
        trial = Trial(number, params, out / f"trial-{number:0{width}d}")
        command = trial_command(sweep, params, extra, trial.run_dir)
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in params.items())
        print(f"ftl: sweep: trial {number}/{len(trials_params)}: {shown}", file=sys.stderr)
        (out / f"{trial.run_dir.name}.cmd").write_text(shlex.join(command) + "\n")
        _run_trial(trial, command, out / f"{trial.run_dir.name}.log", in_process, env)
        _read_score(trial, metric)
        trials.append(trial)
        result = f"{metric}={_fmt(trial.score)}" if trial.score is not None else f"{trial.status} {trial.note}"
        print(f"ftl: sweep: trial {number} -> {result.strip()} ({trial.run_dir})", file=sys.stderr)
        write_leaderboard(trials, sweep, out)
    return trials, out


# ---------------------------------------------------------------------------------------------- entry point
def sweep(sweep_file: str, count: int | None = None, method: Literal["grid", "random", "bayes"] | None = None,
          sweep_seed: int = 0, sweep_dir: str | None = None, in_process: bool = False, dry_run: bool = False,
          overrides: list[str] | None = None) -> None:
    """Run a W&B sweep file locally: each trial is an `ftl fit` with its own run directory; a leaderboard (csv,
    md) sorted by the sweep metric is written to the sweep directory. Any other --key value is passed to every
    trial after the sweep's values, and fixes that sweep parameter.

    Args:
        sweep_file: W&B sweep YAML, e.g. sweeps/cancer.yaml.
        count: number of trials (random: required unless run_cap; grid: at most this many).
        method: override the file's method.
        sweep_seed: seed of the random parameter draws.
        sweep_dir: where trials and the leaderboard go (default runs/sweeps/<file>/<timestamp>).
        in_process: run trials in this process (faster start; a crash then ends the sweep).
        dry_run: print the trial commands, run nothing.
        overrides: `--key value` arguments for every trial (the command line's other options).
    """
    extra = list(overrides or [])
    if dry_run:
        spec, planned = plan_sweep(sweep_file, count, extra, method, sweep_seed)
        for number, params in enumerate(planned, 1):
            print(shlex.join(trial_command(spec, params, extra, Path(f"<sweep_dir>/trial-{number:02d}"))))
        return
    trials, out = run_sweep(sweep_file, count, extra, method, sweep_seed, sweep_dir, in_process)
    print((out / "leaderboard.md").read_text())
    ok = sum(t.status == "ok" for t in trials)
    print(f"ftl: sweep: {ok}/{len(trials)} trials scored; leaderboard in {out / 'leaderboard.md'} and .csv",
          file=sys.stderr)


def main(argv: list[str]) -> None:
    """`ftl sweep SWEEP.yaml --count N [--method M] [--sweep_seed S] [--sweep_dir D] [overrides...]`."""
    from ftl.commands.parsing import check_config_files, function_parser, prog_name, split_passthrough

    check_config_files(argv)
    parser = function_parser(prog_name("sweep"), sweep, positional=True, skip={"overrides"})
    own, overrides = split_passthrough(parser, argv)
    config = parser.parse_args(own).as_dict()
    config["overrides"] = overrides
    sweep(**{k: v for k, v in config.items() if k != "config" and not k.startswith("__")})
