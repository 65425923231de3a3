"""ftl's test pass of a causal LM against a plain `model.generate` loop over the same prompts: generated tokens/s.

Target (issue 15): ftl >= 0.95x the plain loop's tokens/s.

One process, alternating runs (plain, ftl, plain, ftl, ... for `--repeats` rounds; medians reported), so a busy
machine slows both alike:
- ftl: `ftl test` as a user runs it, in process (`ftl.commands.cli.FTLCLI`, `configs/medquad.yaml`, the MedQuAD
  data module, a fresh run directory each time): `CausalLM` computes the test loss of each batch, then generates
  greedily from the batch's left-padded prompts, decodes them and scores ROUGE per row. ftl itself reports
  `test/gen_tokens` and `test/gen_tokens_per_sec`: tokens generated (each row up to and including its first stop
  token) over the seconds spent inside `CausalLM.generate` around `model.generate` (its timer covers the call
  and the token count, not decoding).
- plain: the model loaded once the same way (`ftl.hub.load_model`, float32), `model.eval()`, and a loop of
  `model.generate(input_ids, attention_mask, max_new_tokens=..., do_sample=False, eos_token_id=stops,
  pad_token_id=pad)` under `torch.inference_mode()` over the SAME batches: the prompt token ids and row grouping
  are read from ftl's own data module (`test_dataloader()`: length-sorted, left-padded, `eval_batch_size` rows),
  with columns that are padding in every row dropped (what `tokenizer(prompts, padding=True)` gives). Tokens
  are counted with ftl's `generated_tokens`; the generation timer covers `generate` and that count (as ftl's);
  the loop timer adds decoding.

Compared, each ftl / plain:
- generation tokens/s: ftl's own `test/gen_tokens_per_sec` vs the plain loop's tokens / generation seconds
  (the target's comparison: the same work timed the same way);
- whole-pass tokens/s: the same tokens over ftl's whole loop over test batches (`on_test_epoch_start` to the
  last `on_test_batch_end`: data loading, the loss forward, generation, decoding, per-row ROUGE) vs the plain
  loop with decoding. ftl does more work here (the loss forward and ROUGE), so this ratio is lower by design;
  also shown: ftl's `trainer.test` from start to end (epoch metrics, bootstrap intervals, files written).
The generated texts of every row, and the token totals, must be equal (greedy): the benchmark checks it.

One torch thread by default (`--threads`): on 2 cores shared with another job, 2 threads made every parallel
region wait for a descheduled thread, and the timings measured the other job. glibc's malloc thresholds are set
once at the start (`ftl.malloc.tune_malloc`, which `ftl test` applies to its process anyway), so runs before and
after the first ftl run see the same allocator.

    python benchmarks/generation.py --tiny --repeats 9 --out benchmarks/results/generation_tiny.json   # ~30 s
    python benchmarks/generation.py --questions 32 --max_new_tokens 64 --repeats 3   # smollm2-135m, ~5 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- data and model
def data_folder(a: argparse.Namespace, work: Path) -> tuple[Path, str]:
    """`--data_dir` when it holds train/val/test.jsonl, else generated question/answer rows written to `work`."""
    folder = Path(a.data_dir).expanduser()
    if all((folder / f"{s}.jsonl").is_file() for s in ("train", "val", "test")):
        return folder, str(folder)
    import random

    rng = random.Random(0)
    words = ("fever cough asthma diabetes insulin migraine rash anemia kidney liver heart lung blood pressure "
             "therapy symptom treatment diagnosis vaccine infection chronic acute genetic disorder").split()
    out = work / "data"
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 200), ("val", 40), ("test", max(40, a.questions))):
        with open(out / f"{split}.jsonl", "w") as f:
            for i in range(n):
                q = f"What is {' '.join(rng.choices(words, k=rng.randint(1, 12)))} ({split} {i}) ?"
                ans = " ".join(rng.choices(words, k=rng.randint(5, 60))) + "."
                f.write(json.dumps({"question": q, "answer": ans}) + "\n")
    return out, f"generated rows ({folder} not found)"


def tiny_chat_llama(folder: Path, data_dir: Path) -> str:
    """A 2-layer, 64-wide random Llama whose byte-level BPE tokenizer (trained on the data's rows) has a ChatML chat
    template like SmolLM2-Instruct's, end of turn `<|im_end|>` distinct from EOS `<|endoftext|>`
    (`sft_peer.build_tiny_model`): no downloads."""
    from sft_peer import build_tiny_model

    texts = []
    with open(data_dir / "train.jsonl") as f:
        for line in list(f)[:2000]:
            r = json.loads(line)
            texts.append(f"user\n{r['question']}\nassistant\n{r['answer']}\nsystem\nBe brief.")
    build_tiny_model(folder, texts, hidden_size=64, max_positions=1024)
    return str(folder)


def data_args(a: argparse.Namespace, model: str, data_dir: Path) -> dict[str, Any]:
    """The data module's settings, as `configs/medquad.yaml` gives them, with this benchmark's sizes."""
    return {"data_dir": str(data_dir), "tokenizer": model, "prompt_format": "auto", "packing": False,
            "max_length": a.max_length, "batch_size": 4, "eval_batch_size": a.batch_size,
            "max_samples": a.train_rows, "max_eval_samples": a.questions}


def prompt_batches(dm, device: str) -> list[tuple[list[int], Any, Any]]:
    """(row positions, prompt ids, prompt mask) of every test batch, in ftl's test order and grouping, without the
    columns that are padding in every row, on `device`."""
    out = []
    for batch in dm.test_dataloader():
        ids, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
        keep = int(mask.sum(0).nonzero().min())
        out.append((batch["row_idx"].tolist(), ids[:, keep:].to(device), mask[:, keep:].to(device)))
    return out


def padding_by_order(dm, batch_size: int) -> dict[str, int]:
    """Left padding of the prompt batches (no rounding to a multiple) in three row orders: ftl's evaluation order
    (longest prompt + answer first), longest prompt first, and the data's order (a loop without sorting)."""
    from ftl.data.sampling import SortedSampler, sequence_lengths

    ds = dm.datasets["test"]
    prompts = ds.data.column("prompt_length").to_pylist()
    orders = {"ftl (prompt + answer length)": list(SortedSampler(sequence_lengths(ds))),
              "prompt length": sorted(range(len(prompts)), key=lambda i: -prompts[i]),
              "data order": list(range(len(prompts)))}
    out = {}
    for name, order in orders.items():
        chunks = [[prompts[i] for i in order[j:j + batch_size]] for j in range(0, len(order), batch_size)]
        out[name] = sum(max(c) * len(c) - sum(c) for c in chunks)
    return out


# ---------------------------------------------------------------------------------------------- the two runners
def run_plain(model, tok, batches, max_new_tokens: int, stops: list[int]) -> dict[str, Any]:
    import torch

    from ftl.models.causal_lm import generated_tokens

    texts: dict[int, str] = {}
    tokens, gen_seconds = 0, 0.0
    start = time.perf_counter()
    with torch.inference_mode():
        for rows, ids, mask in batches:
            t0 = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None,
                                 pad_token_id=tok.pad_token_id, eos_token_id=stops)
            new = out[:, ids.shape[1]:]
            tokens += generated_tokens(new, stops)
            gen_seconds += time.perf_counter() - t0
            for row, text in zip(rows, tok.batch_decode(new, skip_special_tokens=True), strict=True):
                texts[row] = text.strip()
    return {"tokens": tokens, "gen_seconds": gen_seconds, "loop_seconds": time.perf_counter() - start,
            "texts": texts}


