"""A manual clock for tests and replays: ``AsyncFC(clock=ManualClock())``; time moves only by ``advance``."""

from __future__ import annotations

import threading


class ManualClock:
    """Callable returning seconds; starts at ``start`` and moves only when ``advance``/``set`` is called."""

    def __init__(self, start: float = 0.0) -> None:
        self._t = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._t

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a clock never goes back")
        with self._lock:
            self._t += seconds
            return self._t

    def set(self, t: float) -> None:
        with self._lock:
            if t < self._t:
                raise ValueError("a clock never goes back")
            self._t = float(t)
