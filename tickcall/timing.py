"""The timing kernel: one fixed-rate clock (``RateKeeper``) and one percentile definition.

Every loop that must tick at a fixed rate (the control loop, the real-time env's physics thread,
real-time evaluation, the benches) uses ``RateKeeper``; every report, bench and evaluation that
prints P50/P90/P99 uses ``percentile`` / ``summary``, so figures from different places compare.

This module is a leaf: it imports nothing of tickcall, so any layer may use it.

Rate keeping
------------
Tick ``k`` is scheduled at ``t0 + k * period`` (seconds on a monotonic clock). The keeper never
sleeps ``period`` or ``period - elapsed`` (both drift: FIELD-NOTES measured +1663 ms and +32 ms over
160 ticks); it sleeps until the absolute time of the next tick. When the caller falls behind by more
than ``max_catchup`` whole periods, the periods that can no longer start on time are *skipped*
(given no slot, counted in ``Slot.skipped`` and ``RateKeeper.skipped_total``) and the keeper resumes
at the newest due tick; with the default ``max_catchup=0`` it never bursts to catch up. A simulation
that must not lose steps (the physics thread) sets ``max_catchup > 0``: up to that many overdue
ticks are released back to back before older ones are skipped.

Invariants:
* slot indices strictly increase; ``index(next slot) = index(previous) + 1 + next.skipped``;
* a slot's start lateness is in ``[0, (max_catchup + 1) * period)`` (``[0, period)`` by default);
* ``slots_issued + skipped_total == index of the last slot + 1``.

Percentiles
-----------
``percentile(values, q)`` is the linear interpolation between closest ranks (Hyndman & Fan type 7,
numpy's default ``method="linear"``): for ``n`` sorted values ``x[0..n-1]`` the position is
``(n - 1) * q / 100`` and the result interpolates between the two values around it. So P50 of an
even count is the mean of the middle two, P0 is the minimum and P100 the maximum.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0))
"""The percentiles every report carries: (key, q in 0..100)."""


# --------------------------------------------------------------------------- percentiles


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (``q`` in 0..100) of ``values`` (any order), linearly interpolated.

    See the module docstring for the definition. Raises ``ValueError`` for no values or ``q``
    outside 0..100.
    """
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in 0..100, got {q!r}")
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(values: Iterable[float | None], *, scale: float = 1.0, digits: int | None = 4) -> dict[str, Any]:
    """``{n, p50, p90, p99, max, mean}`` of the non-None ``values``, each multiplied by ``scale``.

    Units are the caller's (usually ms; ``scale=1e3`` turns seconds into ms). Values are rounded to
    ``digits`` decimals (None: not rounded). With no values ``n`` is 0 and every other key is None.
    """
    xs = sorted(float(v) * scale for v in values if v is not None)
    if not xs:
        return {"n": 0, **{key: None for key, _ in PERCENTILES}, "max": None, "mean": None}

    def r(v: float) -> float:
        return v if digits is None else round(v, digits)

    out: dict[str, Any] = {"n": len(xs)}
    for key, q in PERCENTILES:
        out[key] = r(percentile(xs, q))
    out["max"] = r(xs[-1])
    out["mean"] = r(math.fsum(xs) / len(xs))
    return out


# --------------------------------------------------------------------------- rate keeping


@dataclass(frozen=True)
class Slot:
    """One tick the keeper released.

    ``index``: tick number k (0-based, counting skipped periods). ``scheduled``/``started``: monotonic
    seconds. ``skipped``: periods missed just before this one (indices ``index - skipped .. index - 1``).
    """

    index: int
    scheduled: float
    started: float
    skipped: int

    @property
    def lateness_ms(self) -> float:
        """Start lateness in ms: how long after its scheduled time the tick began."""
        return (self.started - self.scheduled) * 1e3

    @property
    def skipped_indices(self) -> range:
        return range(self.index - self.skipped, self.index)


class RateKeeper:
    """Releases ticks at ``rate_hz`` (ticks per second) on absolute deadlines; see the module docstring.

    ``clock`` and ``sleep`` default to ``time.monotonic`` and ``time.sleep`` (seconds); tests pass a
    fake clock. ``spin_s``: the last seconds before a deadline are spent re-checking the clock
    instead of sleeping once (0 by default: the machine is shared, and ``time.sleep`` on Linux is
    precise to about 0.1 ms). ``max_catchup``: overdue periods released back to back before older
    ones are skipped (0: never burst).
    """

    def __init__(self, rate_hz: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, spin_s: float = 0.0,
                 max_catchup: int = 0) -> None:
        if not (isinstance(rate_hz, int | float) and not isinstance(rate_hz, bool)
                and math.isfinite(rate_hz) and rate_hz > 0):
            raise ValueError(f"rate_hz must be a positive number of ticks per second, got {rate_hz!r}")
        if not isinstance(max_catchup, int) or max_catchup < 0:
            raise ValueError(f"max_catchup must be a whole number >= 0, got {max_catchup!r}")
        self.rate_hz = float(rate_hz)
        self.period = 1.0 / self.rate_hz
        self.max_catchup = max_catchup
        self._clock = clock
        self._sleep = sleep
        self._spin_s = max(0.0, float(spin_s))
        self.t0: float | None = None
        self._next = 0
        self.skipped_total = 0
        self.slots_issued = 0

    # ---------------------------------------------------------------- schedule
    def start(self, t0: float | None = None) -> float:
        """Fix ``t0`` (default: now); tick 0 is due at ``t0``. Returns ``t0``."""
        self.t0 = self._clock() if t0 is None else float(t0)
        self._next = 0
        self.skipped_total = 0
        self.slots_issued = 0
        return self.t0

    def deadline(self, k: int) -> float:
        """Scheduled start of tick ``k`` (monotonic seconds)."""
        if self.t0 is None:
            raise RuntimeError("RateKeeper.start() was not called")
        return self.t0 + k * self.period

    @property
    def next_index(self) -> int:
        return self._next

    def next_time(self) -> float:
        """Scheduled start of the next tick the keeper will release (before any skip)."""
        return self.deadline(self._next)

    # ---------------------------------------------------------------- waiting
    def wait(self) -> Slot:
        """Sleep until the next tick is due and release it, skipping periods already missed."""
        if self.t0 is None:
            self.start()
        target = self.deadline(self._next)
        now = self._clock()
        while now < target:
            remaining = target - now
            if remaining > self._spin_s:
                self._sleep(remaining - self._spin_s)
            now = self._clock()
        return self._release(now)

    def wait_or_stop(self, stop: threading.Event) -> Slot | None:
        """Like ``wait`` for a background thread: sleeps on ``stop`` and returns None once it is set."""
        if self.t0 is None:
            self.start()
        target = self.deadline(self._next)
        now = self._clock()
        while now < target:
            if stop.wait(target - now):
                return None
            now = self._clock()
        return None if stop.is_set() else self._release(now)

    def poll(self) -> Slot | None:
        """Release the next tick if it is due now, without sleeping; None if it is not due yet."""
        if self.t0 is None:
            self.start()
        now = self._clock()
        if now < self.deadline(self._next):
            return None
        return self._release(now)

    def _release(self, now: float) -> Slot:
        k = self._next
        behind = int((now - self.deadline(k)) // self.period)
        skip = max(0, behind - self.max_catchup)
        k += skip
        self.skipped_total += skip
        self.slots_issued += 1
        self._next = k + 1
        return Slot(index=k, scheduled=self.deadline(k), started=now, skipped=skip)