def run_ftl(a: argparse.Namespace, model: str, data_dir: Path, work: Path) -> dict[str, Any]:
    import lightning as L

    from ftl.commands.cli import FTLCLI

    class Timer(L.Callback):
        def on_test_start(self, trainer, pl_module):
            self.test_start = time.perf_counter()

        def on_test_epoch_start(self, trainer, pl_module):
            self.loop_start = time.perf_counter()

        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            self.loop_end = time.perf_counter()

        def on_test_end(self, trainer, pl_module):
            self.test_end = time.perf_counter()

    timer = Timer()

    loss_seconds = [0.0]

    class TimedCLI(FTLCLI):
        def instantiate_classes(self) -> None:
            super().instantiate_classes()
            self.trainer.callbacks.append(timer)  # last: its on_test_end comes after ftl's outputs are written
            forward = self.model.forward  # the loss forward of each test batch (CausalLM.forward), timed

            def timed_forward(*args, **kwargs):
                t0 = time.perf_counter()
                out = forward(*args, **kwargs)
                loss_seconds[0] += time.perf_counter() - t0
                return out

            self.model.forward = timed_forward

    d = data_args(a, model, data_dir)
    argv = ["test", "--config", str(ROOT / "configs" / "medquad.yaml"), "--seed_everything", "42",
            "--model.pretrained", model, "--data.data_dir", d["data_dir"],
            "--data.max_length", str(d["max_length"]), "--data.eval_batch_size", str(d["eval_batch_size"]),
            "--data.max_samples", str(d["max_samples"]), "--data.max_eval_samples", str(d["max_eval_samples"]),
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--runs_root", str(work / "ftl_runs")]
    if a.max_new_tokens:
        argv += ["--model.max_new_tokens", str(a.max_new_tokens)]
    start, given = time.perf_counter(), sys.argv
    sys.argv = given[:1]  # (LightningCLI warns when it sees this script's own arguments beside `args`)
    try:
        cli = TimedCLI(args=argv)
    finally:
        sys.argv = given
    wall = time.perf_counter() - start
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    records = cli.model.test_outputs.records
    return {"tokens": int(metrics["test/gen_tokens"]), "gen_tokens_per_sec": metrics["test/gen_tokens_per_sec"],
            "gen_seconds": cli.model._gen_seconds, "loop_seconds": timer.loop_end - timer.loop_start,
            "test_seconds": timer.test_end - timer.test_start, "cli_seconds": wall, "loss_seconds": loss_seconds[0],
            "max_new_tokens": cli.model.max_new_tokens, "rougeL": metrics.get("test/rougeL"),
            "texts": {r.index: r.prediction for r in records}}


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true",
                   help="A tiny random ChatML Llama built here (seconds per run; no downloads) instead of --model.")
    p.add_argument("--model", default="smollm2-135m", help="Causal LM: offline alias, hub id or folder.")
    p.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "medquad"),
                   help="Folder with train/val/test.jsonl (question, answer); generated rows when it is missing.")
    p.add_argument("--questions", type=int, default=32,
                   help="Test questions (data.max_eval_samples: a seeded sample of the test split).")
    p.add_argument("--train_rows", type=int, default=700,
                   help="Training rows (data.max_samples, as configs/medquad.yaml): ftl derives max_new_tokens "
                   "from their longest completion when --max_new_tokens is not given.")
    p.add_argument("--batch_size", type=int, default=8, help="Prompts per generate call (data.eval_batch_size).")
    p.add_argument("--max_length", type=int, default=256, help="data.max_length (prompts keep at most half).")
    p.add_argument("--max_new_tokens", type=int, default=None,
                   help="Most tokens generated per answer, given to both; default: what ftl derives from the data.")
    p.add_argument("--repeats", type=int, default=3, help="Alternating rounds (plain, ftl); medians reported.")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads for both (0: torch's default). 1 by default: with 2 threads on 2 cores "
                   "shared with another job, a parallel region waits for a descheduled thread (an 8x64 by 64x1000 "
                   "linear took 16 ms instead of 0.02 ms whenever the other job held a core; 0.015 ms always with "
                   "1 thread), which swamps any difference between the two loops.")
    p.add_argument("--target", type=float, default=0.95, help="ftl / plain generation tokens/s to reach.")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "generation.json"),
                   help="JSON results; the printed table goes beside it as .txt.")
    a = p.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    from ftl.data.qa import MedQuADDataModule
    from ftl.hub import load_model
    from ftl.malloc import tune_malloc

    tune_malloc()
    if a.threads:
        torch.set_num_threads(a.threads)  # (the in-process `ftl test` keeps it: ftl sets no thread count)
    work = Path(tempfile.mkdtemp(prefix="ftl-generation-"))
    data_dir, data_note = data_folder(a, work)
    model_name = tiny_chat_llama(work / "tiny-chat-llama", data_dir) if a.tiny else a.model

    dm = MedQuADDataModule(**data_args(a, model_name, data_dir))
    dm.prepare_data()
    dm.setup("test")
    tok, stops = dm.tokenizer, dm.stop_token_ids
    max_new = a.max_new_tokens or max(1, dm.longest_completion() or 64)  # ftl's rule (CausalLM.setup)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where `ftl test` (accelerator auto) runs too
    batches = prompt_batches(dm, device)
    prompt_tokens = sum(int(m.sum()) for _, _, m in batches)
    padding = sum(m.numel() - int(m.sum()) for _, _, m in batches)
    orders = padding_by_order(dm, a.batch_size)
    model = load_model(transformers.AutoModelForCausalLM, model_name).to(device).eval()

    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "ftl": []}
    for r in range(a.repeats):
        for name in ("plain", "ftl"):
            out = (run_plain(model, tok, batches, max_new, stops) if name == "plain"
                   else run_ftl(a, model_name, data_dir, work))
            runs[name].append(out)
            print(f"round {r + 1} {name}: {out['tokens']} tokens, generation {out['gen_seconds']:.2f} s, "
                  f"loop {out['loop_seconds']:.2f} s", file=sys.stderr, flush=True)

    plain0, ftl0 = runs["plain"][0], runs["ftl"][0]
    if ftl0["max_new_tokens"] != max_new:
        raise SystemExit(f"ftl used max_new_tokens {ftl0['max_new_tokens']}, the plain loop {max_new}")
    differ = [i for i in sorted(plain0["texts"]) if plain0["texts"][i] != ftl0["texts"].get(i)]
    same_texts = not differ and set(plain0["texts"]) == set(ftl0["texts"])
    same_tokens = len({run["tokens"] for group in runs.values() for run in group}) == 1
    tokens = plain0["tokens"]

    def med(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    plain_gen = statistics.median(run["tokens"] / run["gen_seconds"] for run in runs["plain"])
    ftl_gen = med("ftl", "gen_tokens_per_sec")
    plain_loop = statistics.median(run["tokens"] / run["loop_seconds"] for run in runs["plain"])
    ftl_loop = statistics.median(run["tokens"] / run["loop_seconds"] for run in runs["ftl"])
    ftl_test = statistics.median(run["tokens"] / run["test_seconds"] for run in runs["ftl"])
    ratio_gen, ratio_loop = ftl_gen / plain_gen, ftl_loop / plain_loop
    rest = statistics.median(r["loop_seconds"] - r["loss_seconds"] - r["gen_seconds"] for r in runs["ftl"])
    # each ftl run over the plain run just before it: drift of the machine's load cancels within a pair
    paired = statistics.median(f["gen_tokens_per_sec"] / (p["tokens"] / p["gen_seconds"])
                               for p, f in zip(runs["plain"], runs["ftl"], strict=True))

    lines = [
        f"# ftl test pass vs a plain model.generate loop ({'tiny random ChatML Llama' if a.tiny else model_name})",
        "",
        f"data: {data_note}; {len(plain0['texts'])} test questions in {len(batches)} batches of up to "
        f"{a.batch_size}, prompts {prompt_tokens} tokens + {padding} left padding; greedy, max_new_tokens "
        f"{max_new}{'' if a.max_new_tokens else ' (derived by ftl)'}, stop ids {stops}, pad id {tok.pad_token_id}",
        f"{a.repeats} alternating rounds (plain, ftl), medians; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, {device}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs)",
        "",
        "| | generated tokens | generation s | generation tokens/s | whole loop s | whole loop tokens/s |",
        "|---|---:|---:|---:|---:|---:|",
        f"| plain `model.generate` loop | {tokens} | {med('plain', 'gen_seconds'):.2f} | {plain_gen:.1f} | "
        f"{med('plain', 'loop_seconds'):.2f} | {plain_loop:.1f} |",
        f"| ftl test pass | {ftl0['tokens']} | {med('ftl', 'gen_seconds'):.2f} | {ftl_gen:.1f} | "
        f"{med('ftl', 'loop_seconds'):.2f} | {ftl_loop:.1f} |",
        f"| ftl / plain | | | **{ratio_gen:.3f}x** | | {ratio_loop:.3f}x |",
        "",
        f"generation tokens/s: ftl's own test/gen_tokens_per_sec vs the plain loop timed the same way "
        f"(generate + token count). Target ftl >= {a.target}x: {'MET' if ratio_gen >= a.target else 'NOT MET'} "
        f"({ratio_gen:.3f}x; median of the per-round ratios, each ftl run over the plain run before it: "
        f"{paired:.3f}x).",
        "whole loop: ftl's loop over test batches (data, loss forward, generation, decoding, per-row ROUGE) vs the "
        "plain loop (generation, decoding); ftl does the loss forward and ROUGE on top. ftl's loop: loss forward "
        f"{med('ftl', 'loss_seconds'):.2f} s, generation {med('ftl', 'gen_seconds'):.2f} s, the rest (data, "
        f"decoding, ROUGE, hooks) {rest:.2f} s (medians).",
        f"ftl trainer.test start to end (adds epoch metrics, bootstrap intervals, files): "
        f"{med('ftl', 'test_seconds'):.2f} s ({ftl_test:.1f} generated tokens/s); whole `ftl test` command in "
        f"process incl. model load: {med('ftl', 'cli_seconds'):.2f} s.",
        f"same generated texts in every row: {same_texts}"
        + (f" (differ in rows {differ[:10]})" if differ else "")
        + f"; same token totals in every run: {same_tokens}; ftl test ROUGE-L {ftl0['rougeL']:.4f}",
        "prompt left padding (tokens) by row order: " + ", ".join(f"{k} {v}" for k, v in orders.items())
        + " (the same batches in both loops, so the order does not change the ratio)",
        "per round (tokens/s, generation): plain "
        + ", ".join(f"{r['tokens'] / r['gen_seconds']:.1f}" for r in runs["plain"])
        + "; ftl " + ", ".join(f"{r['gen_tokens_per_sec']:.1f}" for r in runs["ftl"]),
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(a).items() if k != "out"}
    settings.update(model=model_name if not a.tiny else "tiny random ChatML Llama (2 layers, 64 wide)",
                    data=data_note, max_new_tokens_used=max_new, stop_ids=stops, pad_id=tok.pad_token_id,
                    batches=len(batches), prompt_tokens=prompt_tokens, prompt_padding=padding,
                    prompt_padding_by_order=orders, device=device,
                    threads=torch.get_num_threads(), torch=torch.__version__, transformers=transformers.__version__)
    result = {
        "settings": settings,
        "generated_tokens": tokens, "same_texts": same_texts, "same_tokens": same_tokens,
        "differing_rows": differ,
        "plain": {"gen_tokens_per_sec": plain_gen, "loop_tokens_per_sec": plain_loop,
                  "gen_seconds": med("plain", "gen_seconds"), "loop_seconds": med("plain", "loop_seconds")},
        "ftl": {"gen_tokens_per_sec": ftl_gen, "loop_tokens_per_sec": ftl_loop, "test_tokens_per_sec": ftl_test,
                "gen_seconds": med("ftl", "gen_seconds"), "loop_seconds": med("ftl", "loop_seconds"),
                "test_seconds": med("ftl", "test_seconds"), "cli_seconds": med("ftl", "cli_seconds"),
                "loss_forward_seconds": med("ftl", "loss_seconds"),
                "rougeL": ftl0["rougeL"]},
        "ratio_gen": ratio_gen, "ratio_gen_paired": paired, "ratio_loop": ratio_loop, "target": a.target,
        "target_met": ratio_gen >= a.target,
        "rounds": {name: [{k: v for k, v in run.items() if k != "texts"} for run in group]
                   for name, group in runs.items()},
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".txt").write_text(text + "\n")
    print(f"wrote {out} and {out.with_suffix('.txt')}", file=sys.stderr)


if __name__ == "__main__":
    main()
