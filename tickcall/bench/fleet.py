"""``tickcall bench fleet``: many agents on one or two policy service replicas, each cell a real run.

Every cell is one ``tickcall run`` of a crowd, through the command's own code path
(``tickcall.job.run_job`` with a ``RunConfig``: real Ray actors for the service(s) and the crowd loop,
real ZeroMQ, the real ``tickcall/CrowdArena-v0`` PettingZoo env), for each agent count of ``--agents``
(default 1, 4, 16, 32, 64) and each replica count of ``--replicas`` (default 1, 2), at ``--rate`` Hz
(default 10) for ``--duration`` s (default 20), the shipped arena student (``--backend``/``--model``
choose another). All cells run in this one process on one Ray.

Per cell, over the ticks after the first ``--warmup`` s (default 2; the warm-up's misses are reported
beside): decisions per second (ok agent-ticks / s: ``rate * ok / loop ticks``, as ``report.json``'s
``decisions_per_s``), the decide round trip P50/P90 (ms, every reply), the tick latency P50/P90 (ms,
observation -> call applied, ok agent-ticks), deadline misses (late + fallback + skipped) and their
share of the agent-ticks, and where the time goes: the service's stage times (queue, engine = the
whole batch call, server = receipt -> reply), ``service_busy_share`` (the engine time of the window's
distinct batches over the window, per replica: near 1 is a saturated service) and
``outside_service_ms`` (round trip minus the server's time: ZeroMQ, the client, the loop). Over
the whole cell: the mean batch the service(s) decoded (``batch_sizes`` of the service stats) and the
accounting: outcomes sum to agents x loop ticks, each (tick, agent) once; a cell that breaks it fails
the bench (exit 1, after the JSON is written).

Side by side: throughput at the largest agent count / at 1 agent, per replica count (goal >= 4 at 64
agents), and 2 replicas / 1 replica at each agent count. ``goals``: ``zero_miss_32_one_replica`` (32
agents at 10 Hz on one replica, no miss after the warm-up) and ``throughput_64_over_1`` (>= 4), each
met or not.

``--failover``: one more run, ``--failover-agents`` (64) agents on 2 replicas; a third of the way into
the loop (counted from the first batch a replica decodes) replica 0's process is killed (``kill -9`` of
the pid its ``ReplicaSet`` reports). From the replica router's stats (``report.json`` ``crowd.router``,
``agent.replicas.ReplicaPolicy.stats``; times on the shared monotonic clock, ms): kill -> loss seen,
loss -> every moved agent served by the other replica (``move_ms``), so kill -> served; loss -> the
restarted replica back; the agent-ticks that fell back (``replica_down`` among them); the accounting.

Writes ``--json FILE``: ``cells``, ``ratios``, ``goals``, ``failover``, ``machine`` (``lscpu`` model
name, avx512/amx flags, nproc, load averages before and after) and the command.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tickcall.bench.common import machine, print_table, write_json
from tickcall.commands.errors import CommandError, check_writable
from tickcall.timing import summary

ENV = "tickcall/CrowdArena-v0"
MAX_AGENTS = 256  # tickcall/CrowdArena-v0's n_agents limit
MAX_REPLICAS = 8  # more than a bench on one machine can mean
GOAL_ZERO_MISS_AGENTS = 32
GOAL_THROUGHPUT_AGENTS = 64
GOAL_THROUGHPUT_RATIO = 4.0
MISS_OUTCOMES = ("late", "fallback", "skipped")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--agents",
        default="1,4,16,32,64",
        metavar="N,N,...",
        help="agent counts, comma-separated (default 1,4,16,32,64; each 1-256)",
    )
    parser.add_argument(
        "--replicas",
        default="1,2",
        metavar="M,M,...",
        help="policy service replica counts, comma-separated (default 1,2; each 1-8)",
    )
    parser.add_argument("--rate", default="10", metavar="HZ", help="loop rate, Hz (default 10)")
    parser.add_argument("--duration", default="20", metavar="S", help="seconds per cell (default 20)")
    parser.add_argument(
        "--warmup",
        default="2",
        metavar="S",
        help="seconds at the start of each cell left out of the figures (default 2; "
        "its misses are reported beside)",
    )
    parser.add_argument(
        "--backend",
        default="transformers",
        help="decoding engine (default transformers; noop/random need no model)",
    )
    parser.add_argument("--model", metavar="PATH", help="model folder (default: the shipped arena student)")
    parser.add_argument("--env", default=ENV, help=f"multi-agent env (default {ENV})")
    parser.add_argument(
        "--failover",
        action="store_true",
        help="also one run on 2 replicas with replica 0's process killed (kill -9) a third of the way in",
    )
    parser.add_argument(
        "--failover-agents", default="64", metavar="N", help="agents of the --failover run (default 64)"
    )
    parser.add_argument(
        "--report-dir",
        metavar="DIR",
        help="keep each run's report folder under DIR (default: temporary, removed)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")


# --------------------------------------------------------------------------- flags


def _int_list(flag: str, text: str, lo: int, hi: int) -> list[int]:
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(not lo <= v <= hi for v in values):
        raise CommandError(
            f"{flag} {text!r}: give whole numbers {lo}-{hi} separated by commas, e.g. {flag} {lo},{min(hi, 4)}"
        )
    return sorted(set(values))


def _number(flag: str, text: str, lo: float, hi: float) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not lo < value <= hi:  # nan fails too
        raise CommandError(f"{flag} {text!r}: give a number above {lo:g} and at most {hi:g}")
    return value


def check_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flags as numbers, checked before anything starts. Raises CommandError (one line, exit 2)."""
    if "," in str(args.failover_agents):
        raise CommandError(f"--failover-agents {args.failover_agents!r}: give one agent count, e.g. 64")
    plan = {
        "agents": _int_list("--agents", args.agents, 1, MAX_AGENTS),
        "replicas": _int_list("--replicas", args.replicas, 1, MAX_REPLICAS),
        "rate_hz": _number("--rate", args.rate, 0, 100),
        "duration_s": _number("--duration", args.duration, 0, 3600),
        "failover_agents": _int_list("--failover-agents", args.failover_agents, 1, MAX_AGENTS)[0],
    }
    try:
        warmup = float(args.warmup)
    except ValueError:
        warmup = float("nan")
    if not 0 <= warmup < plan["duration_s"]:
        raise CommandError(
            f"--warmup {args.warmup!r}: give seconds from 0 to less than --duration ({plan['duration_s']:g})"
        )
    plan["warmup_s"] = warmup
    from tickcall.world import is_crowd_env

    if not is_crowd_env(args.env):
        raise CommandError(
            f"--env {args.env}: not a multi-agent env; use {ENV} or pettingzoo:MODULE:FUNCTION"
        )
    check_writable("--json", args.json)
    return plan


