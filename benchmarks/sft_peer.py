"""ftl vs TRL's SFTTrainer: the same causal LM, rows and hyperparameters, with and without packing (4 runs).

What is measured, per run (each run in its own subprocess, so peak memory is per run):
- train tokens/s: non-padding tokens of the training data as each framework prepared it (the sum of the
  lengths of its tokenized train rows, i.e. of the attention masks; packed rows count their real tokens),
  times epochs, divided by the wall time from the trainer's train-start to train-end hook (Lightning
  `on_train_start`/`on_train_end`, HF `on_train_begin`/`on_train_end`): no evaluation inside it (validation
  is off in both, no test after fit, TRL saves no checkpoints);
- peak memory: peak RSS of the subprocess after training (`resource.getrusage`) on CPU, or
  `torch.cuda.max_memory_allocated` on GPU;
- test loss: token-weighted mean cross-entropy over the answer tokens of the same test rows, computed by one
  function here (`answer_loss`) on each trained model, with one encoding of the test rows, so the four numbers
  are comparable.

Same settings in both: seed, AdamW (betas, eps, weight decay), learning rate, linear decay with no warmup,
gradient clipping at norm 1.0 (TRL's default), batch size, epochs, max length, no gradient accumulation, fp32,
completion-only loss, no gradient checkpointing (SFTConfig turns it on by default, ftl recomputes nothing; on
smollm2-135m here it cost TRL 7% of its tokens/s and saved it 1 GB of peak RSS). Prompt/completion data are built
the same way: with a chat template, TRL's conversational prompt/completion format (user turn / assistant
turn), which is what ftl's chat format renders; without one, "Question: {q}\\nAnswer:" + " {answer}<eos>".
Each framework keeps its own defaults otherwise (ftl: length-grouped batches and padding to a multiple of 8;
packing rows of `max_length` with per-sequence position ids; TRL: random batches, BFD packing with
padding-free batches flattened into one row). ftl runs through its CLI (`ftl.commands.cli.FTLCLI`, in process,
with `configs/medquad.yaml`), TRL through `SFTTrainer` (`pip install trl`; not an ftl dependency).

`--order file` gives both the training rows in file order (the same batches, no shuffling): the two trainers then
end at the same test loss (smollm2-135m, 128 rows, 32 steps: 2.0486979 vs 2.0486988), so what differs between
seeded runs is the batches alone.

    python benchmarks/sft_peer.py --tiny --out benchmarks/results/sft_peer_tiny.json
    python benchmarks/sft_peer.py --model smollm2-135m --data_dir ../shared/data/medquad --seeds 42,43,44,45
    python benchmarks/sft_peer.py --model smollm2-135m --train_rows 128 --runs unpacked --order file
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PROMPT = "Question: {q}\nAnswer:"  # template format (tokenizers without a chat template); ftl's prompt + " "


# ---------------------------------------------------------------------------------------------- data and model
def read_rows(data_dir: Path, split: str, n: int) -> list[dict[str, str]]:
    """The first `n` rows of `split` with a non-empty question and answer, stripped (as ftl keeps them)."""
    rows = []
    with open(data_dir / f"{split}.jsonl") as f:
        for line in f:
            r = json.loads(line)
            q, a = str(r.get("question") or "").strip(), str(r.get("answer") or "").strip()
            if q and a:
                rows.append({"question": q, "answer": a})
            if len(rows) == n:
                break
    return rows


def synthetic_rows(n: int, offset: int = 0) -> list[dict[str, str]]:
    conditions = ["asthma", "diabetes", "gout", "anemia", "migraine", "psoriasis", "glaucoma", "eczema"]
    rows = []
    for i in range(offset, offset + n):
        c = conditions[i % len(conditions)]
        rows.append({"question": f"What are the symptoms of {c} (case {i}) ?",
                     "answer": f"The symptoms of {c} vary; case {i} shows {c} signs such as pain and fatigue. "
                               f"See a doctor if {c} symptoms get worse."})
    return rows


def build_tiny_model(folder: Path, texts: list[str], hidden_size: int = 32, max_positions: int = 512) -> None:
    """A 2-layer random Llama (`hidden_size` wide) with a ChatML tokenizer trained on `texts` (tests/conftest.py's
    `tiny_chat_llama`, with a larger vocabulary): end of turn `<|im_end|>` is not its EOS. Also used by
    benchmarks/generation.py."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe.train_from_iterator(texts, vocab_size=1000, min_frequency=2, special_tokens=specials, show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                        bos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                        model_max_length=max_positions, additional_special_tokens=specials[1:])
    tokenizer.chat_template = CHATML
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=max_positions,
                         tie_word_embeddings=True, bos_token_id=tokenizer.eos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def load_tokenizer(model: str):
    """The tokenizer as ftl's QA data module prepares it (ftl's hub loader; EOS pads when there is no pad)."""
    from ftl.hub import load_tokenizer as ftl_load_tokenizer

    tok = ftl_load_tokenizer(model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def prompt_completion(tok, row: dict[str, str]) -> dict:
    """One row in TRL's prompt/completion format: conversational with a chat template, else plain strings."""
    if getattr(tok, "chat_template", None):
        return {"prompt": [{"role": "user", "content": row["question"]}],
                "completion": [{"role": "assistant", "content": row["answer"]}]}
    return {"prompt": PROMPT.format(q=row["question"]), "completion": " " + row["answer"] + tok.eos_token}


# ---------------------------------------------------------------------------------------------- shared evaluation
def encode_test(tok, rows: list[dict[str, str]], max_length: int) -> list[tuple[list[int], int]]:
    """(token ids, prompt length) per test row: the full rendered prompt+completion, cut to `max_length`."""
    out = []
    for row in rows:
        pc = prompt_completion(tok, row)
        if isinstance(pc["prompt"], list):
            prompt = tok.apply_chat_template(pc["prompt"], tokenize=False, add_generation_prompt=True)
            full = tok.apply_chat_template(pc["prompt"] + pc["completion"], tokenize=False)
            p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            ids = tok(full, add_special_tokens=False)["input_ids"]
        else:
            p_ids = tok(pc["prompt"])["input_ids"]
            ids = p_ids + tok(pc["completion"], add_special_tokens=False)["input_ids"]
        start = 0
        while start < min(len(p_ids), len(ids)) and p_ids[start] == ids[start]:
            start += 1
        out.append((ids[:max_length], start))
    return out


def answer_loss(model, encoded: list[tuple[list[int], int]], pad_id: int, batch_size: int = 8) -> float:
    """Token-weighted mean cross-entropy over answer tokens (every token after the prompt), right padding."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
            chunk = encoded[i:i + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            labels = torch.full_like(ids, -100)
            for j, (seq, start) in enumerate(chunk):
                ids[j, :len(seq)] = torch.tensor(seq)
                mask[j, :len(seq)] = 1
                labels[j, start:len(seq)] = torch.tensor(seq[start:])
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(device)
            total += float(F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                           shift_labels.reshape(-1), ignore_index=-100, reduction="sum"))
            count += int((shift_labels != -100).sum())
    return total / max(count, 1)


def peak_memory_mb() -> tuple[float, str]:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS"


# ---------------------------------------------------------------------------------------------- the two runners
def run_ftl(a: argparse.Namespace, work: Path) -> dict:
    import lightning as L

    from ftl.commands.cli import FTLCLI

    class Timer(L.Callback):
        start = end = 0.0

        def on_train_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            self.end = time.perf_counter()

    timer = Timer()

    class TimedCLI(FTLCLI):
        def instantiate_classes(self) -> None:
            super().instantiate_classes()
            self.trainer.callbacks.append(timer)
            if a.order == "file":  # the rows in file order, batch after batch, as TRL's run gets them
                from torch.utils.data import DataLoader

                dm = self.datamodule
                dm.train_dataloader = lambda: DataLoader(dm.datasets["train"], batch_size=a.batch_size,
                                                         shuffle=False, collate_fn=dm.batch_of)

    tok = load_tokenizer(a.model)
    fmt = "chat" if getattr(tok, "chat_template", None) else "template"
    argv = ["fit", "--config", str(ROOT / "configs" / "medquad.yaml"),
            "--seed_everything", str(a.seed),
            "--model.pretrained", a.model, "--model.learning_rate", str(a.lr),
            "--model.warmup_ratio", "0", "--model.warmup_steps", "0", "--model.scheduler", "linear",
            "--model.val_generation_samples", "0",
            "--data.data_dir", str(work / "data"), "--data.prompt_format", fmt,
            "--data.packing", str(a.packing).lower(), "--data.max_length", str(a.max_length),
            "--data.batch_size", str(a.batch_size), "--data.max_samples", str(a.train_rows),
            "--data.max_eval_samples", str(a.test_rows),
            "--trainer.max_epochs", str(a.epochs), "--trainer.accumulate_grad_batches", "1",
            "--trainer.precision", "32-true", "--trainer.gradient_clip_val", str(a.max_grad_norm),
            "--trainer.limit_val_batches", "0",
            "--trainer.num_sanity_val_steps", "0", "--trainer.logger", "false",
            "--runs_root", str(work / "ftl_runs"), "--test_after_fit", "false", *shlex.split(a.ftl_args)]
    cli = TimedCLI(args=argv)
    train = cli.datamodule.datasets["train"]
    tokens = sum(len(ids) for ids in train["input_ids"]) * a.epochs
    return {"tokens": tokens, "seconds": timer.end - timer.start, "model": cli.model.model,
            "steps": cli.trainer.global_step}


def run_trl(a: argparse.Namespace, work: Path) -> dict:
    import datasets
    import transformers
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from ftl.hub import load_model

    transformers.set_seed(a.seed)
    tok = load_tokenizer(a.model)
    model = load_model(transformers.AutoModelForCausalLM, a.model)  # the same weights ftl loads
    rows = read_rows(work / "data", "train", a.train_rows)
    train = datasets.Dataset.from_list([prompt_completion(tok, r) for r in rows])

    class Timer(TrainerCallback):
        start = end = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.end = time.perf_counter()

    timer = Timer()
    config = SFTConfig(
        output_dir=str(work / "trl_out"), seed=a.seed, data_seed=a.seed,
        learning_rate=a.lr, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.01,
        lr_scheduler_type="linear", warmup_steps=0, num_train_epochs=a.epochs,
        per_device_train_batch_size=a.batch_size, gradient_accumulation_steps=1,
        # gradient checkpointing is on in SFTConfig by default; ftl recomputes nothing, so off here too
        max_grad_norm=a.max_grad_norm, gradient_checkpointing=False,
        bf16=False, fp16=False, eval_strategy="no", save_strategy="no", report_to="none",
        logging_steps=10, max_length=a.max_length, packing=a.packing, completion_only_loss=True,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer_class = SFTTrainer
    if a.order == "file":  # the rows in file order, as ftl's run gets them
        from torch.utils.data import SequentialSampler

        class FileOrderSFTTrainer(SFTTrainer):
            def _get_train_sampler(self, train_dataset=None):
                return SequentialSampler(self.train_dataset if train_dataset is None else train_dataset)

        trainer_class = FileOrderSFTTrainer
    trainer = trainer_class(model=model, args=config, train_dataset=train, processing_class=tok, callbacks=[timer])
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"]) * a.epochs
    trainer.train()
    return {"tokens": tokens, "seconds": timer.end - timer.start, "model": trainer.model,
            "steps": trainer.state.global_step}


def worker(a: argparse.Namespace) -> None:
    """One run (framework x packing), then the shared test loss; prints one JSON line."""
    work = Path(a.work)
    result = (run_ftl if a.worker == "ftl" else run_trl)(a, work)
    peak, what = peak_memory_mb()
    tok = load_tokenizer(a.model)
    test = encode_test(tok, read_rows(work / "data", "test", a.test_rows), a.max_length)
    loss = answer_loss(result["model"], test, tok.pad_token_id)
    print("SFT_PEER_RESULT " + json.dumps({
        "framework": a.worker, "packing": a.packing, "train_tokens": result["tokens"],
        "train_seconds": result["seconds"], "tokens_per_sec": result["tokens"] / max(result["seconds"], 1e-9),
        "optimizer_steps": result["steps"], "peak_memory_mb": peak, "memory_measure": what, "test_loss": loss,
    }), flush=True)


# ---------------------------------------------------------------------------------------------- driver
def prepare(a: argparse.Namespace, work: Path) -> None:
    """train/val/test jsonl of exactly the rows both frameworks use (val only so ftl carves none out of
    train; validation is off), and with --tiny the tiny model."""
    data_dir = Path(a.data_dir)
    if (data_dir / "train.jsonl").is_file() and (data_dir / "test.jsonl").is_file():
        train, test = read_rows(data_dir, "train", a.train_rows), read_rows(data_dir, "test", a.test_rows)
    elif a.tiny:
        train, test = synthetic_rows(a.train_rows), synthetic_rows(a.test_rows, offset=10_000)
    else:
        raise SystemExit(f"sft_peer: no train.jsonl/test.jsonl in {data_dir}: pass --data_dir")
    (work / "data").mkdir(parents=True)
    for split, rows in (("train", train), ("val", test[:4]), ("test", test)):
        with open(work / "data" / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    if a.tiny:
        folder = work / "tiny-chat-llama"
        folder.mkdir()
        build_tiny_model(folder, [f"user\n{r['question']}\nassistant\n{r['answer']}" for r in train + test])
        a.model = str(folder)


def loss_difference(ftl: list[float], trl: list[float]) -> tuple[float, float | None, float | None]:
    """Mean test loss of ftl minus TRL's over the seeds, with a 95% Welch t interval (None for a single run each).
    The seeds are the unit: what varies between them is the training order, the main noise of a short run."""
    from statistics import fmean

    diff = fmean(ftl) - fmean(trl)
    if len(ftl) < 2 or len(trl) < 2:
        return diff, None, None
    from scipy.stats import ttest_ind

    ci = ttest_ind(ftl, trl, equal_var=False).confidence_interval(0.95)
    return diff, float(ci.low), float(ci.high)


def table(results: list[dict], header: str, tolerance: float) -> str:
    """Every run, then ftl / TRL per packing setting: the ratio of mean tokens/s and the test-loss difference.
    Loss verdict: no worse means a mean difference of at most `tolerance` nats; with several seeds the 95%
    interval of the difference is printed, and whether it holds 0 (the two are then within noise)."""
    from statistics import fmean, stdev

    lines = [header, "", f"{'run':<14}{'seed':>5}{'tokens':>9}{'train s':>9}{'tokens/s':>11}{'steps':>7}"
             f"{'peak MB':>10}{'test loss':>11}"]
    for r in results:
        name = f"{r['framework']} {'packed' if r['packing'] else 'unpacked'}"
        lines.append(f"{name:<14}{r.get('seed', ''):>5}{r['train_tokens']:>9}{r['train_seconds']:>9.1f}"
                     f"{r['tokens_per_sec']:>11.1f}{r['optimizer_steps']:>7}{r['peak_memory_mb']:>10.0f}"
                     f"{r['test_loss']:>11.4f}")
    groups: dict[tuple[str, bool], list[dict]] = {}
    for r in results:
        groups.setdefault((r["framework"], r["packing"]), []).append(r)
    if any(len(g) > 1 for g in groups.values()):
        lines += ["", f"{'mean over seeds':<17}{'runs':>5}{'tokens/s':>10}{'peak MB':>10}{'test loss':>11}{'sd':>8}"]
        for (framework, packing), g in groups.items():
            losses = [r["test_loss"] for r in g]
            lines.append(f"{framework + (' packed' if packing else ' unpacked'):<17}{len(g):>5}"
                         f"{fmean(r['tokens_per_sec'] for r in g):>10.1f}{max(r['peak_memory_mb'] for r in g):>10.0f}"
                         f"{fmean(losses):>11.4f}{stdev(losses) if len(g) > 1 else 0.0:>8.4f}")
    lines += ["", f"peak memory: {results[0]['memory_measure']}", "",
              f"ftl / TRL (loss counts as no worse within {tolerance:g} nats of TRL's, mean over seeds)",
              "                 tokens/s ratio  target  test loss (ftl - TRL) [95% interval]  verdict"]
    for packing, target in ((False, 1.2), (True, 1.0)):
        if ("ftl", packing) not in groups or ("trl", packing) not in groups:
            continue
        f, t = groups[("ftl", packing)], groups[("trl", packing)]
        ratio = fmean(r["tokens_per_sec"] for r in f) / fmean(r["tokens_per_sec"] for r in t)
        diff, low, high = loss_difference([r["test_loss"] for r in f], [r["test_loss"] for r in t])
        no_worse = diff <= tolerance
        interval = "" if low is None else f" [{low:+.4f}, {high:+.4f}]"
        noise = "" if low is None else ("; within noise" if low <= 0 <= high else "; beyond noise")
        ok = ratio >= target and no_worse
        lines.append(f"{'packed' if packing else 'unpacked':<17}{ratio:>14.2f}x  >={target:.1f}x  "
                     f"{f'{diff:+.4f}{interval}':>36}  {'meets' if ok else 'misses'} (ratio "
                     f"{'ok' if ratio >= target else 'low'}, loss {'no worse' if no_worse else 'worse'}{noise})")
    return "\n".join(lines)


def run_worker(a: argparse.Namespace, work: Path, framework: str, packing: bool, seed: int) -> dict:
    """One run in its own process (so peak memory is its own); its result line, with the seed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, __file__, "--worker", framework, "--work", str(work), "--model", a.model,
           "--train_rows", str(a.train_rows), "--test_rows", str(a.test_rows),
           "--epochs", str(a.epochs), "--batch_size", str(a.batch_size), "--lr", str(a.lr),
           "--max_length", str(a.max_length), "--seed", str(seed), "--max_grad_norm", str(a.max_grad_norm),
           "--order", a.order, f"--ftl_args={a.ftl_args}"] + (["--packing"] if packing else [])
    print(f"sft_peer: {framework} {'packed' if packing else 'unpacked'}, seed {seed} ...", file=sys.stderr,
          flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("SFT_PEER_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"sft_peer: the {framework} run failed (exit {proc.returncode})")
    return {**json.loads(line.removeprefix("SFT_PEER_RESULT ")), "seed": seed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="ftl model name or offline alias (default smollm2-135m)")
    p.add_argument("--tiny", action="store_true",
                   help="use a tiny random chat Llama built offline in a temp dir (synthetic rows if no data)")
    p.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "medquad"),
                   help="folder with train/test jsonl (question, answer)")
    p.add_argument("--train_rows", type=int, default=64, help="training rows (first N of train)")
    p.add_argument("--test_rows", type=int, default=32, help="test rows (first N of test)")
    p.add_argument("--epochs", type=int, default=1, help="training epochs")
    p.add_argument("--batch_size", type=int, default=4, help="rows (or packed rows) per optimizer step")
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (linear decay, no warmup)")
    p.add_argument("--max_length", type=int, default=256, help="max tokens per sequence / packed row")
    p.add_argument("--seed", type=int, default=None, help="one seed (the same as --seeds N)")
    p.add_argument("--seeds", default="42", help="comma-separated seeds: every run is repeated with each (both "
                   "frameworks; the seed sets the batch order), and the loss comparison gets a 95%% interval")
    p.add_argument("--max_grad_norm", type=float, default=1.0,
                   help="gradient clipping norm for both (TRL's default; ftl's --trainer.gradient_clip_val)")
    p.add_argument("--loss_tolerance", type=float, default=0.005,
                   help="test-loss excess (nats) over TRL still counted as no worse (seeded-run noise)")
    p.add_argument("--runs", choices=["both", "unpacked", "packed"], default="both",
                   help="which pairs of runs (ftl and TRL each): with and without packing, or one of them")
    p.add_argument("--frameworks", choices=["both", "ftl", "trl"], default="both",
                   help="run both frameworks (ratios printed) or one of them (its rows only)")
    p.add_argument("--ftl_args", default="", help="extra ftl CLI arguments for the ftl runs, one string "
                   "(e.g. \"--data.group_by_length false\")")
    p.add_argument("--order", choices=["seeded", "file"], default="seeded",
                   help="training batch order: each framework's own, from the seed (default), or the rows in file "
                   "order in both (unpacked only; the same batches, so the two trainers can be compared step for "
                   "step at full size)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--worker", choices=["ftl", "trl"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--packing", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a)
        return
    seeds = [a.seed] if a.seed is not None else [int(x) for x in a.seeds.split(",") if x.strip()]
    if a.order == "file" and a.runs != "unpacked":
        p.error("--order file compares unpacked runs (the two pack rows differently): add --runs unpacked")
    results = []
    with tempfile.TemporaryDirectory(prefix="sft_peer_") as tmp:
        work = Path(tmp)
        prepare(a, work)
        # seeds outermost: a drift in machine load then touches both frameworks alike
        for seed in seeds:
            for framework in {"both": ("ftl", "trl"), "ftl": ("ftl",), "trl": ("trl",)}[a.frameworks]:
                for packing in {"both": (False, True), "unpacked": (False,), "packed": (True,)}[a.runs]:
                    results.append(run_worker(a, work, framework, packing, seed))
    model = "tiny random chat Llama (2 layers, width 32)" if a.tiny else a.model
    header = (f"sft_peer: {model}; {a.train_rows} train / {a.test_rows} test rows, {a.epochs} epoch(s), batch "
              f"{a.batch_size}, lr {a.lr:g}, max_length {a.max_length}, seeds {','.join(map(str, seeds))}"
              + (f"; ftl args: {a.ftl_args}" if a.ftl_args else "")
              + ("; training rows in file order in both" if a.order == "file" else ""))
    text = table(results, header, a.loss_tolerance)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"settings": {k: v for k, v in vars(a).items()
                                                        if k not in ("worker", "packing", "work")},
                                           "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
