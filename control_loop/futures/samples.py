"""Bounded samples of durations (dispatch/start/complete times), summarised with ``tickcall.timing``."""

from __future__ import annotations

from collections import deque
from typing import Any

from tickcall.timing import summary


class Samples:
    """Keeps the newest ``maxlen`` values (seconds); ``count`` and ``max`` cover all ever added."""

    def __init__(self, maxlen: int = 4096) -> None:
        self._values: deque[float] = deque(maxlen=maxlen)
        self.count = 0
        self.max = 0.0

    def add(self, value: float) -> None:
        self._values.append(value)
        self.count += 1
        if value > self.max:
            self.max = value

    def summary(self, scale: float = 1.0, digits: int = 3) -> dict[str, Any]:
        """``{n, p50, p90, p99, max, mean}`` times ``scale`` (1e3: ms); percentiles and mean over the
        kept window, ``n`` and ``max`` over every value ever added (None before the first)."""
        out = summary(self._values, scale=scale, digits=digits)
        out["n"] = self.count
        out["max"] = round(self.max * scale, digits) if self.count else None
        return out