# --------------------------------------------------------------------------- the machine


def cpu_info() -> dict[str, Any]:
    """``lscpu``'s model name and its avx512*/amx* flags, nproc (CPUs this process may use), loads."""
    model, flags = None, []
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            model = value.strip()
        elif key.strip() == "Flags":
            flags = value.split()
    return {
        "lscpu_model_name": model,
        "avx512_flags": sorted(f for f in flags if f.startswith("avx512")),
        "amx_flags": sorted(f for f in flags if f.startswith("amx")),
        "nproc": len(os.sched_getaffinity(0)),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


# --------------------------------------------------------------------------- one cell


def run_config(
    args: argparse.Namespace, plan: dict[str, Any], agents: int, replicas: int, folder: str
) -> Any:
    """The cell's ``RunConfig``: what ``tickcall run --env ENV --agents N --replicas M --rate R
    --duration S`` builds (every other key at ``tickcall run``'s default)."""
    from tickcall.control_loop.config import from_dict

    data: dict[str, Any] = {
        "env": args.env,
        "agents": agents,
        "replicas": replicas,
        "backend": args.backend,
        "rate_hz": plan["rate_hz"],
        "duration_s": plan["duration_s"],
        "report_dir": folder,
        "plots": False,
        "progress": False,
    }
    if args.model:
        data["model"] = args.model
    return from_dict(data)


def batch_figures(service: dict[str, Any]) -> dict[str, Any]:
    """Mean batch and batch count from the service stats in ``report.json``'s ``service`` block (one
    service: ``stats``; replicas: ``replica_stats``, one per replica, ``{}`` for one that did not answer)."""
    blocks = service.get("replica_stats") or [service.get("stats") or {}]
    sizes: dict[int, int] = {}
    for block in blocks:
        for size, count in (block.get("batch_sizes") or {}).items():
            sizes[int(size)] = sizes.get(int(size), 0) + int(count)
    batches = sum(sizes.values())
    decided = sum(size * count for size, count in sizes.items())
    return {
        "batches": batches,
        "mean_batch": round(decided / batches, 3) if batches else None,
        "batch_sizes": {str(k): sizes[k] for k in sorted(sizes)},
        "per_replica_batches": [sum((b.get("batch_sizes") or {}).values()) for b in blocks],
    }


def _pct(values: list[float]) -> dict[str, Any]:
    s = summary(values)
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()}


