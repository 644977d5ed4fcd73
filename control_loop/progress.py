"""The live progress line and the throttled falling-behind warning.

``format_progress(status)`` renders the loop's ``status()`` snapshot as one line, e.g.::

    tick 480/960  16.0 Hz  lat p50 4.1 p99 9.8 ms  ok 470 late 2 fb 3 err 0 skip 5  ep 3 ret 41.0

``Throttle`` lets a message through at most once per interval (seconds) and counts what it held back.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}"


def format_progress(status: dict[str, Any]) -> str:
    total = status.get("ticks_planned")
    tick = status.get("ticks", 0)
    head = f"tick {tick}/{total}" if total else f"tick {tick}"
    o = status.get("outcomes", {})
    parts = [
        head,
        f"{status.get('achieved_hz', 0.0):.1f} Hz",
        f"lat p50 {_ms(status.get('latency_p50_ms'))} p99 {_ms(status.get('latency_p99_ms'))} ms",
        f"ok {o.get('ok', 0)} late {o.get('late', 0)} fb {o.get('fallback', 0)} "
        f"err {o.get('error', 0)} skip {o.get('skipped', 0)}",
    ]
    eps = status.get("episodes_done")
    if eps is not None:
        last = status.get("last_return")
        parts.append(f"ep {eps}" + (f" ret {last:.1f}" if isinstance(last, int | float) else ""))
    return "  ".join(parts)


class ProgressPrinter:
    """Prints progress lines: rewritten in place on a terminal, one line every ``every_s`` otherwise."""

    def __init__(self, stream: TextIO | None = None, every_s: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s
        self._last = 0.0
        self._width = 0

    def update(self, status: dict[str, Any], force: bool = False) -> None:
        line = format_progress(status)
        if self.tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
            self.stream.flush()
            return
        now = time.monotonic()
        if force or now - self._last >= self.every_s:
            self._last = now
            self.stream.write(line + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (a warning), without breaking the in-place progress line."""
        if self.tty and self._width:
            self.stream.write("\n")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self, status: dict[str, Any] | None = None) -> None:
        if status is not None:
            self.update(status, force=True)
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


class Throttle:
    """Allows one event per ``interval_s``; ``held`` counts the events suppressed since the last one."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: float | None = None
        self.held = 0

    def ready(self) -> bool:
        now = self._clock()
        if self._last is None or now - self._last >= self.interval_s:
            self._last = now
            return True
        self.held += 1
        return False
