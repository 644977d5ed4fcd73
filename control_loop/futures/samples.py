"""Bounded samples with nearest-rank percentiles (for dispatch/start/complete times)."""

from __future__ import annotations

import math
from collections import deque


class Samples:
    """Keeps the newest ``maxlen`` values; ``count`` counts all ever added."""

    def __init__(self, maxlen: int = 4096) -> None:
        self._values: deque[float] = deque(maxlen=maxlen)
        self.count = 0
        self.max = 0.0

    def add(self, value: float) -> None:
        self._values.append(value)
        self.count += 1
        if value > self.max:
            self.max = value

    def percentile(self, p: float) -> float | None:
        if not self._values:
            return None
        ordered = sorted(self._values)
        rank = max(1, math.ceil(p / 100.0 * len(ordered)))
        return ordered[rank - 1]

    def summary(self, scale: float = 1.0, digits: int = 3) -> dict[str, float | int | None]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v * scale, digits)

        return {"n": self.count, "p50": r(self.percentile(50)), "p90": r(self.percentile(90)),
                "p99": r(self.percentile(99)), "max": r(self.max) if self.count else None}