def cell_figures(
    records: Sequence[Any],
    report: dict[str, Any],
    agents: int,
    rate_hz: float,
    warmup_s: float,
    replicas: int = 1,
) -> dict[str, Any]:
    """The figures of one run from its records (``TickRecord``) and report (module docstring)."""
    loop_ticks = len({r.tick for r in records})
    outcomes = dict(report["outcomes"])
    keys = {(r.tick, r.agent) for r in records}
    accounted = sum(outcomes.values()) == agents * loop_ticks == len(records) == len(keys)
    cut_ms = warmup_s * 1e3
    win = [r for r in records if (r.scheduled_ms or 0.0) >= cut_ms]
    warm = [r for r in records if (r.scheduled_ms or 0.0) < cut_ms]
    win_ticks = len({r.tick for r in win})
    win_out = {k: sum(1 for r in win if r.outcome == k) for k in outcomes}
    misses = sum(win_out.get(k, 0) for k in MISS_OUTCOMES)
    stages: dict[str, list[float]] = {}
    for r in win:
        for name in ("queue", "engine", "decode", "prefill", "server"):
            v = (r.stages_ms or {}).get(name)
            if isinstance(v, int | float):
                stages.setdefault(name, []).append(float(v))
    lateness = [r.lateness_ms for r in win if r.lateness_ms is not None]
    # the agent-ticks of one batch carry the same engine/prefill/decode times, so distinct triples are the
    # batches; their engine time over the window (per replica) is how busy the service was
    batches = {
        tuple((r.stages_ms or {}).get(k) for k in ("engine", "prefill", "decode"))
        for r in win
        if isinstance((r.stages_ms or {}).get("engine"), int | float)
    }
    window_s = win_ticks / rate_hz if win_ticks else 0.0
    busy = sum(b[0] for b in batches) / 1e3 / (window_s * replicas) if window_s else None
    outside = [
        r.rtt_ms - r.stages_ms["server"]
        for r in win
        if r.rtt_ms is not None and isinstance((r.stages_ms or {}).get("server"), int | float)
    ]
    return {
        "agents": agents,
        "loop_ticks": loop_ticks,
        "agent_ticks": len(records),
        "outcomes": outcomes,
        "accounted": accounted,
        "accounting": f"{sum(outcomes.values())} = {agents} x {loop_ticks}"
        + ("" if accounted else " FAILED"),
        "window_loop_ticks": win_ticks,
        "window_agent_ticks": len(win),
        "window_outcomes": win_out,
        "decisions_per_s": round(rate_hz * win_out.get("ok", 0) / win_ticks, 3) if win_ticks else 0.0,
        # every call the service(s) answered, in time or not: what it decoded, the deadline aside
        "replies_per_s": round(sum(1 for r in win if r.rtt_ms is not None) / window_s, 3)
        if window_s
        else 0.0,
        "decide_ms": _pct([r.rtt_ms for r in win if r.rtt_ms is not None]),
        "tick_latency_ms": _pct(
            [r.latency_ms for r in win if r.outcome == "ok" and r.latency_ms is not None]
        ),
        "deadline_misses": misses,
        "miss_rate": round(misses / len(win), 5) if win else None,
        "errors": win_out.get("error", 0),
        "warmup": {
            "seconds": warmup_s,
            "loop_ticks": len({r.tick for r in warm}),
            "deadline_misses": sum(1 for r in warm if r.outcome in MISS_OUTCOMES),
        },
        "all_ticks": {
            "deadline_misses": report["deadline_misses"],
            "decisions_per_s": report.get("decisions_per_s"),
        },
        "service_stages_ms": {name: _pct(v) for name, v in sorted(stages.items())},
        "loop_lateness_ms": _pct(lateness),
        "service_busy_share": None if busy is None else round(busy, 3),
        "outside_service_ms": _pct(outside),
        "achieved_hz": report.get("achieved_hz"),
        "elapsed_s": report.get("elapsed_s"),
        **batch_figures(report.get("service") or {}),
    }


