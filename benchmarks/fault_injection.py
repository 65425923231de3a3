"""The real quickstart (MiniLM-L6, 600/150/150 synthetic rows, 2 epochs) killed at five points and resumed with
`--ckpt_path last`, each compared with an unbroken run of the same command: every metric of metrics.json (wall-clock
numbers aside) and test_predictions.csv byte for byte.

    python benchmarks/fault_injection.py [--root /tmp/ftl_faults] [--points SIGINT:mid_epoch ...]

The faults are real signals the fit sends itself from `tests.test_faults.Fault` (chosen by FTL_TEST_FAULT):
SIGINT and SIGKILL after the third step of epoch 2, SIGKILL halfway through writing epoch 2's last.ckpt, and
SIGKILL and SIGINT as the test pass starts. Prints one line per point; exits 1 if any resumed run differs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POINTS = ["SIGINT:mid_epoch", "SIGKILL:mid_epoch", "SIGKILL:checkpoint_write", "SIGKILL:test", "SIGINT:test"]
WALL_CLOCK = ("/runtime", "/samples_per_sec", "/steps_per_sec", "/tokens_per_sec", "/tflops", "/mfu")


def fit(root: Path, name: str, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "ftl", "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"),
               "--runs_root", str(root), "--run_name", name, "--progress_every", "600", *extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT / "src"))  # this checkout's code
    if fault:
        env["FTL_TEST_FAULT"] = fault
        command.append("--trainer.callbacks+=tests.test_faults.Fault")
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)


def only_run(root: Path, name: str) -> Path:
    (run,) = (root / name).iterdir()
    return run


def quality(run: Path) -> dict[str, float]:
    metrics = json.loads((run / "metrics.json").read_text())
    return {key: value for key, value in metrics.items() if not key.endswith(WALL_CLOCK)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/ftl_faults"))
    parser.add_argument("--points", nargs="+", default=POINTS)
    args = parser.parse_args()
    shutil.rmtree(args.root, ignore_errors=True)

    start = time.time()
    result = fit(args.root, "unbroken")
    if result.returncode != 0:
        sys.exit(f"unbroken run failed:\n{result.stderr[-3000:]}")
    reference_run = only_run(args.root, "unbroken")
    reference = quality(reference_run)
    print(f"unbroken: {len(reference)} metrics, test/accuracy {reference['test/accuracy']:.4f}, "
          f"test/loss {reference['test/loss']:.6f} ({time.time() - start:.0f} s)", flush=True)

    failed = False
    for point in args.points:
        name = point.replace(":", "_").lower()
        start = time.time()
        killed = fit(args.root, name, fault=point)
        last_line = (killed.stderr.strip().splitlines() or [""])[-1]
        resumed = fit(args.root, name, "--ckpt_path", "last")
        run = only_run(args.root, name)
        if resumed.returncode != 0 or not (run / "metrics.json").is_file():
            print(f"{point}: resume failed (exit {resumed.returncode}): {resumed.stderr[-500:]}", flush=True)
            failed = True
            continue
        done = quality(run)
        differ = {k: (done.get(k), v) for k, v in reference.items() if done.get(k) is None or abs(done[k] - v) > 1e-6}
        records = "test_predictions.csv"
        same_records = (run / records).read_bytes() == (reference_run / records).read_bytes()
        failed |= bool(differ) or not same_records or set(done) != set(reference)
        print(f"{point}: killed with exit {killed.returncode} ({last_line[:160]!r}); resumed: "
              f"{len(done)} metrics, {len(differ)} differ (max |diff| "
              f"{max((abs((a or 0) - b) for a, b in differ.values()), default=0.0):.2e}), test records "
              f"{'identical' if same_records else 'DIFFERENT'}, test/accuracy {done['test/accuracy']:.4f} "
              f"({time.time() - start:.0f} s)", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
