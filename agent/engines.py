"""Engine construction for the policy service from a JSON-able spec.

``build_engine({"backend": "noop"})`` gives ``models.engine.NoOpEngine``; every other backend
(``transformers``, ``vllm``, ...) goes through ``models.loading.load_engine(spec)``.

Two optional keys make a *test stand-in* around any engine (never used for real decisions; tests and
benchmarks that use them say so): ``batch_delay_ms`` sleeps that long once per ``decide_batch`` call
(a decode whose cost is per batch, not per request, as a memory-bound decode step is), and
``fail_on_query`` makes the engine raise ``EngineError`` for any turn whose query contains that text;
``load_delay_ms`` sleeps once while building the engine (a slow model load, e.g. across a restart).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

INJECT_KEYS = ("batch_delay_ms", "fail_on_query")
LOAD_DELAY_KEY = "load_delay_ms"


class InjectedEngine:
    """Delegates to ``inner``; adds the fixed per-batch delay and the failure marker (test stand-in)."""

    def __init__(self, inner: Any, batch_delay_ms: float = 0.0, fail_on_query: str | None = None) -> None:
        self.inner = inner
        self.batch_delay_ms = float(batch_delay_ms or 0.0)
        self.fail_on_query = fail_on_query

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def decide_batch(self, requests: Sequence[tuple[str, Any]]) -> list[Any]:
        from tickcall.models.engine import EngineError

        if self.fail_on_query is not None:
            for _handle, turn in requests:
                if self.fail_on_query in turn.query:
                    raise EngineError(f"injected failure: query contains {self.fail_on_query!r}")
        if self.batch_delay_ms > 0:
            time.sleep(self.batch_delay_ms / 1e3)
        return self.inner.decide_batch(requests)

    def decide(self, handle: str, turn: Any) -> Any:
        return self.decide_batch([(handle, turn)])[0]

    def info(self) -> dict[str, Any]:
        info = dict(self.inner.info())
        info["injected"] = {"batch_delay_ms": self.batch_delay_ms, "fail_on_query": self.fail_on_query}
        return info


def build_engine(spec: dict[str, Any] | None) -> Any:
    """An engine from its spec (see module docstring). Raises ValueError for an unusable spec."""
    spec = dict(spec or {"backend": "noop"})
    inject = {k: spec.pop(k) for k in INJECT_KEYS if k in spec}
    load_delay_ms = float(spec.pop(LOAD_DELAY_KEY, 0) or 0)
    if load_delay_ms > 0:
        time.sleep(load_delay_ms / 1e3)
    backend = spec.get("backend", "noop")
    if backend == "noop":
        from tickcall.models.engine import NoOpEngine

        extra = sorted(set(spec) - {"backend", "max_new_tokens"})
        if extra:
            raise ValueError(f"noop engine takes no options {extra}")
        engine: Any = NoOpEngine(max_new_tokens=int(spec.get("max_new_tokens", 32)))
    else:
        try:
            from tickcall.models.loading import load_engine
        except ImportError as exc:  # pragma: no cover - models.loading is part of the project
            raise ValueError(f"backend {backend!r} needs models.loading: {exc}") from exc
        engine = load_engine(spec)
    if inject:
        engine = InjectedEngine(engine, **inject)
    return engine
