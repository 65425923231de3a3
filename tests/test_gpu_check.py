"""`benchmarks/gpu_check.py`'s summary: ftl's ratios to HF and TRL and the goal verdicts, on made-up run numbers
(the GPU check itself needs a GPU and minutes; its summary must not get a ratio upside down)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", BENCHMARKS / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def run(samples: float, steady: float, mfu: float | None = None) -> dict:
    return {"samples_per_s": samples, "steady_samples_per_s": steady, "mfu": mfu, "steady_mfu": mfu}


def test_ratios_are_ftl_over_the_baseline_and_goals_are_judged_on_the_whole_loop(gpu_check):
    results = {
        "encoder_full": {"ftl": run(120.0, 130.0, mfu=0.40), "hf": run(100.0, 100.0),
                         "ftl_compile": run(60.0, 260.0)},
        "encoder_mixed": {"ftl": run(150.0, 160.0), "hf": run(100.0, 80.0)},
        "decoder": {"ftl": run(90.0, 95.0), "hf": run(60.0, 60.0), "trl": run(100.0, 95.0)},
    }
    summary = gpu_check.summarize(results)
    ratios = summary["ratios"]
    assert ratios["encoder_full_ftl_vs_hf"] == {"samples_per_s": 1.2, "steady_samples_per_s": 1.3}
    assert ratios["encoder_full_compiled_vs_eager"] == {"samples_per_s": 0.5, "steady_samples_per_s": 2.0}
    assert ratios["encoder_mixed_ftl_vs_hf"]["steady_samples_per_s"] == 2.0
    assert ratios["decoder_ftl_vs_hf"]["samples_per_s"] == 1.5
    assert ratios["decoder_ftl_vs_trl"] == {"samples_per_s": 0.9, "steady_samples_per_s": 1.0}
    goals = {g["name"]: g for g in summary["goals"]}
    assert {name: g["verdict"] for name, g in goals.items()} == {
        "encoder_full_vs_hf": "met", "encoder_mixed_vs_hf": "met", "decoder_vs_trl": "missed",
        "encoder_full_mfu": "met"}
    assert (goals["decoder_vs_trl"]["value"], goals["decoder_vs_trl"]["steady"]) == (0.9, 1.0)
    assert goals["encoder_full_mfu"]["value"] == 0.40


def test_missing_runs_and_the_cpu_dry_run_are_not_judged(gpu_check):
    results = {"encoder_full": {"ftl": run(50.0, 50.0, mfu=None), "hf": {"error": "exited 1"}},
               "decoder": {"ftl": run(90.0, 95.0), "hf": run(60.0, 60.0)}}
    goals = {g["name"]: g for g in gpu_check.summarize(results)["goals"]}
    assert goals["encoder_full_vs_hf"]["value"] is None
    assert goals["encoder_full_vs_hf"]["verdict"] == "not judged: a run failed"
    assert "no TRL run" in goals["decoder_vs_trl"]["verdict"]
    assert "device peak unknown" in goals["encoder_full_mfu"]["verdict"]
    dry = gpu_check.summarize({"encoder_full": {"ftl": run(2.0, 2.0), "hf": run(1.0, 1.0)}}, judged=False)
    assert dry["ratios"]["encoder_full_ftl_vs_hf"]["samples_per_s"] == 2.0
    assert {g["verdict"] for g in dry["goals"]} == {"not judged (CPU dry run)"}


def test_the_wheel_list_names_every_package_ftl_fit_needs_beyond_the_gpu_image(gpu_check):
    listed = {name for name, *_ in gpu_check.WHEELS}
    assert {"datasets", "jsonargparse", "dill", "multiprocess", "docstring-parser", "typeshed-client"} <= listed
    text = gpu_check.wheels_text()
    assert "--no-index --find-links" in text and "pip download --no-deps" in text
    assert f"{sum(size for *_, size in gpu_check.WHEELS) / 2**20:.2f} MiB" in text
