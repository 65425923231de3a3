#!/usr/bin/env bash
# One-GPU speed check of ftl (issue 17): ftl fit vs HF Trainer bf16 (and TRL SFTTrainer) on a BERT-base-size
# encoder and a SmolLM2-135M-size decoder built from configs with random weights. No network, no downloads,
# no W&B. Sized for under 8 minutes on one H200 (7 runs of 400-600 steps, each its own process; estimated 3-5
# minutes, not yet timed on a GPU: --encoder-steps/--decoder-steps/--scenarios cut it). Prints samples/s, tokens/s,
# TFLOP/s, MFU, peak GPU memory and ftl's ratios against the goals (ftl >= 1.1x HF on the encoder, >= 1.0x TRL on
# the decoder, MFU >= 35% on the encoder), and writes benchmarks/results/gpu_check.json (--out PATH).
#
#   bash benchmarks/gpu_check.sh                        # on the GPU machine
#   bash benchmarks/gpu_check.sh --find-links wheels/   # install the missing wheels from wheels/ first
#   bash benchmarks/gpu_check.sh --wheels               # print the wheel list, sizes and commands
#   bash benchmarks/gpu_check.sh --cpu                  # tiny models on CPU: the whole pipeline in ~1.5 minutes
#
# Wheels to bring (a GPU image with torch, lightning, transformers, torchmetrics, peft, pandas and pyarrow lacks
# them; all pure Python, 2.70 MiB together, 2,834,913 bytes):
#   datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 jsonargparse==4.53.0 docstring-parser==0.18.0
#   typeshed-client==2.15.0 trl==1.16.0 (optional: the decoder's TRL baseline)
# and pyarrow==26.0.1 (52.49 MiB; 55.20 MiB in all) only if the image's pyarrow is older than 24.
# Download them where pip works (multiprocess's wheel is per Python version: match the GPU machine's):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d wheels/ datasets==5.2.0 dill==0.4.1 \
#     multiprocess==0.70.19 jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0 trl==1.16.0
# and install them there with `pip install --no-index --find-links wheels/ ...` (what --find-links does).
# ftl itself is not installed: this checkout's src/ goes on PYTHONPATH.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
export PYTHONPATH="$ROOT/src:$ROOT/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec "$PY" "$ROOT/benchmarks/gpu_check.py" "$@"
