"""Engine construction for the policy service from a JSON-able spec.

``build_engine({"backend": "noop"})`` gives ``models.stand_ins.NoOpEngine``, ``{"backend": "random",
"seed": 0}`` ``models.random_engine.RandomEngine``;
``{"backend": "factory", "factory": "package.module:callable", **kwargs}`` calls that callable with the
other keys (an engine of your own, or a stand-in: tests and benchmarks use it, and say so); every
other backend (``transformers``, ``vllm``, ...) goes through ``models.loading.load_engine(spec)``.

The spec comes from a trusted config file (``tickcall serve --config``), never from the wire.
"""

from __future__ import annotations

import importlib
from typing import Any


def load_factory(path: str) -> Any:
    """``"package.module:callable"`` -> the callable. Raises ValueError when it cannot be imported."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"factory {path!r}: expected 'package.module:callable'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"factory {path!r} cannot be loaded: {exc}") from exc


def build_engine(spec: dict[str, Any] | None) -> Any:
    """An engine from its spec (see module docstring). Raises ValueError for an unusable spec."""
    spec = dict(spec or {"backend": "noop"})
    backend = spec.get("backend", "noop")
    if backend == "noop":
        from tickcall.models.stand_ins import NoOpEngine

        extra = sorted(set(spec) - {"backend", "max_new_tokens"})
        if extra:
            raise ValueError(f"noop engine takes no options {extra}")
        return NoOpEngine(max_new_tokens=int(spec.get("max_new_tokens", 32)))
    if backend == "random":
        from tickcall.models.random_engine import RandomEngine

        extra = sorted(set(spec) - {"backend", "seed", "max_new_tokens"})
        if extra:
            raise ValueError(f"random engine takes only the options seed and max_new_tokens, not {extra}")
        return RandomEngine(seed=int(spec.get("seed", 0)), max_new_tokens=int(spec.get("max_new_tokens", 32)))
    if backend == "factory":
        spec.pop("backend")
        factory = spec.pop("factory", None)
        if not isinstance(factory, str):
            raise ValueError("the factory backend needs 'factory': 'package.module:callable'")
        return load_factory(factory)(**spec)
    try:
        from tickcall.models.loading import load_engine
    except ImportError as exc:  # pragma: no cover - models.loading is part of the project
        raise ValueError(f"backend {backend!r} needs models.loading: {exc}") from exc
    return load_engine(spec)
