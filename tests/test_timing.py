"""The timing kernel (``tickcall.timing``): the rate keeper on a simulated and a real clock, and the one
percentile definition every report uses."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from tickcall.control_loop.futures.clock import ManualClock  # simulated seconds: only advance moves it

from tickcall.timing import RateKeeper, percentile, summary

# --------------------------------------------------------------------------- rate keeper


def test_rate_keeper_uses_absolute_deadlines_without_drift():
    clock = ManualClock(5.0)
    rk = RateKeeper(16, clock=clock, sleep=clock.advance)
    t0 = rk.start()
    starts = []
    for _ in range(1000):
        slot = rk.wait()
        starts.append(slot.started)
        clock.advance(0.013)  # work inside the tick must not push the schedule
    assert [round(s - t0, 9) for s in starts[:3]] == [0.0, 0.0625, 0.125]
    assert starts[-1] - t0 == pytest.approx(999 / 16, abs=1e-9)
    assert rk.skipped_total == 0


def test_rate_keeper_skips_and_counts_missed_periods_never_bursts():
    clock = ManualClock(0.0)
    rk = RateKeeper(10, clock=clock, sleep=clock.advance)
    rk.start()
    assert rk.wait().index == 0
    clock.advance(0.35)               # the tick body overran by 3.5 periods
    slot = rk.wait()
    assert (slot.index, slot.skipped) == (3, 2)   # ticks 1 and 2 can no longer start on time
    assert list(slot.skipped_indices) == [1, 2]
    assert slot.lateness_ms == pytest.approx(50.0)
    nxt = rk.wait()                 # no burst: the next tick waits for its own time
    assert (nxt.index, nxt.skipped) == (4, 0)
    assert nxt.started == pytest.approx(0.4)
    assert rk.slots_issued + rk.skipped_total == nxt.index + 1


def test_rate_keeper_catches_up_at_most_max_catchup_periods():
    """A simulation that must not lose steps: overdue ticks run back to back, up to ``max_catchup``."""
    clock = ManualClock(0.0)
    rk = RateKeeper(10, clock=clock, sleep=clock.advance, max_catchup=2)
    rk.start()
    assert rk.wait().index == 0
    clock.advance(0.55)               # 5.5 periods behind: ticks 1..5 are due
    slots = [rk.poll() for _ in range(4)]
    assert [(s.index, s.skipped) for s in slots[:3]] == [(3, 2), (4, 0), (5, 0)]
    assert slots[3] is None         # caught up: tick 6 is not due yet
    assert rk.slots_issued + rk.skipped_total == 6
    with pytest.raises(ValueError, match="max_catchup"):
        RateKeeper(10, max_catchup=-1)


def test_rate_keeper_real_clock_counts_missed_periods():
    """Real time.monotonic / time.sleep: a tick body that sleeps 3.5 periods loses >= 2 periods."""
    rk = RateKeeper(50)
    rk.start()
    first = rk.wait()
    time.sleep(3.5 / 50)
    slot = rk.wait()
    assert slot.skipped >= 2 and slot.index == first.index + 1 + slot.skipped
    assert 0 <= slot.lateness_ms < 20.0 + 1e-6   # lateness always under one period (skips absorb it)


def test_rate_keeper_wait_or_stop_returns_none_once_stopped():
    rk = RateKeeper(2)
    rk.start()
    stop = threading.Event()
    assert rk.wait_or_stop(stop).index == 0
    threading.Timer(0.05, stop.set).start()
    t = time.monotonic()
    assert rk.wait_or_stop(stop) is None     # woken by the stop, not by the 0.5 s period
    assert time.monotonic() - t < 0.4


@pytest.mark.parametrize("rate", [0, -1, float("nan"), "16", True])
def test_rate_keeper_refuses_bad_rates(rate):
    with pytest.raises(ValueError, match="rate_hz"):
        RateKeeper(rate)


# --------------------------------------------------------------------------- percentiles


def test_percentile_is_linear_interpolation_like_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 10, 101):
        xs = rng.normal(size=n).tolist()
        for q in (0, 1, 50, 90, 99, 100):
            assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)), abs=1e-12)
    vals = list(range(100, 0, -1))              # any order
    assert percentile(vals, 50) == pytest.approx(50.5)
    assert percentile(vals, 99) == pytest.approx(99.01)
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="0..100"):
        percentile([1.0], 101)


def test_summary_ignores_none_scales_and_rounds():
    assert summary([]) == {"n": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    s = summary([3.0, None, 1.0, 2.0])
    assert (s["n"], s["p50"], s["max"], s["mean"]) == (3, 2.0, 3.0, 2.0)
    s = summary([0.001, 0.002], scale=1e3, digits=2)
    assert (s["p50"], s["max"], s["mean"]) == (1.5, 2.0, 1.5)
    assert summary([1 / 3], digits=None)["p50"] == 1 / 3
