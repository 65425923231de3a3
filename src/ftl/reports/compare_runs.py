"""`ftl compare --runs RUN_A RUN_B [...]`: finished runs side by side on their own per-row test records.

Each run directory holds `metrics.json` and `test_rows.json` (written by its test). Every run is compared with
the baseline (the first run, or `--baseline`) with the same paired statistics as the before/after table: the
change's paired bootstrap interval, McNemar for accuracy, a paired permutation test for the other metrics, Holm
over all tests of the table, a verdict. Runs tested on other rows are refused. With three or more runs (e.g. one
recipe under several seeds) a second table gives each metric's mean, standard deviation and the t interval of
the mean across runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftl.errors import FTLError
from ftl.reports.compare import PAIRED_NOTE, format_p, holm_by_metric, test_metrics
from ftl.reports.records import read_run_rows
from ftl.reports.stats import DEFAULT_RESAMPLES, across_runs, check_paired, paired_changes, verdict
from ftl.reports.tables import format_value, format_with_interval, markdown_table, metric_rows

RUNS_NOTE = PAIRED_NOTE.replace("Change = After - Before", "Change = run - baseline").replace(
    "better/worse: for After", "better/worse: for the run")


def _metrics(run_dir: Path) -> dict[str, float]:
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise FTLError(f"'{run_dir}' has no metrics.json: pass run directories that were tested")
    return test_metrics(json.loads(path.read_text()))


def _name(run_dir: Path) -> str:
    return f"{run_dir.parent.name}/{run_dir.name}"


def compare_runs(run_dirs: list[str | Path], baseline: str | Path | None = None,
                 resamples: int = DEFAULT_RESAMPLES) -> dict[str, Any]:
    """The comparison of `run_dirs` (as compare.json holds it): rows of (metric, run) with paired statistics."""
    runs = [Path(r).expanduser() for r in run_dirs]
    if len(runs) < 2 and baseline is None:
        raise FTLError("--runs needs at least two run directories (or one and --baseline)")
    base = Path(baseline).expanduser() if baseline is not None else runs[0]
    others = [r for r in runs if r.resolve() != base.resolve()] if baseline is not None else runs[1:]
    if not others:  # a run against itself: allowed, it shows zero change
        others = [base]
    base_rows, base_metrics = read_run_rows(base), _metrics(base)
    side: list[tuple[Path, Any, dict[str, float]]] = []
    for run in others:
        rows = read_run_rows(run)
        check_paired(base_rows, rows, f"baseline '{_name(base)}'", f"run '{_name(run)}'")
        side.append((run, rows, _metrics(run)))
    labels = base_rows.label_names
    # (key, name) pairs: a metric may be shown twice ("Accuracy on X" is "Recall (X)")
    shown = metric_rows(list(dict.fromkeys([*base_metrics, *(k for _, _, m in side for k in m)])), "test", labels)
    table: list[dict[str, Any]] = []
    for run, rows, metrics in side:
        changes = paired_changes(base_rows, rows, resamples)
        for key, name in shown:
            b, a = base_metrics.get(key), metrics.get(key)
            change = a - b if a is not None and b is not None else None
            paired = changes.get(key.split("/", 1)[1]) if change is not None else None
            table.append({"metric": key, "name": name, "run": str(run), "baseline_value": b, "value": a,
                          "change": change, "change_ci_low": getattr(paired, "low", None),
                          "change_ci_high": getattr(paired, "high", None),
                          "p_value": getattr(paired, "p_value", None), "test": getattr(paired, "test", None)})
    for row in table:
        row["test_id"] = (row["metric"], row["run"])
    adjusted = holm_by_metric(table, "test_id")
    for row in table:
        del row["test_id"]
    for row, p_holm in zip(table, adjusted, strict=True):
        row["p_holm"] = p_holm
        row["verdict"] = verdict(row["change"], p_holm, row["metric"], lower_is_better=base_rows.lower_is_better,
                                 interval=(row["change_ci_low"], row["change_ci_high"])) \
            if row["change"] is not None else None
    all_runs = [base] + [run for run, _, _ in side if run.resolve() != base.resolve()]
    all_metrics = [base_metrics] + [m for run, _, m in side if run.resolve() != base.resolve()]
    # mean, std and t interval across runs: with three or more (with two, the t interval has one degree of freedom)
    spread = {key: across_runs([m.get(key) for m in all_metrics]) for key in dict(shown)} if len(all_runs) >= 3 else {}
    return {"baseline": str(base), "runs": [str(r) for r in all_runs], "test_rows": len(base_rows),
            "label_names": labels, "ci_resamples": resamples, "rows": table, "metrics": {
                str(run): m for run, m in zip(all_runs, all_metrics, strict=True)}, "across_runs": spread}


def render_runs(result: dict[str, Any]) -> str:
    metrics = {Path(k): v for k, v in result["metrics"].items()}
    base = Path(result["baseline"])
    lines = ["# Runs compared", "", f"- **Baseline**: `{base}`"]
    lines += [f"- **Run**: `{run}`" for run in result["runs"] if Path(run) != base]
    lines += [f"- **Test split**: {result['test_rows']} rows, the same in every run", ""]
    rows = []
    for r in result["rows"]:
        run = Path(r["run"])
        change = format_value(r["metric"], r["change"], signed=True)
        if r.get("change_ci_low") is not None:
            change += (f" [{format_value(r['metric'], r['change_ci_low'], signed=True)}, "
                       f"{format_value(r['metric'], r['change_ci_high'], signed=True)}]")
        rows.append([r["name"], _name(run), format_with_interval(r["metric"], metrics.get(base, {})),
                     format_with_interval(r["metric"], metrics.get(run, {})), change, format_p(r.get("p_holm")),
                     (r.get("verdict") or "").replace("_", " ")])
    lines += [markdown_table(["Metric", "Run", "Baseline", "Run's value", "Change", "p (Holm)", "Verdict"], rows,
                             align="llrrrrl"), "", RUNS_NOTE + " Values: [95% bootstrap interval over the test rows]."]
    spread = result.get("across_runs") or {}
    if spread:
        lines += ["", f"## Across the {len(result['runs'])} runs", "",
                  markdown_table(["Metric", "Mean", "Std", "95% CI of the mean (t)"], [
                      [dict(metric_rows([k], "test", result.get("label_names")))[k], format_value(k, s["mean"]),
                       format_value(k, s["std"]),
                       f"[{format_value(k, s['ci_low'])}, {format_value(k, s['ci_high'])}]"
                       if s["ci_low"] is not None else "n/a"]
                      for k, s in spread.items()]),
                  "", "Std: sample standard deviation across runs (e.g. seeds); the interval is the mean's, from "
                  "Student's t with runs - 1 degrees of freedom: the spread a change has to beat."]
    return "\n".join(lines) + "\n"


def write_runs_comparison(result: dict[str, Any], out_dir: Path) -> str:
    from ftl.reports.callbacks import write_json, write_text_atomic

    write_json(out_dir / "compare.json", result)
    text = render_runs(result)
    write_text_atomic(out_dir / "compare.md", text)
    return text