@contextlib.contextmanager
def capture_replica_sets() -> Iterator[tuple[list[Any], threading.Event]]:
    """Keep each ``ReplicaSet`` that ``run_job`` starts (it holds the actors' pids, for the failover's
    kill). ``run_job`` keeps its set to itself; this wraps its ``start_replica_set`` for the duration."""
    import tickcall.job as job

    sets: list[Any] = []
    started = threading.Event()
    original = job.start_replica_set

    def keep(*a: Any, **kw: Any) -> Any:
        replica_set = original(*a, **kw)
        sets.append(replica_set)
        started.set()
        return replica_set

    job.start_replica_set = keep
    try:
        yield sets, started
    finally:
        job.start_replica_set = original


def one_run(cfg: Any) -> tuple[Any, float]:
    """``run_job(cfg)`` with its messages kept (printed only when it fails); (outcome, wall s)."""
    from tickcall.job import RunError, run_job

    messages = io.StringIO()
    t0 = time.monotonic()
    try:
        outcome = run_job(cfg, stream=messages)
    except RunError as exc:
        sys.stderr.write(messages.getvalue())
        raise CommandError(
            f"a run of {cfg.agents} agents on {cfg.replicas} replica(s) failed: {exc}", code=1
        ) from None
    return outcome, time.monotonic() - t0


# --------------------------------------------------------------------------- failover


class Killer(threading.Thread):
    """Waits for the run's ReplicaSet and its first decoded batch, then ``after_s`` later kills replica
    ``index``'s process (SIGKILL) and notes the time (monotonic ms, the router's clock)."""

    def __init__(self, sets: list[Any], started: threading.Event, after_s: float, index: int = 0) -> None:
        super().__init__(daemon=True, name="fleet-killer")
        self.sets, self.started, self.after_s, self.index = sets, started, after_s, index
        self.killed: dict[str, Any] | None = None
        self.error: str | None = None
        self.cancel = threading.Event()

    def run(self) -> None:
        import ray

        try:
            if not self.started.wait(600):
                self.error = "the replicas never started"
                return
            replica_set = self.sets[-1]
            while not self.cancel.is_set():  # the loop is running once a replica has decoded a batch
                stats = ray.get([h.stats.remote() for h in replica_set.handles], timeout=30)
                if any(s.get("batches", 0) for s in stats):
                    break
                time.sleep(0.05)
            first_batch_ms = time.monotonic() * 1e3
            if self.cancel.wait(self.after_s):
                return
            info = replica_set.infos[self.index]
            kill_ms = time.monotonic() * 1e3
            os.kill(int(info["pid"]), signal.SIGKILL)
            self.killed = {
                "replica": self.index,
                "pid": int(info["pid"]),
                "endpoint": info.get("endpoint"),
                "at_ms": round(kill_ms, 3),
                "after_first_batch_s": round((kill_ms - first_batch_ms) / 1e3, 3),
            }
        except Exception as exc:  # reported in the JSON; the run itself goes on
            self.error = f"{type(exc).__name__}: {exc}"


