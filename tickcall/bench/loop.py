"""``tickcall bench loop``: how well the control loop keeps its rate, with a no-op policy.

Part 1 (the figure of record): the real loop — a Ray actor ticking the arena in real time, sending every
tick's turn over ZMQ to a policy service actor that runs the no-op engine, dispatching the answers
through the futures layer — for ``--ticks`` ticks (default 2,000) at ``--rate`` Hz (default 16), with
the loop thread under SCHED_FIFO ``--rt-priority`` (10, as ``configs/run.yaml``), then the same again
at normal priority for comparison. It reports tick start lateness (P50/P90/P99/max, ms), cumulative
drift (ms), missed periods, and the outcome counts.

Part 2 (side by side, same process, same simulated work of ``--work-ms`` LO HI ms slept per tick):
three pacers over ``--baseline-ticks`` ticks: ``sleep(period)``, ``sleep(period - elapsed)`` and
absolute deadlines (``tickcall.timing.RateKeeper``). Drift there is how far the last tick started
from its ideal time ``t0 + k * period``.

Writes ``--json FILE`` with top-level ``lateness_ms`` {p50, p90, p99, max} and ``drift_ms`` of part 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import sys
import time
from typing import Any

from tickcall.timing import summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ticks", type=int, default=2000, help="ticks of the real loop (default 2000)")
    parser.add_argument("--rate", type=float, default=16.0, help="Hz (default 16)")
    parser.add_argument("--env", default="tickcall/Arena-v0", help="env the loop drives")
    parser.add_argument("--baseline-ticks", type=int, default=160,
                        help="ticks per naive pacer in part 2 (0: skip part 2)")
    parser.add_argument("--work-ms", type=float, nargs=2, default=(5.0, 15.0), metavar=("LO", "HI"),
                        help="simulated work per tick in part 2, uniform in [LO, HI] ms (slept)")
    parser.add_argument("--skip-loop", action="store_true", help="part 2 only (no Ray)")
    parser.add_argument("--rt-priority", type=int, default=10, metavar="N",
                        help="loop thread under SCHED_FIFO priority N (1-99) as in configs/run.yaml "
                             "(default 10; 0: normal priority)")
    parser.add_argument("--no-compare", action="store_true",
                        help="skip the second run of part 1 at normal priority")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")


# --------------------------------------------------------------------------- part 2: pacers


def _pace(kind: str, ticks: int, rate: float, work_ms: tuple[float, float], seed: int = 0) -> dict[str, Any]:
    """Run ``ticks`` ticks of slept work with one pacer; lateness vs the ideal ``t0 + k*period``."""
    from tickcall.timing import RateKeeper

    rng = random.Random(seed)
    period = 1.0 / rate
    starts: list[float] = []
    skipped = 0
    if kind == "absolute":
        rk = RateKeeper(rate)
        t0 = rk.start()
        while len(starts) < ticks:
            slot = rk.wait()
            starts.append(slot.started - slot.scheduled)
            time.sleep(rng.uniform(*work_ms) / 1e3)
        skipped = rk.skipped_total
    else:
        t0 = time.monotonic()
        for k in range(ticks):
            begin = time.monotonic()
            starts.append(begin - (t0 + k * period))
            time.sleep(rng.uniform(*work_ms) / 1e3)
            if kind == "sleep(period)":
                time.sleep(period)
            else:  # sleep(period - elapsed)
                time.sleep(max(0.0, period - (time.monotonic() - begin)))
    late = [s * 1e3 for s in starts]
    return {"pacer": kind, "ticks": ticks, "lateness_ms": summary(late),
            "drift_ms": round(late[-1] - late[0], 3), "missed_periods": skipped}


# --------------------------------------------------------------------------- part 1: the real loop


def _real_loop(args: argparse.Namespace, rt_priority: int | None = None) -> dict[str, Any]:
    import ray

    from tickcall.agent.actor import start_policy_service
    from tickcall.cluster import init_ray
    from tickcall.control_loop.actor import start_loop_actor
    from tickcall.control_loop.loop import LoopSettings
    from tickcall.control_loop.records import TickRecord
    from tickcall.control_loop.stats import summarize
    from tickcall.world import WorldSpec, world_factory

    started = init_ray(logging_level="ERROR")
    svc = loop = None
    try:
        svc, endpoint = start_policy_service({"backend": "noop"}, "tcp://127.0.0.1:0")
        loop = start_loop_actor(LoopSettings(rate_hz=args.rate, rt_priority=rt_priority),
                                world_factory(WorldSpec(env=args.env, seed=0)), endpoint)
        ref = loop.run.remote(max_ticks=args.ticks)
        last = 0.0
        while not ray.wait([ref], timeout=1.0)[0]:
            if time.monotonic() - last > 10:
                last = time.monotonic()
                st = ray.get(loop.status.remote())
                print(f"  tick {st['ticks']}/{args.ticks}", file=sys.stderr, flush=True)
        res = ray.get(ref)
        records = [TickRecord.from_dict(r) for r in res["records"]]
        rep = summarize(records, args.rate, res["elapsed_s"])
        rep["world"] = res["world"]
        rep["priority"] = res.get("priority", "normal")
        return rep
    finally:
        for a in (loop, svc):
            if a is not None:
                with contextlib.suppress(Exception):
                    ray.get(a.close.remote() if a is loop else a.stop.remote(), timeout=10)
                ray.kill(a, no_restart=True)
        if started:
            ray.shutdown()


def _row(name: str, ticks: int, lat: dict[str, Any], drift: Any, missed: Any, extra: str = "") -> str:
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    return (f"{name:<38} {ticks:>6} {f(lat['p50']):>9} {f(lat['p99']):>9} {f(lat['max']):>9} "
            f"{'-' if drift is None else f'{drift:.3f}':>10} {missed!s:>7}  {extra}")


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.rate <= 60:
        raise SystemExit("--rate must be in 1..60 Hz")
    out: dict[str, Any] = {"bench": "loop", "rate_hz": args.rate, "machine": {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "python": platform.python_version()}}
    lines = [f"{'pacer':<38} {'ticks':>6} {'late p50':>9} {'late p99':>9} {'late max':>9} "
             f"{'drift ms':>10} {'missed':>7}  outcomes"]
    if not args.skip_loop:
        print(f"part 1: the real loop, {args.ticks} ticks at {args.rate:g} Hz "
              f"({args.ticks / args.rate:.0f} s) ...", file=sys.stderr, flush=True)
        prio = args.rt_priority or None
        rep = _real_loop(args, prio)
        out.update({"ticks": rep["ticks"], "priority": rep["priority"], "lateness_ms": rep["lateness_ms"],
                    "drift_ms": rep["drift_ms"], "jitter_ms": rep["jitter_ms"],
                    "achieved_hz": rep["achieved_hz"], "missed_periods": rep["missed_periods"],
                    "outcomes": rep["outcomes"], "deadline_misses": rep["deadline_misses"],
                    "latency_ms": rep["latency_ms"], "stages_ms": rep["stages_ms"]})
        lines.append(_row(f"tickcall loop, {rep['priority']}", rep["ticks"], rep["lateness_ms"],
                          rep["drift_ms"], rep["missed_periods"],
                          " ".join(f"{k}={v}" for k, v in rep["outcomes"].items())))
        if prio is not None and not args.no_compare:
            print("part 1b: the same at normal priority ...", file=sys.stderr, flush=True)
            nrm = _real_loop(args, None)
            out["normal_priority"] = {k: nrm[k] for k in ("priority", "ticks", "lateness_ms", "drift_ms",
                                                          "jitter_ms", "missed_periods", "outcomes",
                                                          "deadline_misses", "latency_ms")}
            lines.append(_row("tickcall loop, normal priority", nrm["ticks"], nrm["lateness_ms"],
                              nrm["drift_ms"], nrm["missed_periods"],
                              " ".join(f"{k}={v}" for k, v in nrm["outcomes"].items())))
    if args.baseline_ticks > 0:
        print(f"part 2: pacers side by side, {args.baseline_ticks} ticks each, work "
              f"{args.work_ms[0]:g}-{args.work_ms[1]:g} ms ...", file=sys.stderr, flush=True)
        base = [_pace(k, args.baseline_ticks, args.rate, tuple(args.work_ms))
                for k in ("sleep(period)", "sleep(period - elapsed)", "absolute")]
        out["baselines"] = {"work_ms": list(args.work_ms), "pacers": base}
        for b in base:
            name = "absolute deadlines (RateKeeper)" if b["pacer"] == "absolute" else b["pacer"]
            lines.append(_row(name, b["ticks"], b["lateness_ms"], b["drift_ms"], b["missed_periods"]))
    print("\n".join(lines))
    if "lateness_ms" in out:
        lat = out["lateness_ms"]
        print(f"\ngoals: lateness p99 <= 2 ms: {'met' if lat['p99'] <= 2 else 'NOT met'} "
              f"({lat['p99']:.3f}); drift <= 1 ms: "
              f"{'met' if abs(out['drift_ms'] or 0) <= 1 else 'NOT met'} ({out['drift_ms']})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
