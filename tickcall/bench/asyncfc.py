"""``tickcall bench asyncfc``: a fixed-rate loop whose actuator is slow, with async and sync dispatch.

Each tick (absolute deadlines, ``tickcall.timing.RateKeeper``) does ``--work-ms`` of pure-Python
CPU work (a stand-in for decoding), then hands one ``move`` call to the actuator:

* ``sync``: ``fc.dispatch(call).wait()``: the loop waits for the actuator (``--actuator-ms`` sleep);
* ``async``: ``fc.dispatch(call)`` only; the ``latest`` lane applies the newest command;
* ``async_cpu_thread``: async, but the actuator *computes* for ``--actuator-ms`` in a thread: it
  holds the GIL and slows the loop's own work;
* ``async_cpu_process``: the same CPU-heavy actuator in a child process (``executor="process"``).

A *miss* is a period that did not get an on-time tick: a tick that ended after its period
(overrun) or a period skipped because the loop was behind. ``achieved_hz`` = ticks / wall seconds.
Keys: ``async.achieved_hz``, ``async.misses``, ``sync.achieved_hz`` (and the rest per mode).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

MODES = ("sync", "async", "async_cpu_thread", "async_cpu_process")
ACT = "tickcall.control_loop.futures.demo_actuators"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hz", type=float, default=16.0, help="loop rate (Hz)")
    parser.add_argument("--seconds", type=float, default=5.0, help="run time per mode (s)")
    parser.add_argument("--actuator-ms", type=float, default=150.0, help="time the actuator takes per call (ms)")
    parser.add_argument("--work-ms", type=float, default=20.0,
                        help="pure-Python CPU work per tick standing in for decoding (ms; default: the "
                             "~20 ms P50 decide latency of the small student model in FIELD-NOTES)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")


def measure(mode: str, hz: float = 16.0, seconds: float = 5.0, actuator_ms: float = 150.0,
            work_ms: float = 20.0) -> dict[str, Any]:
    """Run one mode for ``seconds`` and return its figures (ms unless named otherwise)."""
    from tickcall.control_loop.futures import AsyncFC, Lane
    from tickcall.control_loop.futures.demo_actuators import sleep_actuator, spin, spin_actuator
    from tickcall.models.calls import Call
    from tickcall.timing import RateKeeper, summary

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if mode == "async_cpu_process":
        lane = Lane("move", policy="latest", executor="process")
        actuator: Any = f"{ACT}:spin_actuator"
    else:
        lane = Lane("move", policy="latest" if mode != "sync" else "fifo")
        actuator = spin_actuator if mode == "async_cpu_thread" else sleep_actuator
    fc = AsyncFC([lane], {"move": actuator})
    try:
        if mode == "async_cpu_process":  # the child starts in the background: wait for it before timing
            fc.call(Call("move", {"ms": 1.0}), timeout=30.0)
        keeper = RateKeeper(hz)
        period = keeper.period
        work, lateness, tick_ms = [], [], []
        overruns = 0
        n_ticks = max(1, int(round(seconds * hz)))
        t0 = keeper.start()
        last_slot = None
        for i in range(n_ticks):
            slot = keeper.wait()
            last_slot = slot
            lateness.append(slot.lateness_ms)
            w0 = time.perf_counter()
            spin(work_ms)
            work.append((time.perf_counter() - w0) * 1e3)
            call = Call("move", {"x": i % 7, "ms": actuator_ms})
            fut = fc.dispatch(call, seq=slot.index)
            if mode == "sync":
                fut.wait()
            fc.poll()
            end = time.monotonic()
            tick_ms.append((end - slot.started) * 1e3)
            if end > slot.scheduled + period:
                overruns += 1
        elapsed = time.monotonic() - t0
        fc.settle(timeout_s=actuator_ms / 1000.0 * 4 + 1.0)
        m = fc.metrics()
        periods = (last_slot.index + 1) if last_slot else 0
        return {
            "ticks": n_ticks, "periods": periods, "elapsed_s": round(elapsed, 3),
            "achieved_hz": round(n_ticks / elapsed, 2) if elapsed > 0 else 0.0,
            "misses": overruns + keeper.skipped_total, "overruns": overruns, "skipped": keeper.skipped_total,
            "work_ms": summary(work), "tick_ms": summary(tick_ms), "lateness_ms": summary(lateness),
            "dispatch_us": m["dispatch_us"], "actuator_run_ms": m["run_ms"],
            "calls": m["states"], "applied_per_s": round(m["states"]["done"] / elapsed, 2) if elapsed else 0.0,
            "in_flight_at_end": m["in_flight"], "ledger_balanced": m["balanced"],
        }
    finally:
        fc.shutdown(timeout_s=actuator_ms / 1000.0 + 0.5)


def measure_dispatch(n: int = 5000) -> dict[str, Any]:
    """``dispatch`` alone: ``n`` calls into a ``latest`` lane whose actuator returns at once, pausing
    1 ms every 10 calls so the worker runs too. Real µs per call (``time.perf_counter``)."""
    from tickcall.control_loop.futures import AsyncFC, Lane
    from tickcall.models.calls import Call
    from tickcall.timing import summary

    fc = AsyncFC([Lane("move", policy="latest")], {"move": lambda call: None})
    times = []
    try:
        for i in range(n):
            call = Call("move", {"x": i})
            t = time.perf_counter()
            fc.dispatch(call)
            times.append((time.perf_counter() - t) * 1e6)
            if i % 10 == 9:
                time.sleep(0.001)
        fc.settle(5.0)
        balanced = fc.ledger.balanced()
    finally:
        fc.shutdown()
    return {"calls": n, "dispatch_us": summary(times), "ledger_balanced": balanced}


def run(args: argparse.Namespace) -> int:
    from tickcall.bench.common import machine, print_table, write_json

    modes = [m.strip() for m in str(args.modes).split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"unknown mode(s) {bad}; choose from {', '.join(MODES)}")
    config = {"hz": args.hz, "seconds": args.seconds, "actuator_ms": args.actuator_ms, "work_ms": args.work_ms}
    results: dict[str, Any] = {"bench": "asyncfc", "config": config, "machine": machine()}
    for mode in modes:
        results[mode] = measure(mode, args.hz, args.seconds, args.actuator_ms, args.work_ms)
    rows = []
    for mode in modes:
        r = results[mode]
        rows.append([mode, r["achieved_hz"], r["misses"], r["ticks"], r["work_ms"]["p50"], r["work_ms"]["p99"],
                     r["tick_ms"]["p99"], r["dispatch_us"]["p50"], r["dispatch_us"]["p99"],
                     r["calls"]["done"], r["calls"]["superseded"]])
    print_table(["mode", "achieved Hz", "misses", "ticks", "work p50 ms", "work p99 ms", "tick p99 ms",
                 "dispatch p50 µs", "dispatch p99 µs", "applied", "superseded"], rows,
                title=f"asyncfc: {args.hz:g} Hz loop, {args.work_ms:g} ms work/tick, "
                      f"{args.actuator_ms:g} ms actuator, {args.seconds:g} s per mode")
    results["dispatch_only"] = measure_dispatch()
    d = results["dispatch_only"]["dispatch_us"]
    print(f"dispatch alone ({d['n']} calls, no-op actuator): p50 {d['p50']:.1f} µs, p90 {d['p90']:.1f} µs, "
          f"p99 {d['p99']:.1f} µs, max {d['max']:.1f} µs")
    write_json(args.json, results)
    return 0
