"""One-GPU speed check: ftl fit against HF `Trainer` (bf16) and TRL's `SFTTrainer` on models of real sizes.

Run it through `benchmarks/gpu_check.sh` (it sets the offline environment and the import path). Nothing is
downloaded: the models are built from configs with random weights (speed does not depend on the weights) and
saved with tokenizers built in code, and the data is synthetic text of realistic lengths:

- encoder: a BERT-base-size classifier (12 layers, 768 wide, 12 heads, vocab 30522), batch 32, max length 256:
  `encoder_full` (every row fills 256 tokens: the setting of the MFU goal; pure loop cost, nothing to gain from
  batching by length) and `encoder_mixed` (lengths spread like notes, median ~150 tokens: what ftl's length
  grouping is for; HF uses its default random batches);
- decoder: a SmolLM2-135M-size Llama (30 layers, 576 wide, 9 heads, 3 kv heads, vocab 49152, tied embeddings),
  question/answer rows of about 256 tokens, loss on the answer only, batch 16.

Each run is its own process, trains a fixed number of steps, and reports samples/s, tokens/s, model TFLOP/s
and MFU (the analytic count of `ftl.reports.flops`, the same for every framework: ftl's own numbers come from
the run's metrics.json, HF's and TRL's are computed from their batches), plus the same figures over the steps
after a warm-up alone (`gpu_timer.StepLog`) and the peak GPU memory. It prints ftl's ratios against the goals
and writes everything as JSON. `--cpu` runs the same pipeline with tiny models on the CPU in about a minute.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(ROOT / "src"), str(HERE)):  # this checkout's ftl (no install needed) and gpu_timer
    if _path not in sys.path:
        sys.path.insert(0, _path)

# Wheels a GPU image with torch, lightning, transformers, torchmetrics, peft, pandas and pyarrow lacks (checked
# against this workplace's H200 image: Python 3.12, transformers 5.17; it has matplotlib, scipy, rich, xxhash).
# All pure Python; sizes as downloaded (bytes). trl is optional (the decoder's third baseline).
WHEELS: tuple[tuple[str, str, int], ...] = (
    ("datasets", "5.2.0", 608_276),
    ("dill", "0.4.1", 120_019),
    ("multiprocess", "0.70.19", 150_281),  # py312 wheel: pick the one for the image's Python
    ("jsonargparse", "4.53.0", 177_603),
    ("docstring-parser", "0.18.0", 22_484),  # jsonargparse[signatures]: ftl's docstring help
    ("typeshed-client", "2.15.0", 808_045),  # jsonargparse[signatures]
    ("trl", "1.16.0", 948_205),
)
# datasets 5.2 needs pyarrow >= 24: bring this one too when the image's is older (55,043,763 bytes, cp312).
PYARROW_WHEEL = ("pyarrow", "26.0.1", 55_043_763)
# module -> distribution, for what ftl fit needs beyond torch/lightning/transformers/torchmetrics/pandas/pyarrow
NEEDED_MODULES = {"datasets": "datasets", "dill": "dill", "multiprocess": "multiprocess",
                  "jsonargparse": "jsonargparse", "docstring_parser": "docstring-parser",
                  "typeshed_client": "typeshed-client", "yaml": "pyyaml", "matplotlib": "matplotlib",
                  "scipy": "scipy", "xxhash": "xxhash", "tokenizers": "tokenizers"}
# No network, no W&B, quiet tokenizers; the CPU dry run keeps to one thread (a shared 2-core machine).
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
GOALS = {"encoder_vs_hf": 1.1, "decoder_vs_trl": 1.0, "encoder_mfu": 0.35}


def wheels_text(python_version: str = "3.12") -> str:
    """What to download where pip works and how to install it on the GPU machine (for `--wheels` and the header)."""
    names = " ".join(f"{n}=={v}" for n, v, _ in WHEELS)
    total = sum(size for *_, size in WHEELS)
    with_arrow = total + PYARROW_WHEEL[2]
    lines = [f"wheels to bring (for Python {python_version}, the H200 image's; all py3-none-any except multiprocess, "
             f"py{python_version.replace('.', '')}):"]
    lines += [f"  {n}=={v}  {size / 2**20:.2f} MiB" for n, v, size in WHEELS]
    lines += [f"  total {total / 2**20:.2f} MiB ({total:,} bytes); with {PYARROW_WHEEL[0]}=={PYARROW_WHEEL[1]} "
              f"(only if the image's pyarrow < 24) {with_arrow / 2**20:.2f} MiB",
              "download (where pip works):",
              f"  python3 -m pip download --no-deps --only-binary=:all: --python-version {python_version} "
              f"--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 "
              f"-d wheels/ {names}",
              "install on the GPU machine (bash benchmarks/gpu_check.sh --find-links wheels/ does it):",
              "  python3 -m pip install --no-index --find-links wheels/ datasets jsonargparse docstring-parser "
              "typeshed-client trl",
              "  (if pip refuses over a version pin of the image, the script retries with --no-deps)",
              "W&B is not needed: the runs have no WandbLogger and WANDB_MODE=disabled."]
    return "\n".join(lines)


def importable(module: str) -> bool:
    """Whether `module` can be found (without importing it: trl's import alone takes seconds)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_modules() -> list[str]:
    """Distributions whose module ftl fit needs and this Python cannot import."""
    return sorted({dist for module, dist in NEEDED_MODULES.items() if not importable(module)})


def install_wheels(folder: str) -> None:
    """Install the missing wheels from `folder` with pip, offline. A refused dependency pin of the image falls back
    to --no-deps, and then to one package at a time, so one missing wheel does not keep the others out."""
    known = {n for n, *_ in WHEELS}
    groups = ([d for d in missing_modules() if d in known], [] if importable("trl") else ["trl"])
    base = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", folder]
    failed = []
    for group in groups:
        if not group:
            continue
        print(f"# pip install --no-index --find-links {folder} {' '.join(group)}", flush=True)
        if subprocess.run(base + group).returncode == 0:
            continue
        print("# retrying with --no-deps", flush=True)
        if subprocess.run(base + ["--no-deps"] + group).returncode == 0:
            continue
        failed += [name for name in group if subprocess.run(base + ["--no-deps", name]).returncode != 0]
    if failed:
        print(f"gpu_check: not installed from {folder}: {', '.join(failed)}", flush=True)
    importlib.invalidate_caches()


# ---------------------------------------------------------------------------------------------- sizes
@dataclass
class Sizes:
    """Model and run sizes of one mode (GPU: real sizes; CPU: tiny, a dry run of the pipeline)."""

    encoder: dict[str, int]
    decoder: dict[str, int]
    encoder_batch: int
    decoder_batch: int
    max_length: int
    encoder_steps: int
    decoder_steps: int
    warmup: int


def sizes_for(cpu: bool, encoder_steps: int | None, decoder_steps: int | None) -> Sizes:
    if cpu:
        sizes = Sizes(encoder=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                   vocab_size=2000),
                      decoder=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=2000),
                      encoder_batch=8, decoder_batch=4, max_length=64, encoder_steps=8, decoder_steps=8, warmup=2)
    else:
        sizes = Sizes(encoder=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                   intermediate_size=3072, vocab_size=30522),  # bert-base-uncased
                      decoder=dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, vocab_size=49152),  # SmolLM2-135M
                      encoder_batch=32, decoder_batch=16, max_length=256, encoder_steps=600, decoder_steps=400,
                      warmup=20)
    sizes.encoder_steps = encoder_steps or sizes.encoder_steps
    sizes.decoder_steps = decoder_steps or sizes.decoder_steps
    return sizes


