"""Throughput and quality: ftl vs HF Trainer (three variants) vs a plain PyTorch loop, same model/data/recipe.

Every variant runs in its own spawned process (fair start, honest peak RSS), on the same data, model,
batch size, learning rate, max length, epochs and seed, and reports train samples/s, eval samples/s (test
split), peak RSS and test accuracy. The summary prints medians over `--repeats` and ftl's ratio to each
other variant. Not run by pytest.

    python benchmarks/throughput.py --data ../shared/data/depression_reddit            # minilm-l6
    python benchmarks/throughput.py --tiny --synthetic --repeats 1                     # seconds, smoke test
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VARIANTS = ("ftl", "plain_loop", "hf_random", "hf_group_by_length", "hf_pad_max_length")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _ftl_args(cfg: dict, run_dir: str) -> list[str]:
    args = [
        "fit", "--config", str(HERE.parent / "configs" / "depression.yaml"),
        "--model.pretrained", cfg["model"],
        "--data.class_path", "ftl.data.classification.TextClassificationDataModule",
        "--data.data_dir", cfg["data"], "--data.batch_size", str(cfg["batch_size"]),
        "--data.eval_batch_size", str(cfg["eval_batch_size"]), "--data.max_length", str(cfg["max_length"]),
        "--model.learning_rate", str(cfg["lr"]), "--trainer.max_epochs", str(cfg["epochs"]),
        "--seed_everything", str(cfg["seed"]), "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false", "--trainer.num_sanity_val_steps", "0", "--trainer.limit_val_batches", "0",
        "--test_after_fit", "false", "--run_dir", run_dir,
    ]
    if cfg.get("max_train_samples"):
        args += ["--data.max_samples", str(cfg["max_train_samples"])]
    return args + shlex.split(cfg.get("ftl_args") or "")


def _ftl_cli(cfg: dict, run_dir: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ftl.commands.cli import FTLCLI

    args = _ftl_args(cfg, run_dir)
    return FTLCLI(args=args[1:], run=False)  # no subcommand: build model, data and trainer only


def run_ftl(cfg: dict) -> dict[str, Any]:
    """`ftl fit` as the CLI builds it; train and test phases timed by a callback."""
    import lightning as L

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.marks: dict[str, float] = {}

        def on_train_start(self, *_):
            self.marks["train_start"] = time.perf_counter()

        def on_train_epoch_end(self, trainer, *_):
            # Lightning runs ModelCheckpoint after every other callback: this mark leaves out the checkpoints
            # (best + last, ~270 MB each with AdamW state) written after the last epoch, as the HF variants
            # (save_strategy="no") and the plain loop save none. Earlier epochs' checkpoints stay in.
            if trainer.current_epoch == trainer.max_epochs - 1:
                self.marks["train_end"] = time.perf_counter()

        def on_test_start(self, *_):
            self.marks["test_start"] = time.perf_counter()

        def on_test_end(self, *_):
            # first of the callbacks (inserted at 0): the split is scored and its metrics computed (the module's
            # on_test_epoch_end ran), the run's output files (predictions csv, plots, summary) are not yet written
            self.marks["test_end"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        cli = _ftl_cli(cfg, str(Path(tmp) / "run"))
        timer = Timer()
        cli.trainer.callbacks.insert(0, timer)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    n_train = len(cli.datamodule.raw["train"]) * cfg["epochs"]
    n_test = len(cli.datamodule.raw["test"])
    return {
        "train_samples_per_s": n_train / (timer.marks["train_end"] - timer.marks["train_start"]),
        "eval_samples_per_s": n_test / (timer.marks["test_end"] - timer.marks["test_start"]),
        "test_accuracy": results["test/accuracy"],
    }


def run_plain_loop(cfg: dict) -> dict[str, Any]:
    """The floor: a bare PyTorch loop over ftl's own batches, same model, optimiser, clipping and schedule."""
    import torch
    from lightning import seed_everything

    cli = _ftl_cli(cfg, tempfile.mkdtemp())
    dm, module = cli.datamodule, cli.model
    dm.prepare_data()
    dm.setup("fit")
    seed_everything(cfg["seed"])
    model = module.model.train()
    if "--cpu_speedups false" not in (cfg.get("ftl_args") or ""):  # as ftl's CPUSpeedups callback does in fit
        from ftl.malloc import tune_malloc
        from ftl.models.dropout import enable_fast_cpu_dropout

        tune_malloc()
        enable_fast_cpu_dropout(model)
    steps = len(dm.train_dataloader()) * cfg["epochs"]
    from ftl.models.optim import OptimizerSettings, configure_adamw

    opt = configure_adamw(model, OptimizerSettings(learning_rate=cfg["lr"], scheduler="linear"), steps)
    optimizer, schedule = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    start = time.perf_counter()
    for _ in range(cfg["epochs"]):
        for batch in dm.train_dataloader():
            labels = batch.pop("labels")
            batch.pop("row_idx", None)
            loss = torch.nn.functional.cross_entropy(model(**batch).logits, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the recipe's gradient_clip_val, as HF's
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
    train_time = time.perf_counter() - start
    model.eval()
    correct = total = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in dm.test_dataloader():
            labels = batch.pop("labels")
            batch.pop("row_idx", None)
            correct += int((model(**batch).logits.argmax(-1) == labels).sum())
            total += len(labels)
    eval_time = time.perf_counter() - start
    return {
        "train_samples_per_s": len(dm.raw["train"]) * cfg["epochs"] / train_time,
        "eval_samples_per_s": total / eval_time,
        "test_accuracy": correct / total,
    }


def run_hf(cfg: dict, variant: str) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from hf_trainer import run_hf_trainer

    from ftl.hub import resolve_pretrained

    out = run_hf_trainer(
        resolve_pretrained(cfg["model"]), cfg["data"], variant=variant, batch_size=cfg["batch_size"],
        eval_batch_size=cfg["eval_batch_size"], learning_rate=cfg["lr"], epochs=cfg["epochs"],
        max_length=cfg["max_length"], seed=cfg["seed"], max_train_samples=cfg.get("max_train_samples"),
        max_eval_samples=cfg.get("max_train_samples"), output_dir=tempfile.mkdtemp(),
    )
    return {k: out[k] for k in ("train_samples_per_s", "eval_samples_per_s", "test_accuracy")}


def _run_variant(variant: str, cfg: dict) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if variant == "ftl":
        out = run_ftl(cfg)
    elif variant == "plain_loop":
        out = run_plain_loop(cfg)
    else:
        out = run_hf(cfg, variant.removeprefix("hf_"))
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def _tiny_model(folder: Path, data_dir: str) -> str:
    """A random 2-layer BERT with a vocab from the data: measures overheads, not model compute."""
    import csv
    import re

    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = set()
    with open(Path(data_dir) / "train.csv", newline="") as f:
        for row in csv.DictReader(f):
            words.update(re.findall(r"\w+|[^\w\s]", row["text"].lower()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words)[:20000]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, model_max_length=512).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=512)
    BertModel(config).save_pretrained(folder)
    return str(folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "depression_reddit"))
    parser.add_argument("--synthetic", action="store_true", help="use ftl's synthetic set (600/150/150)")
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--tiny", action="store_true", help="a tiny random BERT instead of --model")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-train-samples", type=int, default=None, help="cap every split (quick runs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--ftl-args", default="", help='extra ftl options for ftl and the plain loop, e.g. '
                        '--ftl-args="--data.group_batches 32" (with =)')
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="ftl-bench-"))
    data = args.data
    if args.synthetic:
        from ftl.data.synthetic import write_splits

        data = str(write_splits(work / "synthetic"))
    model = _tiny_model(work / "tiny", data) if args.tiny else args.model
    cfg = {"model": model, "data": data, "batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size,
           "lr": args.lr, "max_length": args.max_length, "epochs": args.epochs, "seed": args.seed,
           "max_train_samples": args.max_train_samples, "ftl_args": args.ftl_args}
    print(f"# config: {json.dumps(cfg)}", flush=True)

    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    ctx = multiprocessing.get_context("spawn")
    for repeat in range(args.repeats):
        for variant in args.variants:
            with ctx.Pool(1) as pool:
                out = pool.apply(_run_variant, (variant, cfg))
            out.update(variant=variant, repeat=repeat)
            runs[variant].append(out)
            print(json.dumps(out), flush=True)

    medians = {
        v: {k: statistics.median(r[k] for r in rs) for k in ("train_samples_per_s", "eval_samples_per_s",
                                                            "peak_rss_mb", "test_accuracy")}
        for v, rs in runs.items() if rs
    }
    print(f"\n| variant | train samples/s | eval samples/s | peak RSS MB | test accuracy |  (median of {args.repeats})")
    print("|---|---|---|---|---|")
    for v, m in medians.items():
        print(f"| {v} | {m['train_samples_per_s']:.2f} | {m['eval_samples_per_s']:.2f} | {m['peak_rss_mb']:.0f} "
              f"| {m['test_accuracy']:.4f} |")
    if "ftl" in medians:
        print("\n| ftl vs | train ratio | eval ratio | accuracy diff |")
        print("|---|---|---|---|")
        for v, m in medians.items():
            if v != "ftl":
                f = medians["ftl"]
                print(f"| {v} | {f['train_samples_per_s'] / m['train_samples_per_s']:.2f}x "
                      f"| {f['eval_samples_per_s'] / m['eval_samples_per_s']:.2f}x "
                      f"| {f['test_accuracy'] - m['test_accuracy']:+.4f} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"config": cfg, "runs": runs, "medians": medians}, indent=2))


if __name__ == "__main__":
    main()
