"""Disk use of one `ftl fit` run: each checkpoint, hf_model/ and the whole run directory, in MB (10^6 bytes).

    python benchmarks/disk_use.py --config configs/cancer.yaml [--src OLD_TREE/src] [--] [fit overrides...]

`--src` runs another checkout's code (e.g. a `git worktree` of an older commit) with this environment, so two
versions are measured with the same command. Checkpoint sizes do not depend on how many steps ran, so a short run
(`--trainer.limit_train_batches 3 --trainer.limit_val_batches 3`) measures what a full one keeps; files that are
hard links of one another are counted once, as `du` does.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def size_mb(paths: list[Path]) -> float:
    seen, total = set(), 0
    for path in paths:
        for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
            stat = file.stat()
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the ftl source folder to run")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="fit options, after --")
    args = parser.parse_args()
    overrides = [a for a in args.overrides if a != "--"]
    with tempfile.TemporaryDirectory() as root:
        env = dict(os.environ, PYTHONPATH=str(args.src.resolve()))
        command = [sys.executable, "-m", "ftl", "fit", "--config", str(Path(args.config).resolve()),
                   "--runs_root", root, "--run_name", "disk", *overrides]
        result = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"fit failed:\n{result.stderr[-3000:]}")
        (run,) = (Path(root) / "disk").iterdir()
        checkpoints = sorted((run / "checkpoints").glob("*.ckpt"))
        for ckpt in checkpoints:
            links = ckpt.stat().st_nlink
            print(f"  {ckpt.name}: {size_mb([ckpt]):.0f} MB" + (f" ({links} names, one file)" if links > 1 else ""))
        print(f"checkpoints {size_mb(checkpoints):.0f} MB, hf_model {size_mb([run / 'hf_model']):.0f} MB, "
              f"run directory {size_mb([run]):.0f} MB  (code: {args.src})")


if __name__ == "__main__":
    main()
