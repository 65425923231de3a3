"""Tiny offline fixtures: a random BERT and GPT-2 built from configs, tokenizers built without downloads, small data.

Nothing here touches the network: HF_HUB_OFFLINE is set before transformers is imported, W&B runs offline,
and every cache goes to a per-session temporary folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory):
    """Keep ftl's and HF datasets' caches out of the user's home during tests."""
    root = tmp_path_factory.mktemp("caches")
    old = {k: os.environ.get(k) for k in ("FTL_CACHE", "HF_DATASETS_CACHE", "WANDB_DIR")}
    os.environ["FTL_CACHE"] = str(root / "ftl")
    os.environ["HF_DATASETS_CACHE"] = str(root / "hf_datasets")
    os.environ["WANDB_DIR"] = str(root / "wandb")
    yield root
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _words(texts: list[str]) -> list[str]:
    return sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """Synthetic health-text classification splits (train/val/test csv), small enough for seconds-long fits."""
    from ftl.data.synthetic import write_splits

    return write_splits(tmp_path_factory.mktemp("data") / "tiny", n_train=64, n_val=32, n_test=32, seed=0)


@pytest.fixture(scope="session")
def tiny_binary_dir(tmp_path_factory, tiny_data_dir) -> Path:
    """The same texts with binary int labels (label % 2) and no label_name column."""
    import csv

    folder = tmp_path_factory.mktemp("data") / "binary"
    folder.mkdir()
    for split in ("train", "val", "test"):
        with open(tiny_data_dir / f"{split}.csv", newline="") as f:
            rows = [{"text": r["text"], "label": int(r["label"]) % 2} for r in csv.DictReader(f)]
        with open(folder / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(rows)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, tiny_data_dir) -> Path:
    """A 2-layer, 32-wide random BERT with a WordPiece tokenizer whose vocab comes from the fixture data."""
    import csv

    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("models") / "tiny-bert"
    folder.mkdir()
    texts = []
    for split in ("train", "val", "test"):
        with open(tiny_data_dir / f"{split}.csv", newline="") as f:
            texts += [row["text"] for row in csv.DictReader(f)]
    vocab = SPECIAL + _words(texts) + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab += [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    vocab = list(dict.fromkeys(vocab))
    # transformers 5 ignores `vocab_file=` here (every token would be [UNK]): pass the vocab itself.
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, model_max_length=512)
    assert tokenizer.unk_token_id not in tokenizer("patient reports chest pain")["input_ids"]
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512,
    )
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)  # an encoder without a head, like minilm-l6
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def run_root(tmp_path) -> Path:
    return tmp_path / "runs"


def run_cli(*args: str) -> None:
    """Run the ftl CLI in-process (same code path as `python -m ftl`)."""
    from ftl.cli import main

    main(list(args))


@pytest.fixture
def cli():
    return run_cli