# ---------------------------------------------------------------------------------------------- models, data
def vocabulary(size: int, seed: int) -> list[str]:
    """`size` distinct made-up lowercase words (3-9 letters): one token each for a word-level tokenizer."""
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words: dict[str, None] = {}
    while len(words) < size:
        for n in rng.integers(3, 10, size=size):
            words.setdefault("".join(rng.choice(letters, size=n)), None)
            if len(words) == size:
                break
    return list(words)


def build_encoder(folder: Path, config: dict[str, int]) -> list[str]:
    """A random BERT (no head, as minilm-l6 ships) with a WordPiece tokenizer over made-up whole words."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = vocabulary(config["vocab_size"] - len(special), seed=1)
    # transformers 5 ignores `vocab_file=`: the vocab is passed itself (as tests/conftest.py does)
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(special + words)}, model_max_length=512)
    torch.manual_seed(0)
    BertModel(BertConfig(max_position_embeddings=512, **config)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return words


def build_decoder(folder: Path, config: dict[str, int]) -> list[str]:
    """A random Llama of SmolLM2-135M's shape with a word-level tokenizer (eos, no pad token, like SmolLM2's)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    fixed = [eos, "<unk>", "Question", "Answer", ":"]
    words = vocabulary(config["vocab_size"] - len(fixed), seed=2)
    vocab = {w: i for i, w in enumerate(fixed + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, bos_token=eos, unk_token="<unk>",
                                        model_max_length=2048)
    llama = LlamaConfig(max_position_embeddings=2048, rope_theta=100000.0, rms_norm_eps=1e-5,
                        tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, **config)
    torch.manual_seed(0)
    LlamaForCausalLM(llama).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return words


def word_counts(kind: str, n: int, max_length: int, seed: int) -> list[int]:
    """Words per row: `full` rows all run past max_length (truncated to it); `mixed` rows spread like clinical
    notes (log-normal, median 0.6 x max_length, a fifth of them cut at max_length)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if kind == "full":
        return [int(c) for c in rng.integers(max_length + 8, max_length + 64, size=n)]
    counts = rng.lognormal(np.log(0.6 * max_length), 0.6, size=n)
    return [int(c) for c in np.clip(counts, 8, 2 * max_length)]


def write_encoder_data(folder: Path, words: list[str], kind: str, n_train: int, n_eval: int, max_length: int) -> Path:
    """train/val/test.csv (text, label) with rows of `word_counts(kind)` words drawn uniformly from `words`."""
    import numpy as np
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    vocab = np.array(words)
    for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        texts = [" ".join(rng.choice(vocab, size=c)) for c in word_counts(kind, n, max_length, seed=len(split))]
        pd.DataFrame({"text": texts, "label": rng.integers(0, 2, size=n)}).to_csv(folder / f"{split}.csv",
                                                                                 index=False)
    return folder


def qa_rows(words: list[str], n: int, max_length: int, seed: int) -> list[dict[str, str]]:
    """Question/answer pairs of about max_length tokens in all (questions 4-12%, answers 60-100% of it)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = np.array(words)
    rows = []
    for _ in range(n):
        q = rng.integers(max(2, max_length // 25), max(3, max_length // 8))
        a = rng.integers(int(0.6 * max_length), max_length)
        rows.append({"question": " ".join(rng.choice(vocab, size=q)), "answer": " ".join(rng.choice(vocab, size=a))})
    return rows


def write_decoder_data(folder: Path, words: list[str], n_train: int, n_eval: int, max_length: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (split, n) in enumerate((("train", n_train), ("val", n_eval), ("test", n_eval))):
        rows = qa_rows(words, n, max_length, seed=10 + seed)
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


# ---------------------------------------------------------------------------------------------- runs
@dataclass
class RunSpec:
    """One training run: which framework and task, the model and data folders, and the recipe."""

    framework: str  # ftl, ftl_compile (ftl with --model.compile true), hf, trl
    task: str  # encoder, decoder
    model_dir: str
    data_dir: str
    batch_size: int
    max_length: int
    steps: int
    warmup: int
    cpu: bool
    peak_tflops: float | None
    work_dir: str
    learning_rate: float = 5e-5
    seed: int = 42


def ftl_command(spec: RunSpec, run_dir: str) -> list[str]:
    """`python -m ftl fit` with the recipe of `spec` (no YAML: model and data named by class)."""
    model, data = (("SequenceClassifier", "TextClassificationDataModule") if spec.task == "encoder"
                   else ("CausalLM", "QADataModule"))
    device = (["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true"] if spec.cpu
              else ["--trainer", str(ROOT / "configs" / "trainer" / "gpu-bf16.yaml")])
    args = [sys.executable, "-m", "ftl", "fit", "--model", model, "--data", data,
            "--model.pretrained", spec.model_dir, "--data.data_dir", spec.data_dir,
            "--data.batch_size", str(spec.batch_size), "--data.max_length", str(spec.max_length),
            "--model.learning_rate", str(spec.learning_rate), "--seed_everything", str(spec.seed), *device,
            "--trainer.max_steps", str(spec.steps), "--trainer.gradient_clip_val", "1.0",
            "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
            "--trainer.enable_progress_bar", "false", "--progress_every", "600", "--test_after_fit", "false",
            "--checkpoint.save_top_k", "0", "--trainer.callbacks+=gpu_timer.StepTimer", "--run_dir", run_dir]
    if spec.peak_tflops:
        args += ["--throughput.peak_tflops", str(spec.peak_tflops)]
    if spec.framework == "ftl_compile":
        args += ["--model.compile", "true"]
    return args


def run_ftl(spec: RunSpec, log: Path) -> dict[str, Any]:
    """`ftl fit` in its own process; its whole-loop numbers from metrics.json, the steady ones from the timer."""
    run_dir = Path(spec.work_dir) / "run"
    timer = Path(spec.work_dir) / "timer.json"
    path = os.pathsep.join(p for p in (str(HERE), str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "GPU_CHECK_TIMER_OUT": str(timer), "GPU_CHECK_WARMUP": str(spec.warmup),
           "GPU_CHECK_STEPS": str(spec.steps), "FTL_CACHE": str(Path(spec.work_dir) / "cache")}
    command = ftl_command(spec, str(run_dir))
    with open(log, "w") as out:
        out.write(shlex.join(command) + "\n")
        out.flush()
        code = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise RuntimeError(f"ftl fit exited {code}; log: {log}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics = metrics.get("metrics", metrics)
    result = {"samples_per_s": metrics.get("train/samples_per_sec"),
              "tokens_per_s": metrics.get("train/tokens_per_sec"), "tflops": metrics.get("train/tflops"),
              "mfu": metrics.get("train/mfu"),
              "runtime_s": metrics.get("train/runtime")}
    return {**result, **json.loads(timer.read_text())}


def _counting(collator: Any, log: Any) -> Any:
    """The collator, with every batch it makes counted by `log` (rows, tokens, padded length)."""
    def collate(features: list[dict[str, Any]]) -> Any:
        batch = collator(features)
        log.batch(batch)
        return batch
    return collate


def _hf_rows(spec: RunSpec, tokenizer: Any) -> list[dict[str, Any]]:
    """Training rows tokenized as ftl tokenizes them (classification: text truncated to max_length; QA: ftl's own
    `encode_qa`, so the prompt/answer tokens and the answer-only labels are the same)."""
    import pandas as pd

    if spec.task == "encoder":
        frame = pd.read_csv(Path(spec.data_dir) / "train.csv")
        encoded = tokenizer(frame["text"].tolist(), truncation=True, max_length=spec.max_length)
        return [{**{k: v[i] for k, v in encoded.items()}, "labels": int(y)} for i, y in enumerate(frame["label"])]
    from ftl.data.qa import DEFAULT_TEMPLATE, encode_qa, fill_template

    rows = [json.loads(line) for line in (Path(spec.data_dir) / "train.jsonl").read_text().splitlines()]
    encoded = encode_qa(tokenizer, [fill_template(DEFAULT_TEMPLATE, r["question"]) for r in rows],
                        [r["answer"] for r in rows], spec.max_length)
    return [{k: encoded[k][i] for k in ("input_ids", "attention_mask", "labels")} for i in range(len(rows))]


def run_hf_or_trl(spec: RunSpec) -> dict[str, Any]:
    """HF `Trainer` (or TRL's `SFTTrainer`) with bf16 on the same model, rows, batch, steps and optimizer as ftl."""
    import torch
    import transformers
    from gpu_timer import StepLog
    from transformers import AutoTokenizer, TrainerCallback, TrainingArguments

    transformers.set_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(spec.model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # as ftl's QA data does
    if spec.task == "encoder":
        model = transformers.AutoModelForSequenceClassification.from_pretrained(spec.model_dir, num_labels=2)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(spec.model_dir)  # float32, as ftl loads it
    log = StepLog(spec.warmup, spec.steps)
    log.set_model(model)

    class Marks(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            log.step_end(state.global_step)

    common = dict(output_dir=str(Path(spec.work_dir) / "out"), per_device_train_batch_size=spec.batch_size,
                  max_steps=spec.steps, learning_rate=spec.learning_rate, lr_scheduler_type="linear", warmup_steps=0,
                  weight_decay=0.0, optim="adamw_torch_fused", max_grad_norm=1.0, bf16=not spec.cpu,
                  use_cpu=spec.cpu, seed=spec.seed, data_seed=spec.seed, logging_strategy="no", save_strategy="no",
                  eval_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0)
    if spec.framework == "trl":
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        from ftl.data.qa import DEFAULT_TEMPLATE, fill_template

        rows = [json.loads(line) for line in (Path(spec.data_dir) / "train.jsonl").read_text().splitlines()]
        dataset = Dataset.from_dict({"prompt": [fill_template(DEFAULT_TEMPLATE, r["question"]) for r in rows],
                                     "completion": [r["answer"] for r in rows]})
        # gradient checkpointing off (SFTConfig turns it on by default): ftl and HF do not recompute activations
        config = SFTConfig(max_length=spec.max_length, gradient_checkpointing=False, packing=False, **common)
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=[Marks()])
    else:
        collator = (transformers.DataCollatorWithPadding(tokenizer) if spec.task == "encoder"
                    else transformers.DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
        trainer = transformers.Trainer(model=model, args=TrainingArguments(**common),
                                       train_dataset=_hf_rows(spec, tokenizer), data_collator=collator,
                                       processing_class=tokenizer, callbacks=[Marks()])
    trainer.data_collator = _counting(trainer.data_collator, log)
    metrics = trainer.train().metrics
    steady = log.result()
    runtime = float(metrics["train_runtime"])
    out = {"samples_per_s": float(metrics["train_samples_per_second"]), "runtime_s": runtime,
           "tokens_per_s": steady["total_tokens"] / runtime}
    if "total_flops" in steady:
        out["tflops"] = steady["total_flops"] / runtime / 1e12
        out["mfu"] = out["tflops"] / spec.peak_tflops if spec.peak_tflops else None
    out["versions"] = {"transformers": transformers.__version__, "torch": torch.__version__}
    if spec.framework == "trl":
        import trl

        out["versions"]["trl"] = trl.__version__
    return {**out, **steady}


def run_in_process(spec: RunSpec, log: Path) -> dict[str, Any]:
    """HF/TRL in a fresh process (fair start, its own peak memory): this file with `--worker SPEC.json`."""
    spec_file = Path(spec.work_dir) / "spec.json"
    spec_file.write_text(json.dumps(asdict(spec)))
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_file)]
    with open(log, "w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise RuntimeError(f"{spec.framework} exited {code}; log: {log}")
    return json.loads((Path(spec.work_dir) / "result.json").read_text())


def worker(spec_file: str) -> None:
    spec = RunSpec(**json.loads(Path(spec_file).read_text()))
    result = run_hf_or_trl(spec)
    (Path(spec.work_dir) / "result.json").write_text(json.dumps(result, indent=2))


# ---------------------------------------------------------------------------------------------- summary
def ratio(runs: dict[str, dict[str, Any]], a: str, b: str, key: str) -> float | None:
    """runs[a][key] / runs[b][key], None when either is missing or b's is 0."""
    x, y = runs.get(a, {}).get(key), runs.get(b, {}).get(key)
    return float(x) / float(y) if x is not None and y else None


def summarize(results: dict[str, dict[str, dict[str, Any]]], judged: bool = True) -> dict[str, Any]:
    """ftl's ratios to each baseline (whole loop and steady state) and the goals, each met, missed or not judged.

    `results[scenario][framework]` holds one run's numbers. A goal is judged on the whole-loop figure (each
    framework's own definition: ftl's metrics.json, HF's `train_samples_per_second`); the steady-state figure
    stands beside it. `judged` False (the CPU dry run) judges none: tiny CPU models say nothing about GPU speed.
    """
    ratios: dict[str, dict[str, float | None]] = {}
    for scenario, runs in results.items():
        for other in ("hf", "trl"):
            if "ftl" in runs and other in runs:
                ratios[f"{scenario}_ftl_vs_{other}"] = {
                    "samples_per_s": ratio(runs, "ftl", other, "samples_per_s"),
                    "steady_samples_per_s": ratio(runs, "ftl", other, "steady_samples_per_s")}
        if "ftl" in runs and "ftl_compile" in runs:  # the whole loop of the compiled run holds its compilation
            ratios[f"{scenario}_compiled_vs_eager"] = {
                "samples_per_s": ratio(runs, "ftl_compile", "ftl", "samples_per_s"),
                "steady_samples_per_s": ratio(runs, "ftl_compile", "ftl", "steady_samples_per_s")}

    def goal(name: str, text: str, value: float | None, steady: float | None, target: float,
             missing: str = "not judged: a run failed") -> dict[str, Any]:
        if not judged:
            verdict = "not judged (CPU dry run)"
        else:
            verdict = missing if value is None else ("met" if value >= target else "missed")
        return {"name": name, "goal": text, "value": value, "steady": steady, "verdict": verdict}

    goals = []
    for scenario in ("encoder_full", "encoder_mixed"):
        found = ratios.get(f"{scenario}_ftl_vs_hf")
        if found is not None:
            goals.append(goal(f"{scenario}_vs_hf",
                              f"{scenario}: ftl / HF Trainer bf16 samples/s >= {GOALS['encoder_vs_hf']}",
                              found["samples_per_s"], found["steady_samples_per_s"], GOALS["encoder_vs_hf"]))
    if "decoder" in results:
        found = ratios.get("decoder_ftl_vs_trl", {})
        why = ("not judged: no ftl run" if "trl" in results["decoder"]
               else "not judged: no TRL run (trl not importable or not asked for)")
        goals.append(goal("decoder_vs_trl", f"decoder: ftl / TRL SFTTrainer samples/s >= {GOALS['decoder_vs_trl']}",
                          found.get("samples_per_s"), found.get("steady_samples_per_s"), GOALS["decoder_vs_trl"],
                          missing=why if not found else "not judged: a run failed"))
    ftl_full = results.get("encoder_full", {}).get("ftl")
    if ftl_full is not None:
        goals.append(goal("encoder_full_mfu",
                          f"encoder_full: ftl MFU >= {GOALS['encoder_mfu']:.0%} (BERT-base, batch 32, length 256)",
                          ftl_full.get("mfu"), ftl_full.get("steady_mfu"), GOALS["encoder_mfu"],
                          missing="not judged: no MFU (device peak unknown: --peak-tflops)"))
    return {"ratios": ratios, "goals": goals}


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_report(results: dict[str, dict[str, dict[str, Any]]], summary: dict[str, Any]) -> None:
    print("\n| scenario | framework | samples/s | tokens/s | TFLOP/s | MFU | steady samples/s | steady TFLOP/s "
          "| steady MFU | peak GPU mem GiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for scenario, runs in results.items():
        for framework, r in runs.items():
            if "error" in r:
                print(f"| {scenario} | {framework} | failed: {r['error']} |")
                continue
            print(f"| {scenario} | {framework} | {_fmt(r.get('samples_per_s'), '.2f')} "
                  f"| {_fmt(r.get('tokens_per_s'), ',.0f')} | {_fmt(r.get('tflops'), '.2f')} "
                  f"| {_fmt(r.get('mfu'), '.1%')} | {_fmt(r.get('steady_samples_per_s'), '.2f')} "
                  f"| {_fmt(r.get('steady_tflops'), '.2f')} | {_fmt(r.get('steady_mfu'), '.1%')} "
                  f"| {_fmt(r.get('peak_gpu_mem_gib'), '.2f')} |")
    print("\n| ratio | samples/s (whole loop) | steady samples/s |")
    print("|---|---:|---:|")
    for name, values in summary["ratios"].items():
        print(f"| {name} | {_fmt(values['samples_per_s'], '.3f')}x | {_fmt(values['steady_samples_per_s'], '.3f')}x |")
    print("\n| goal | value (whole loop) | steady | verdict |")
    print("|---|---:|---:|---|")
    for goal in summary["goals"]:
        print(f"| {goal['goal']} | {_fmt(goal['value'], '.3f')} | {_fmt(goal['steady'], '.3f')} | {goal['verdict']} |")


# ---------------------------------------------------------------------------------------------- main
def peak_tflops_for(given: float | None, cpu: bool) -> tuple[float | None, str]:
    """The device's peak bf16 TFLOP/s for MFU, and where it came from."""
    if given:
        return given, "--peak-tflops"
    if cpu:
        return None, "none on CPU (no MFU)"
    import torch

    from ftl.reports.flops import peak_flops

    name = torch.cuda.get_device_name(0)
    found = peak_flops(torch.device("cuda", 0), "bf16-mixed")
    if found:
        return found / 1e12, f"Lightning's table for {name!r}"
    if "H100" in name or "H200" in name:
        # Lightning's table misses a plain 'NVIDIA H200' (and lists H200 with sparsity): dense bf16 is H100 SXM's
        return 989.4, f"dense bf16 of an H100/H200 SXM for {name!r}"
    return None, f"unknown for {name!r}: pass --peak-tflops"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="tiny models on the CPU, fp32: a dry run of the pipeline")
    parser.add_argument("--out", default=None, help="JSON results (default benchmarks/results/gpu_check[_cpu].json)")
    parser.add_argument("--work", default=None, help="folder for models, data and runs (default: a temp folder)")
    parser.add_argument("--scenarios", nargs="+", default=["encoder_full", "encoder_mixed", "decoder"],
                        choices=["encoder_full", "encoder_mixed", "decoder"])
    parser.add_argument("--frameworks", nargs="+", default=["ftl", "hf", "trl"],
                        choices=["ftl", "ftl_compile", "hf", "trl"],
                        help="ftl_compile (not run by default: compilation takes a minute or more per shape) adds "
                        "`ftl fit --model.compile true`")
    parser.add_argument("--encoder-steps", type=int, default=None)
    parser.add_argument("--decoder-steps", type=int, default=None)
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (bf16, dense)")
    parser.add_argument("--wheels", action="store_true", help="print the wheels to bring and how, then exit")
    parser.add_argument("--find-links", default=None, help="install missing wheels from this folder first")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    if args.wheels:
        print(wheels_text())
        return
    if args.find_links:
        install_wheels(args.find_links)
    missing = missing_modules()
    if missing:
        others = [d for d in missing if d not in {n for n, *_ in WHEELS}]
        note = (f"\n{', '.join(others)}: not in the list (the H200 image has them): bring their wheels too"
                if others else "")
        print(f"gpu_check: missing {', '.join(missing)}\n{wheels_text()}{note}", file=sys.stderr)
        sys.exit(2)
    started = time.perf_counter()
    for key, value in {**OFFLINE_ENV, **({"OMP_NUM_THREADS": "1"} if args.cpu else {})}.items():
        os.environ.setdefault(key, value)
    import torch

    if not args.cpu and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU; --cpu runs the dry run")
    sizes = sizes_for(args.cpu, args.encoder_steps, args.decoder_steps)
    peak, peak_source = peak_tflops_for(args.peak_tflops, args.cpu)
    has_trl = importable("trl")
    frameworks = [f for f in args.frameworks if f != "trl" or has_trl]
    if "trl" in args.frameworks and not has_trl:
        print("gpu_check: trl is not importable: the decoder's TRL SFTTrainer run is skipped "
              "(bring its wheel: --wheels)", flush=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check-"))
    meta = {"mode": "cpu" if args.cpu else "gpu", "device": "cpu" if args.cpu else torch.cuda.get_device_name(0),
            "python": platform.python_version(), "torch": torch.__version__, "peak_tflops": peak,
            "peak_source": peak_source, "sizes": asdict(sizes), "trl": has_trl, "work": str(work)}
    print(f"# gpu_check {json.dumps(meta)}", flush=True)

    def phase(message: str) -> None:
        print(f"# [{time.perf_counter() - started:6.1f} s] {message}", flush=True)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the shard-writing bars of the model builds
    results: dict[str, dict[str, dict[str, Any]]] = {}
    encoder_dir, decoder_dir = work / "models" / "encoder", work / "models" / "decoder"
    if any(s.startswith("encoder") for s in args.scenarios):
        phase("building the encoder")
        encoder_words = build_encoder(encoder_dir, sizes.encoder)
    if "decoder" in args.scenarios:
        phase("building the decoder")
        decoder_words = build_decoder(decoder_dir, sizes.decoder)
    for scenario in args.scenarios:
        task = "decoder" if scenario == "decoder" else "encoder"
        batch = sizes.decoder_batch if task == "decoder" else sizes.encoder_batch
        steps = sizes.decoder_steps if task == "decoder" else sizes.encoder_steps
        n_train, n_eval = steps * batch, 2 * batch  # one epoch of exactly `steps` batches: no epoch-end costs
        if task == "decoder":
            data = write_decoder_data(work / "data" / scenario, decoder_words, n_train, n_eval, sizes.max_length)
            model_dir = decoder_dir
        else:
            kind = scenario.removeprefix("encoder_")
            data = write_encoder_data(work / "data" / scenario, encoder_words, kind, n_train, n_eval, sizes.max_length)
            model_dir = encoder_dir
        results[scenario] = {}
        for framework in frameworks:
            if framework == "trl" and task != "decoder":
                continue
            spec = RunSpec(framework=framework, task=task, model_dir=str(model_dir), data_dir=str(data),
                           batch_size=batch, max_length=sizes.max_length, steps=steps, warmup=sizes.warmup,
                           cpu=args.cpu, peak_tflops=peak, work_dir=str(work / "runs" / f"{scenario}-{framework}"))
            Path(spec.work_dir).mkdir(parents=True, exist_ok=True)
            log = Path(spec.work_dir) / "log.txt"
            phase(f"{scenario}: {framework} ({steps} steps of {batch}); log {log}")
            try:
                results[scenario][framework] = (run_ftl(spec, log) if framework.startswith("ftl")
                                                else run_in_process(spec, log))
            except Exception as err:  # noqa: BLE001 - one failed run must not lose the others' numbers
                tail = log.read_text().strip().splitlines()[-15:] if log.exists() else []
                print("\n".join(tail), flush=True)
                results[scenario][framework] = {"error": str(err)}
            r = results[scenario][framework]
            if peak and r.get("steady_tflops") is not None:
                r["steady_mfu"] = r["steady_tflops"] / peak
            if "error" not in r:
                phase(f"{scenario}: {framework}: {_fmt(r.get('samples_per_s'), '.2f')} samples/s, "
                      f"steady {_fmt(r.get('steady_samples_per_s'), '.2f')}")
    summary = summarize(results, judged=not args.cpu)
    print_report(results, summary)
    phase("done")
    out = Path(args.out or HERE / "results" / ("gpu_check_cpu.json" if args.cpu else "gpu_check.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results, **summary,
                               "seconds": time.perf_counter() - started}, indent=2))
    print(f"# results in {out}")


if __name__ == "__main__":
    main()
