"""How data preparation grows with the rows: time and peak memory of loading, tokenizing and building the
training sampler for synthetic classification data of 10k, 100k and 1M rows, first run and cached.

    python benchmarks/data_scale.py [--rows 10000 100000 1000000] [--root /tmp/ftl_data_scale]

Each size is a folder of train/val/test CSVs (80/10/10) whose texts are seeded random sentences of 10-120 health
words (about 1.6 tokens per word with MiniLM's tokenizer). Each measurement runs in a fresh process that builds a
`TextClassificationDataModule` (tokenizer `minilm-l6`, max_length 128, its own cache folder), calls
`prepare_data()` and `setup("fit")` and builds the training loader (its length-grouped sampler reads every
row's length); it reports wall time and the process's peak RSS, and the RSS after imports alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

WORDS = ("patient reports chest pain shortness of breath after exertion since two weeks history of hypertension "
         "diabetes type mellitus no fever cough wheezing at night headache nausea vomiting abdominal tenderness "
         "the dose was increased and symptoms improved follow up in clinic blood pressure heart rate normal "
         "mood low sleep poor appetite reduced anxiety depression therapy medication tablets daily").split()

CHILD = r"""
import json, resource, sys, time
from ftl.data.classification import TextClassificationDataModule
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
dm = TextClassificationDataModule(data_dir=sys.argv[1], tokenizer="minilm-l6", max_length=128,
                                  cache_dir=sys.argv[2], batch_size=32)
dm.prepare_data()
dm.setup("fit")
loader = dm.train_dataloader()
batches = len(loader)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "imports_rss_mb": base, "train_batches": batches}))
"""


def write_rows(folder: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {"train": rows * 8 // 10, "val": rows // 10, "test": rows - rows * 8 // 10 - rows // 10}
    for split, count in sizes.items():
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["text", "label"])
            for i in range(count):
                label = rng.randrange(2)
                words = rng.choices(WORDS, k=rng.randint(10, 120))
                writer.writerow([f"{' '.join(words)} case {i}", ("control", "case")[label]])


def measure(folder: Path, cache: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(cache)], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"preparation failed for {folder}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--root", type=Path, default=Path("/tmp/ftl_data_scale"))
    args = parser.parse_args()
    print("| rows | first run (s) | s per 10k rows | peak RSS (MB) | cached run (s) | peak RSS cached (MB) |")
    print("|---|---|---|---|---|---|")
    for rows in args.rows:
        folder, cache = args.root / f"rows_{rows}", args.root / f"cache_{rows}"
        shutil.rmtree(cache, ignore_errors=True)
        if not (folder / "test.csv").is_file():
            write_rows(folder, rows)
        first, cached = measure(folder, cache), measure(folder, cache)
        print(f"| {rows:,} | {first['seconds']:.1f} | {first['seconds'] / rows * 1e4:.2f} | "
              f"{first['peak_rss_mb']:.0f} | {cached['seconds']:.1f} | {cached['peak_rss_mb']:.0f} |  "
              f"(after imports: {first['imports_rss_mb']:.0f} MB)", flush=True)


if __name__ == "__main__":
    main()
