"""Data preparation, first run vs second run (tokenization cache), and `ftl --help` start-up time.

    python benchmarks/data_prep.py --data ../shared/data/depression_reddit

Each measurement runs in a fresh process (as a real second run would), with a fresh cache directory for the
first run. Prints seconds and the first/second ratio. Not run by pytest.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

PREPARE = """
import sys, time
import datasets, transformers  # imported by every run anyway: not part of data preparation
from ftl.data.classification import TextClassificationDataModule
imported = time.perf_counter()
dm = TextClassificationDataModule(data_dir=sys.argv[1], tokenizer=sys.argv[2], max_length=int(sys.argv[3]))
dm.prepare_data()
dm.setup("fit")
print(f"{time.perf_counter() - imported:.3f}")
"""


def timed_prepare(data: str, model: str, max_length: int, cache: str) -> float:
    env = dict(os.environ, FTL_CACHE=cache, HF_DATASETS_CACHE=str(Path(cache) / "hf"), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", PREPARE, data, model, str(max_length)], env=env, check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "depression_reddit"))
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    firsts, seconds = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            firsts.append(timed_prepare(args.data, args.model, args.max_length, cache))
            seconds.append(timed_prepare(args.data, args.model, args.max_length, cache))
    first, second = sorted(firsts)[len(firsts) // 2], sorted(seconds)[len(seconds) // 2]
    print(f"data preparation (load, split, tokenize), median of {args.repeats}: first run {first:.2f} s, "
          f"second run {second:.2f} s, ratio {first / second:.1f}x")

    helps = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ftl", "--help"], check=True, capture_output=True)
        helps.append(time.perf_counter() - start)
    print(f"`python -m ftl --help`: median {sorted(helps)[len(helps) // 2]:.2f} s")


if __name__ == "__main__":
    main()
