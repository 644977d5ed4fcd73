"""The control loop's own settings (``LoopSettings``); times in ms unless a name says ``_s``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class LoopSettings:
    """The loop's own knobs (ms unless stated). ``deadline_ms`` None = one period."""

    rate_hz: float = 16.0
    deadline_ms: float | None = None
    in_flight: str = "skip"
    in_flight_timeout_ms: float | None = None
    fallback: str = "hold"
    history: int = 4
    warn_interval_s: float = 5.0
    rt_priority: int | None = None  # SCHED_FIFO priority (1-99) for the loop thread; None: normal

    @property
    def period_s(self) -> float:
        return 1.0 / self.rate_hz

    @property
    def deadline_s(self) -> float:
        return self.period_s if self.deadline_ms is None else self.deadline_ms / 1e3

    @property
    def in_flight_timeout_s(self) -> float:
        if self.in_flight_timeout_ms is None:
            return 4.0 * self.deadline_s
        return max(self.in_flight_timeout_ms / 1e3, self.deadline_s)

    @classmethod
    def from_run_config(cls, cfg: Any) -> LoopSettings:
        return cls(
            rate_hz=cfg.rate_hz,
            deadline_ms=cfg.deadline_ms,
            in_flight=cfg.in_flight,
            in_flight_timeout_ms=cfg.in_flight_timeout_ms,
            fallback=cfg.fallback,
            history=4 if cfg.history is None else cfg.history,
            warn_interval_s=cfg.warn_interval_s,
            rt_priority=cfg.rt_priority,
        )
