"""A stand-in engine for the service benchmark (never used for real decisions): the no-op engine with a
fixed cost per ``decide_batch`` call, as a memory-bound decode step costs per batch, not per request.

Built in the policy service's process from ``{"backend": "factory", "factory":
"tickcall.bench.standin:slow_noop", "batch_delay_ms": MS}`` (``agent.engines.build_engine``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from tickcall.models.engine import Decision
from tickcall.models.format import Turn
from tickcall.models.stand_ins import NoOpEngine


class SlowNoOpEngine(NoOpEngine):
    """``NoOpEngine`` that sleeps ``batch_delay_ms`` (ms) once per ``decide_batch`` call."""

    def __init__(self, batch_delay_ms: float) -> None:
        super().__init__()
        self.batch_delay_ms = float(batch_delay_ms)

    def decide_batch(self, requests: Sequence[tuple[str, Turn]]) -> list[Decision]:
        time.sleep(self.batch_delay_ms / 1e3)
        return super().decide_batch(requests)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "standin_batch_delay_ms": self.batch_delay_ms}


def slow_noop(batch_delay_ms: float = 0.0) -> SlowNoOpEngine:
    return SlowNoOpEngine(batch_delay_ms)
