"""Sweep files and the local sweep runner: sampling, trial commands, overrides that reach the model, leaderboard."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import yaml

from ftl.errors import FTLError

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["depression", "cancer", "medical_abstracts", "imdb", "medquad"]
SWEEPS = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))


def write_sweep(path: Path, **sweep) -> Path:
    path.write_text(yaml.safe_dump(sweep))
    return path


# ---------------------------------------------------------------------------------------------- sweep files
def test_there_is_one_sweep_file_per_task():
    assert set(TASKS) <= set(SWEEPS)


@pytest.mark.parametrize("task", SWEEPS)
def test_sweep_file_optimises_the_task_metric_with_values_after_the_config(task):
    from ftl.commands.sweep import load_sweep

    sweep = load_sweep(ROOT / "sweeps" / f"{task}.yaml")
    expected = ("val/loss", "minimize") if task == "medquad" else ("val/f1_macro", "maximize")
    assert (sweep["metric"]["name"], sweep["metric"]["goal"]) == expected
    command = sweep["command"]
    assert command[:5] == ["${env}", "${interpreter}", "-m", "ftl", "fit"]
    assert command[command.index("--config") + 1] == f"configs/{task}.yaml"
    assert command[-1] == "${args}"  # after --config: the sweep's values win over the YAML
    names = set(sweep["parameters"])
    assert {"model.learning_rate", "data.batch_size", "trainer.max_epochs", "model.weight_decay"} <= names
    assert names & {"model.warmup_ratio", "model.warmup_steps"}


# (sweep, config) -> data source and model for a tiny instantiation; the data module stays the config's own
def _tiny_sources(task: str, fixtures: dict) -> list[str]:
    if task == "medquad":
        return ["--model.pretrained", str(fixtures["tiny_gpt2"]), "--data.data_dir", str(fixtures["tiny_qa_dir"]),
                "--data.dataset", "null"]
    if task == "qa_relevance":  # its data module pairs question/answer rows, as MedQuAD's
        return ["--model.pretrained", str(fixtures["tiny_bert"]), "--data.data_dir", str(fixtures["tiny_qa_dir"]),
                "--data.dataset", "null"]
    data = fixtures["tiny_data_dir"] if task == "medical_abstracts" else fixtures["tiny_binary_dir"]
    return ["--model.pretrained", str(fixtures["tiny_bert"]), "--data.data_dir", str(data), "--data.dataset", "null"]


def _received(cli, name: str):
    """The value the instantiated model, data module or trainer holds for a sweep parameter."""
    group, attr = name.split(".", 1)
    if group == "model":
        return cli.model.hparams[attr]
    if group == "data":
        return getattr(cli.datamodule, attr)
    if group == "trainer":
        return getattr(cli.trainer, attr)
    raise AssertionError(f"no check for sweep parameter {name}")


def _differs(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return not math.isclose(a, b)
    return a != b


@pytest.mark.parametrize("task", SWEEPS)
def test_sweep_parameters_are_cli_overrides_that_reach_the_model_and_data(task, tmp_path, request, capsys):
    """Each parameter, formatted as `wandb agent` formats it, parses after --config and changes what the
    model, data module or trainer receives. Only sweeps whose config does not exist yet are skipped."""
    import random

    from ftl.commands.cli import FTLCLI
    from ftl.commands.sweep import _SAMPLERS, distribution, load_sweep, trial_command

    sweep = load_sweep(ROOT / "sweeps" / f"{task}.yaml")
    config_file = sweep["command"][sweep["command"].index("--config") + 1]
    if not (ROOT / config_file).is_file():
        with capsys.disabled():
            print(f"\nskipped: {config_file} does not exist yet (sweeps/{task}.yaml)")
        pytest.skip(f"{config_file} does not exist yet")
    fixtures = {name: request.getfixturevalue(name) for name in
                (("tiny_gpt2", "tiny_qa_dir") if task == "medquad" else ("tiny_bert", "tiny_data_dir",
                                                                         "tiny_binary_dir", "tiny_qa_dir"))}
    sources = _tiny_sources(task, fixtures)
    base_args = ["--config", str(ROOT / config_file), *sources]  # run=False: no subcommand
    baseline = FTLCLI(args=[*base_args, "--run_dir", str(tmp_path / "base")], run=False)
    rng = random.Random(0)
    chosen = {}
    for name, spec in sweep["parameters"].items():
        default = _received(baseline, name)
        if "values" in spec:  # a value that differs from the config's, as the agent would pass it
            candidates = [v for v in spec["values"] if _differs(None if v == "null" else v, default)]
            chosen[name] = candidates[0]
        else:
            chosen[name] = _SAMPLERS[distribution(name, spec)](rng, spec)
    command = trial_command(sweep, chosen, sources, tmp_path / "trial")
    assert command[command.index("--config") + 1] == config_file
    argv = command[command.index("fit") + 1:]
    argv[argv.index("--config") + 1] = str(ROOT / config_file)
    trial = FTLCLI(args=argv, run=False)
    for name, value in chosen.items():
        expected = None if value == "null" else value
        got = _received(trial, name)
        assert got == pytest.approx(expected) if isinstance(expected, float) else got == expected, name
        assert _differs(got, _received(baseline, name)), f"{name} did not change the value the run receives"


# ---------------------------------------------------------------------------------------------- sampling
PARAMS = {
    "model.learning_rate": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-3},
    "data.batch_size": {"values": [8, 16, 32]},
    "trainer.max_epochs": {"min": 1, "max": 4},
    "model.weight_decay": {"distribution": "q_uniform", "min": 0.0, "max": 0.1, "q": 0.01},
    "model.warmup_ratio": {"value": 0.1},
}


def test_random_draws_are_seeded_and_follow_each_distribution():
    from ftl.commands.sweep import draw_trials

    sweep = {"method": "random", "parameters": PARAMS}
    trials = draw_trials(sweep, 200, seed=3)
    assert trials == draw_trials(sweep, 200, seed=3) and trials != draw_trials(sweep, 200, seed=4)
    lrs = [t["model.learning_rate"] for t in trials]
    assert all(1e-5 <= lr <= 1e-3 for lr in lrs)
    # log-uniform: about half the draws below the geometric midpoint 1e-4
    assert 0.35 < sum(lr < 1e-4 for lr in lrs) / len(lrs) < 0.65
    assert {t["data.batch_size"] for t in trials} == {8, 16, 32}
    assert {t["trainer.max_epochs"] for t in trials} == {1, 2, 3, 4}  # int_uniform inferred from int bounds
    assert all(abs(t["model.weight_decay"] * 100 - round(t["model.weight_decay"] * 100)) < 1e-9 for t in trials)
    assert {t["model.warmup_ratio"] for t in trials} == {0.1}


def test_grid_is_every_combination_in_file_order_capped_by_count():
    from ftl.commands.sweep import draw_trials

    sweep = {"method": "grid", "parameters": {"a": {"values": [1, 2]}, "b": {"values": ["x", "y", "z"]},
                                              "c": {"value": 0}}}
    points = draw_trials(sweep, None)
    assert points == [{"a": a, "b": b, "c": 0} for a in (1, 2) for b in ("x", "y", "z")]
    assert draw_trials(sweep, 4) == points[:4]
    with pytest.raises(FTLError, match="grid sweeps need `values`"):
        draw_trials({"method": "grid", "parameters": PARAMS}, None)


def test_bayes_says_why_it_is_not_available_locally_and_random_needs_a_count():
    from ftl.commands.sweep import draw_trials

    with pytest.raises(FTLError, match="numpy<2.*--method random"):
        draw_trials({"method": "bayes", "parameters": PARAMS}, 4)
    with pytest.raises(FTLError, match="--count N"):
        draw_trials({"method": "random", "parameters": PARAMS}, None)


def test_bad_sweep_files_are_one_line_errors(tmp_path):
    from ftl.commands.sweep import load_sweep

    cases = {
        "no_params": ({"method": "random"}, "no `parameters`"),
        "bad_method": ({"method": "hyperband", "parameters": PARAMS}, "use one of grid, random, bayes"),
        "bad_dist": ({"method": "random", "parameters": {"x": {"distribution": "beta"}}}, "not supported locally"),
        "bad_metric": ({"method": "random", "metric": {"name": "m", "goal": "up"}, "parameters": PARAMS}, "goal"),
    }
    for name, (sweep, message) in cases.items():
        with pytest.raises(FTLError, match=message) as err:
            load_sweep(write_sweep(tmp_path / f"{name}.yaml", **sweep))
        assert "\n" not in str(err.value)
    with pytest.raises(FTLError, match="not found"):
        load_sweep(tmp_path / "missing.yaml")


# ---------------------------------------------------------------------------------------------- commands
def test_trial_command_puts_sweep_values_after_the_config_then_overrides_then_run_dir(tmp_path):
    from ftl.commands.sweep import load_sweep, trial_command

    sweep = load_sweep(ROOT / "sweeps" / "cancer.yaml")
    params = {"model.learning_rate": 3e-05, "data.batch_size": 16, "model.class_weights": "null"}
    command = trial_command(sweep, params, ["--data.data_dir", "d"], tmp_path / "t1")
    assert command == [sys.executable, "-m", "ftl", "fit", "--config", "configs/cancer.yaml",
                       "--model.learning_rate=3e-05", "--data.batch_size=16", "--model.class_weights=null",
                       "--data.data_dir", "d", f"--run_dir={tmp_path / 't1'}"]
    bad = dict(sweep, command=["${env}", "${interpreter}", "train.py", "${args}"])
    with pytest.raises(FTLError, match="ftl fit"):
        trial_command(bad, params, [], tmp_path / "t2")


def test_command_line_overrides_fix_sweep_parameters(tmp_path, capsys):
    from ftl.commands.sweep import plan_sweep

    path = write_sweep(tmp_path / "s.yaml", method="random", parameters=PARAMS)
    sweep, trials = plan_sweep(str(path), 3, ["--trainer.max_epochs", "1", "--model.init_args.learning_rate=1e-4"])
    assert set(sweep["parameters"]) == set(PARAMS) - {"trainer.max_epochs", "model.learning_rate"}
    assert all(set(t) == set(sweep["parameters"]) for t in trials)
    assert capsys.readouterr().err.count("fixes that sweep parameter") == 2


def test_a_failing_subprocess_trial_is_recorded_with_its_error(tmp_path):
    from ftl.commands.sweep import Trial, _run_trial

    trial = Trial(1, {}, tmp_path / "trial-01")
    script = "import sys; print('training...'); print('ftl: error: data_dir missing: pass one'); sys.exit(2)"
    _run_trial(trial, [sys.executable, "-c", script], tmp_path / "trial-01.log", in_process=False, env={})
    assert trial.status == "failed (exit 2)"
    assert trial.note == "ftl: error: data_dir missing: pass one"


# ---------------------------------------------------------------------------------------------- local sweep
def test_local_sweep_writes_a_leaderboard_best_first(tmp_path, tiny_data_dir, tiny_bert, capsys):
    """Two real trials (one that cannot train well) and one that fails: all recorded, best first."""
    from ftl.commands.cli import main

    sweep = write_sweep(
        tmp_path / "tiny.yaml", name="tiny", method="grid",
        metric={"name": "val/f1_macro", "goal": "maximize"},
        parameters={"model.learning_rate": {"values": [3e-3, 1e-9, "not-a-number"]}},
        command=["${env}", "${interpreter}", "-m", "ftl", "fit", "--config", str(ROOT / "configs/depression.yaml"),
                 "${args}"],
    )
    out = tmp_path / "sweep"
    main(["sweep", str(sweep), "--sweep_dir", str(out), "--in_process", "true",
          "--model.pretrained", str(tiny_bert),
          "--data.class_path", "ftl.data.classification.TextClassificationDataModule",
          "--data.data_dir", str(tiny_data_dir), "--data.max_length", "64", "--trainer.max_epochs", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.logger", "null"])
    with open(out / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    runs = {n: json.loads((out / f"trial-0{n}" / "metrics.json").read_text()) for n in (1, 2)}
    best_first = sorted(runs, key=lambda n: -runs[n]["val/f1_macro"])
    assert runs[1]["val/f1_macro"] != runs[2]["val/f1_macro"]  # distinct scores: the order is a real test
    lrs = {1: "0.003", 2: "1e-09"}
    assert [(r["rank"], r["trial"], r["status"], r["model.learning_rate"], r["run_dir"]) for r in rows] == [
        *[(str(rank), str(n), "ok", lrs[n], str(out / f"trial-0{n}")) for rank, n in enumerate(best_first, 1)],
        ("", "3", "failed (exit 2)", "not-a-number", str(out / "trial-03"))]
    for row in rows[:2]:
        metrics = runs[int(row["trial"])]
        assert float(row["val/f1_macro"]) == pytest.approx(metrics["val/f1_macro"])
        assert float(row["test/f1_macro"]) == pytest.approx(metrics["test/f1_macro"])
    assert rows[2]["note"].startswith("error:") and "not-a-number" in rows[2]["note"]
    md = (out / "leaderboard.md").read_text().splitlines()
    assert md[0].startswith("# Sweep tiny: val/f1_macro (maximize), best first")
    assert md[2].split("|")[1:5] == [" rank ", " trial ", " status ", " val/f1_macro "]
    assert [line.split("|")[2].strip() for line in md[4:]] == [*map(str, best_first), "3"]
    assert (out / "leaderboard.md").read_text() in capsys.readouterr().out


def test_sweep_run_from_elsewhere_than_its_config_expects_is_a_clear_error(tmp_path, monkeypatch):
    from ftl.commands.sweep import run_sweep

    monkeypatch.chdir(tmp_path)  # sweeps/*.yaml name configs/<task>.yaml relative to the repo root
    with pytest.raises(FTLError, match="'configs/cancer.yaml' is not found from"):
        run_sweep(str(ROOT / "sweeps" / "cancer.yaml"), count=1, sweep_dir=str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()