def _down_reason(reason: str) -> bool:
    return "replica_down" in reason or reason.endswith("then timeout")


def failover_figures(killer: Killer, report: dict[str, Any], records: Sequence[Any]) -> dict[str, Any]:
    """Kill -> loss -> moved agents served -> back, from the router's stats; the ticks that fell back."""
    router = (report.get("crowd") or {}).get("router") or {}
    events = router.get("events") or []
    killed = killer.killed or {}
    kill_ms = killed.get("at_ms")
    lost = next((e for e in events if e.get("lost") and e.get("replica") == killed.get("replica")), None)
    back = next((e for e in events if e.get("back") and lost and e["at_ms"] >= lost["at_ms"]), None)
    move_ms = [float(x) for x in router.get("move_ms") or []]
    kill_to_lost = round(lost["at_ms"] - kill_ms, 3) if lost and kill_ms is not None else None
    served = max(move_ms) if move_ms else None
    fell_back = [r for r in records if r.outcome == "fallback"]
    return {
        "killed": killed or None,
        "kill_error": killer.error,
        "lost_reason": lost.get("lost") if lost else None,
        "moved_agents": lost.get("agents") if lost else None,
        "kill_to_lost_ms": kill_to_lost,
        "lost_to_served_ms": _pct(move_ms),
        "kill_to_all_moved_served_ms": round(kill_to_lost + served, 3)
        if kill_to_lost is not None and served is not None
        else None,
        "lost_to_back_ms": round(back["at_ms"] - lost["at_ms"], 3) if back and lost else None,
        "moves": router.get("moves"),
        "lost": router.get("lost"),
        "back": router.get("back"),
        "down_replies": router.get("down_replies"),
        "fallback_agent_ticks": len(fell_back),
        # in flight on the lost replica, answered by the router at once (``service: timeout replica_down
        # ...`` before the deadline; ``... then timeout`` after it)
        "fallback_down_replies": sum(1 for r in fell_back if _down_reason(r.reason or "")),
        "fallback_ticks": sorted({r.tick for r in fell_back}),
    }


# --------------------------------------------------------------------------- the bench


def _model_name(args: argparse.Namespace) -> str | None:
    from tickcall.control_loop.config import MODEL_FREE

    if args.model:
        return str(args.model)
    return None if args.backend in MODEL_FREE else "(the shipped model for the env)"


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)


def ratios(cells: list[dict[str, Any]], agent_counts: list[int], replica_counts: list[int]) -> dict[str, Any]:
    """Throughput (decisions/s) at the most agents over 1 agent per replica count (and the same for every
    reply, in time or late: ``replies_ratio``); 2 replicas over 1 at each agent count (where both ran)."""
    dps = {(c["replicas"], c["agents"]): c["decisions_per_s"] for c in cells}
    rps = {(c["replicas"], c["agents"]): c.get("replies_per_s") for c in cells}
    most = max(agent_counts)
    out: dict[str, Any] = {"throughput_most_over_1": {}, "replicas_2_over_1": {}}
    if 1 in agent_counts:
        for m in replica_counts:
            out["throughput_most_over_1"][str(m)] = {
                "agents": most,
                "ratio": _ratio(dps.get((m, most)), dps.get((m, 1))),
                "replies_ratio": _ratio(rps.get((m, most)), rps.get((m, 1))),
            }
    if 1 in replica_counts and 2 in replica_counts:
        for n in agent_counts:
            out["replicas_2_over_1"][str(n)] = _ratio(dps.get((2, n)), dps.get((1, n)))
    return out


