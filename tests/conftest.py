"""Tiny offline fixtures: a random BERT and GPT-2 built from configs, tokenizers built without downloads, small data.

Nothing here touches the network: HF_HUB_OFFLINE is set before transformers is imported, W&B runs offline,
and every cache goes to a per-session temporary folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.helpers")

from tests.helpers import run_cli, tiny_qa_rows  # noqa: E402 - after the assert-rewrite registration

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine torch's spinning threads made
# a tiny step 40x slower (3.3 s vs 0.08 s measured here): one thread per test process.
os.environ.setdefault("OMP_NUM_THREADS", "1")

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory):
    """Keep ftl's and HF datasets' caches out of the user's home during tests."""
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
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


def _relabelled(source: Path, folder: Path, label) -> Path:
    """`source`'s train/val/test.csv with `label(row)` as the only label column (text, label)."""
    import csv

    folder.mkdir()
    for split in ("train", "val", "test"):
        with open(source / f"{split}.csv", newline="") as f:
            rows = [{"text": r["text"], "label": label(r)} for r in csv.DictReader(f)]
        with open(folder / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(rows)
    return folder


@pytest.fixture(scope="session")
def tiny_binary_dir(tmp_path_factory, tiny_data_dir) -> Path:
    """The same texts with binary int labels (label % 2) and no label_name column."""
    return _relabelled(tiny_data_dir, tmp_path_factory.mktemp("data") / "binary", lambda r: int(r["label"]) % 2)


@pytest.fixture(scope="module")
def imbalanced_dir(tmp_path_factory, tiny_data_dir) -> Path:
    """Binary version of the tiny data: cardiovascular (about 20% of rows) against everything else."""
    return _relabelled(tiny_data_dir, tmp_path_factory.mktemp("data") / "imbalanced",
                       lambda r: int(r["label"] == "0"))


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


@pytest.fixture
def cli():
    return run_cli


# ---------------------------------------------------------------- causal LM (question answering)
@pytest.fixture(scope="session")
def tiny_qa_dir(tmp_path_factory) -> Path:
    """train/val/test jsonl of `tiny_qa_rows` (32/8/8 rows, no question in two splits)."""
    import json

    folder = tmp_path_factory.mktemp("data") / "qa"
    folder.mkdir()
    rows = tiny_qa_rows()
    splits = {"train": rows[:32], "val": rows[32:40], "test": rows[40:]}
    for split, part in splits.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random GPT-2 (128 positions) with a byte-level BPE trained on the QA fixture texts.

    The tokenizer has an eos token and NO pad token, like GPT-2's, so the no-pad path is what tests run.
    """
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("models") / "tiny-gpt2"
    folder.mkdir()
    texts = [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in tiny_qa_rows()]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=400, min_frequency=2, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    eos = "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=eos, bos_token=eos,
                                        unk_token=eos, model_max_length=128)
    assert tokenizer.pad_token is None and tokenizer.eos_token_id is not None
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_chat_llama(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random Llama (256 positions) whose tokenizer has a ChatML chat template, like
    SmolLM2-Instruct's, but whose end of turn (`<|im_end|>`) is NOT its EOS (`<|endoftext|>`), so tests see
    ftl find the end-of-turn token from the template rather than assume EOS."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("models") / "tiny-chat-llama"
    folder.mkdir()
    texts = [f"user\n{r['question']}\nassistant\n{r['answer']}\nsystem\nBe brief." for r in tiny_qa_rows()]
    bpe = ByteLevelBPETokenizer()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe.train_from_iterator(texts, vocab_size=400, min_frequency=2, special_tokens=specials, show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                        bos_token="<|endoftext|>", unk_token="<|endoftext|>", model_max_length=256,
                                        additional_special_tokens=specials[1:])
    tokenizer.chat_template = CHATML
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=tokenizer.eos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
