"""ftl.malloc: after tune_malloc, activations freed at the end of a step are reused, not faulted in again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PROBE = """
import resource, sys, torch
from ftl.malloc import tune_malloc
applied = tune_malloc() if sys.argv[1] == "tune" else False
faults = []
for step in range(8):
    # like training on length-grouped batches: each step's activations have a new size and are freed together
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    activations = [torch.ones(256 * 1024 * (1 + step % 4)) for _ in range(50)]
    del activations
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, sum(faults[4:]))  # the second round of the four sizes
"""


def _probe(mode: str, **env: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is Linux-only")
def test_tuned_process_reuses_freed_memory_instead_of_faulting_it_in():
    tuned, tuned_faults = _probe("tune")
    default_applied, default_faults = _probe("default")
    assert tuned and not default_applied
    # 4 steps of 50-200 MiB: glibc's defaults give most pages back and fault them in again (~60k faults here);
    # tuned, the heap already holds them
    assert default_faults > 20_000
    assert tuned_faults < default_faults / 4


def test_opt_out_by_environment():
    applied, _ = _probe("tune", FTL_MALLOC_TUNING="0")
    assert not applied


def test_malloc_is_tuned_before_data_and_model_only_for_runs_on_cpu():
    import torch

    from ftl.speedups import runs_on_cpu

    assert runs_on_cpu("cpu") and not runs_on_cpu("cuda") and not runs_on_cpu("mps") and not runs_on_cpu("gpu")
    on_cpu_here = not torch.cuda.is_available() and not torch.backends.mps.is_available()
    assert runs_on_cpu("auto") == runs_on_cpu(None) == on_cpu_here