def goals(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's two goals on this machine, met or not (None: the cells to judge it did not run)."""
    by = {(c["replicas"], c["agents"]): c for c in cells}
    c32 = by.get((1, GOAL_ZERO_MISS_AGENTS))
    zero = {
        "goal": f"{GOAL_ZERO_MISS_AGENTS} agents, one replica, 0 deadline misses after the warm-up",
        "misses": c32["deadline_misses"] if c32 else None,
        "met": (c32["deadline_misses"] == 0) if c32 else None,
    }
    per: dict[str, Any] = {}
    for m in sorted({c["replicas"] for c in cells}):
        hi, lo = by.get((m, GOAL_THROUGHPUT_AGENTS)), by.get((m, 1))
        ratio = _ratio(hi["decisions_per_s"], lo["decisions_per_s"]) if hi and lo else None
        per[str(m)] = {"ratio": ratio, "met": None if ratio is None else ratio >= GOAL_THROUGHPUT_RATIO}
    known = [p["met"] for p in per.values() if p["met"] is not None]
    thr = {
        "goal": f"throughput at {GOAL_THROUGHPUT_AGENTS} agents >= {GOAL_THROUGHPUT_RATIO:g}x at 1 agent",
        "per_replicas": per,
        "met": all(known) if known else None,
    }
    return {"zero_miss_32_one_replica": zero, "throughput_64_over_1": thr}


def print_cells(cells: list[dict[str, Any]]) -> None:
    rows = [
        [
            c["replicas"],
            c["agents"],
            c["decisions_per_s"],
            c["replies_per_s"],
            c["decide_ms"]["p50"],
            c["decide_ms"]["p90"],
            c["tick_latency_ms"]["p50"],
            c["tick_latency_ms"]["p90"],
            c["deadline_misses"],
            f"{100 * (c['miss_rate'] or 0):.1f}%",
            c["mean_batch"],
            (c["service_stages_ms"].get("engine") or {}).get("p50"),
            None if c["service_busy_share"] is None else f"{100 * c['service_busy_share']:.0f}%",
            c["errors"],
            c["accounting"],
        ]
        for c in cells
    ]
    rows = [["-" if v is None else v for v in row] for row in rows]
    print_table(
        [
            "replicas",
            "agents",
            "dec/s",
            "replies/s",
            "decide p50",
            "p90",
            "tick lat p50",
            "p90",
            "misses",
            "miss rate",
            "mean batch",
            "engine p50",
            "busy",
            "errors",
            "outcomes = agents x ticks",
        ],
        rows,
    )


def run(args: argparse.Namespace) -> int:
    import ray

    from tickcall.cluster import init_ray

    plan = check_args(args)
    out: dict[str, Any] = {
        "bench": "fleet",
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "env": args.env,
        "backend": args.backend,
        "model": _model_name(args),
        "rate_hz": plan["rate_hz"],
        "duration_s": plan["duration_s"],
        "warmup_s": plan["warmup_s"],
        "machine": {**machine(), **cpu_info()},
    }
    keep = args.report_dir
    scratch = None if keep else tempfile.TemporaryDirectory(prefix="tickcall-fleet-")
    base = Path(keep or scratch.name)  # type: ignore[union-attr]
    started_ray = init_ray(logging_level="ERROR")
    cells: list[dict[str, Any]] = []
    try:
        for m in plan["replicas"]:
            for n in plan["agents"]:
                print(
                    f"fleet: {n} agents, {m} replica(s), {plan['duration_s']:g} s at {plan['rate_hz']:g} Hz "
                    f"(load {os.getloadavg()[0]:.2f}) ...",
                    file=sys.stderr,
                    flush=True,
                )
                load0 = [round(x, 2) for x in os.getloadavg()]
                outcome, wall = one_run(run_config(args, plan, n, m, str(base / f"r{m}-a{n}")))
                cell = {
                    "replicas": m,
                    **cell_figures(outcome.records, outcome.report, n, plan["rate_hz"], plan["warmup_s"], m),
                }
                cell.update(
                    {
                        "model": outcome.report.get("model"),
                        "wall_s": round(wall, 2),
                        "loadavg_before": load0,
                        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                    }
                )
                router = (outcome.report.get("crowd") or {}).get("router")
                if router:
                    cell["router"] = {k: router.get(k) for k in ("moves", "lost", "back", "down_replies")}
                cells.append(cell)
        out["cells"] = cells
        if cells and cells[0].get("model"):
            out["model"] = cells[0]["model"]
        out["ratios"] = ratios(cells, plan["agents"], plan["replicas"])
        out["goals"] = goals(cells)
        if args.failover:
            n = plan["failover_agents"]
            after = plan["duration_s"] / 3
            print(
                f"fleet: failover, {n} agents on 2 replicas, replica 0 killed {after:.1f} s in ...",
                file=sys.stderr,
                flush=True,
            )
            with capture_replica_sets() as (sets, started):
                killer = Killer(sets, started, after)
                killer.start()
                try:
                    outcome, wall = one_run(run_config(args, plan, n, 2, str(base / f"failover-a{n}")))
                finally:
                    killer.cancel.set()
                    killer.join(60)
            fig = cell_figures(outcome.records, outcome.report, n, plan["rate_hz"], plan["warmup_s"], 2)
            out["failover"] = {
                "agents": n,
                "replicas": 2,
                "kill_after_s": round(after, 3),
                "wall_s": round(wall, 2),
                **failover_figures(killer, outcome.report, outcome.records),
                **{
                    k: fig[k]
                    for k in (
                        "loop_ticks",
                        "agent_ticks",
                        "outcomes",
                        "accounted",
                        "accounting",
                        "decisions_per_s",
                        "deadline_misses",
                        "decide_ms",
                    )
                },
            }
    finally:
        if started_ray:
            ray.shutdown()
        if scratch is not None:
            scratch.cleanup()
    out["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]

    print(
        f"\nfleet: {args.env}, {args.backend} {_model_name(args) or '(no model)'}, {plan['rate_hz']:g} Hz, "
        f"{plan['duration_s']:g} s per cell (first {plan['warmup_s']:g} s left out of the figures); "
        f"{out['machine']['lscpu_model_name']}, nproc {out['machine']['nproc']}, "
        f"load {out['machine']['loadavg']} -> {out['machine']['loadavg_after']}"
    )
    print_cells(cells)
    r = out["ratios"]
    for m, v in r["throughput_most_over_1"].items():
        print(
            f"throughput {v['agents']} agents / 1 agent, {m} replica(s): {_fmt(v['ratio'])} "
            f"(every reply, in time or late: {_fmt(v['replies_ratio'])})"
        )
    if r["replicas_2_over_1"]:
        print(
            "2 replicas / 1 replica: "
            + ", ".join(f"{n} agents {_fmt(v)}" for n, v in r["replicas_2_over_1"].items())
        )
    for name, g in out["goals"].items():
        state = "not run" if g["met"] is None else "met" if g["met"] else "NOT met"
        print(f"goal {name}: {state} ({g['goal']})")
    fo = out.get("failover")
    if fo:
        print(
            f"failover: {fo['agents']} agents, replica {(fo['killed'] or {}).get('replica')} killed "
            f"{fo['kill_after_s']:g} s in: lost {_fmt(fo['kill_to_lost_ms'])} ms after the kill "
            f"({fo['lost_reason']}), {fo['moved_agents']} agents moved, all served "
            f"{_fmt(fo['lost_to_served_ms'].get('max'))} ms after the loss "
            f"({_fmt(fo['kill_to_all_moved_served_ms'])} ms after the kill), back "
            f"{_fmt(fo['lost_to_back_ms'])} ms after the loss; fallback agent-ticks "
            f"{fo['fallback_agent_ticks']} ({fo['fallback_down_replies']} of them the lost replica's in-flight decides); "
            f"outcomes {fo['accounting']}"
            + (f"; kill failed: {fo['kill_error']}" if fo["kill_error"] else "")
        )
    write_json(args.json, out)
    broken = [c for c in cells if not c["accounted"]] + ([fo] if fo and not fo["accounted"] else [])
    if broken:
        raise CommandError(
            f"{len(broken)} run(s) left agent-ticks unaccounted (outcomes != agents x ticks): "
            + ", ".join(c["accounting"] for c in broken),
            code=1,
        )
    if fo and fo["killed"] is None:
        raise CommandError(f"the failover run killed no replica ({fo['kill_error']})", code=1)
    return 0
