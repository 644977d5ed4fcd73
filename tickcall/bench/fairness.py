"""``tickcall bench fairness``: can one client's maximal legal requests hold another's tick past its deadline?

A policy service (this process, ZMQ on loopback, the shipped arena model by default, the serve
defaults: ``max_turn_tokens`` 512) serves two kinds of client:

* the **victim** decides at ``--rate`` Hz (16) with short arena turns, each with a deadline of one
  period, and measures send -> reply (ms); a *miss* is a reply that is not a legal call within the
  period (late, ``expired``, or any error);
* the **attackers** (``--attackers``, 1) send, back to back, the longest turn the service accepts
  (found at start by bisection on the turn's length against ``too_long``), and, first and then every
  ``--oversized-every``-th request, a turn twice as long, which must be refused at once with
  ``too_long`` (its reply time is measured).

The victim runs ``--seconds`` alone, then as long again beside the attackers. Reported: the victim's
P50/P99 in both phases and the ratio of the P99s (goal <= 1.5), its misses (goal 0), the attackers'
decides and their latency, and the oversized turns: how many, all ``too_long``, reply P50/max.
All times in milliseconds, measured with ``time.perf_counter``; figures depend on the machine
(``machine`` in the JSON).
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

from tickcall.bench.common import machine, print_table, write_json
from tickcall.timing import summary

DIRECTIONS = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default="models/shipped/tickcall-arena", help="model folder (transformers backend)"
    )
    p.add_argument("--seconds", type=float, default=10.0, help="length of each phase (alone, attacked), s")
    p.add_argument("--rate", type=float, default=16.0, help="the victim's decide rate, Hz")
    p.add_argument("--attackers", type=int, default=1, help="attacking clients, each one request in flight")
    p.add_argument("--oversized-every", type=int, default=4, help="every Nth attacker request is too long")
    p.add_argument("--max-turn-tokens", type=int, default=512, help="the service's max_turn_tokens")
    p.add_argument(
        "--prefill-chunk-tokens",
        type=int,
        default=None,
        help="the service's prefill_chunk_tokens (0: whole turns; default: the serve default)",
    )
    p.add_argument(
        "--step-tokens", type=int, default=None, help="the service's step_tokens (default: the serve default)"
    )
    p.add_argument("--json", help="write results to this file")


def arena_turn(k: int) -> str:
    """A short arena observation line (the shape of ``tickcall/Arena-v0``'s text), varied by ``k``."""
    return (
        f"tgt={DIRECTIONS[k % 8]} d={1 + (k * 7) % 90 / 10:.1f} aim={DIRECTIONS[(k * 3) % 8]} "
        f"cd={k % 3} dcd={k % 5} tl={60 - (k % 600) / 10:.1f}"
    )


def long_turn(words: int) -> str:
    """A legal-looking but long turn: ``words`` arena-like words."""
    parts: list[str] = []
    k = 0
    while len(parts) < words:
        parts += arena_turn(k).split()
        k += 1
    return " ".join(parts[:words])


def _is_call(reply: Any) -> bool:
    return getattr(reply, "type", None) == "call"


def _code(reply: Any) -> str:
    return getattr(reply, "code", "") or ""


def longest_legal_turn(client: Any, limit_words: int = 4096) -> int:
    """The most words a turn may have before the service answers ``too_long`` (bisection)."""
    lo, hi = 1, limit_words
    while _is_call(client.decide(long_turn(hi), 0, timeout_ms=120_000)):
        lo, hi = hi, hi * 2  # the budget is larger than guessed
    while hi - lo > 1:
        mid = (lo + hi) // 2
        reply = client.decide(long_turn(mid), 0, timeout_ms=120_000)
        if _code(reply) == "too_long":
            hi = mid
        else:
            lo = mid
    return lo


class Attacker(threading.Thread):
    """Back-to-back maximal legal decides, every ``oversized_every``-th one twice too long."""

    def __init__(self, endpoint: str, tools: list[dict[str, Any]], words: int, oversized_every: int) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.tools, self.words, self.every = endpoint, tools, words, oversized_every
        self.stop = threading.Event()
        self.legal_ms: list[float] = []
        self.oversized_ms: list[float] = []
        self.oversized_codes: dict[str, int] = {}
        self.errors: dict[str, int] = {}

    def run(self) -> None:
        from tickcall.agent.client import PolicyClient

        client = PolicyClient(self.endpoint, timeout_ms=120_000, name="bench-attacker")
        try:
            client.register(self.tools)
            big, over = long_turn(self.words), long_turn(self.words * 2)
            k = 0
            while not self.stop.is_set():
                k += 1
                oversized = self.every > 0 and (k - 1) % self.every == 0  # the first one too
                t0 = time.perf_counter()
                reply = client.decide(over if oversized else big, k, stream=f"s{k % 4}")
                ms = (time.perf_counter() - t0) * 1e3
                if oversized:
                    self.oversized_ms.append(ms)
                    self.oversized_codes[_code(reply) or "call"] = (
                        self.oversized_codes.get(_code(reply) or "call", 0) + 1
                    )
                elif _is_call(reply):
                    self.legal_ms.append(ms)
                else:
                    self.errors[_code(reply)] = self.errors.get(_code(reply), 0) + 1
        finally:
            client.close()


def victim(endpoint: str, tools: list[dict[str, Any]], rate_hz: float, seconds: float) -> dict[str, Any]:
    """Decide at ``rate_hz`` for ``seconds`` with a one-period deadline; latencies (ms) and misses."""
    from tickcall.agent.client import PolicyClient

    period = 1.0 / rate_hz
    client = PolicyClient(endpoint, timeout_ms=10_000, name="bench-victim")
    lat: list[float] = []
    stages: dict[str, list[float]] = {"queue": [], "engine": [], "server": [], "batch": []}
    misses: dict[str, int] = {}
    try:
        client.register(tools)
        client.decide(arena_turn(0), 0)  # warm
        start = time.perf_counter()
        k = 0
        while (t_tick := start + k * period) < start + seconds:
            time.sleep(max(0.0, t_tick - time.perf_counter()))
            t0 = time.perf_counter()
            reply = client.decide(arena_turn(k), k, deadline_ms=period * 1e3)
            ms = (time.perf_counter() - t0) * 1e3
            lat.append(ms)
            tm = getattr(reply, "timings_ms", None)
            if tm is not None:  # where the time went, server side (ms)
                for name in ("queue", "engine", "server"):
                    stages[name].append(getattr(tm, name))
                stages["batch"].append(float(getattr(reply, "batch", 0) or 0))
            if not _is_call(reply):
                misses[_code(reply) or "no_call"] = misses.get(_code(reply) or "no_call", 0) + 1
            elif ms > period * 1e3:
                misses["late"] = misses.get("late", 0) + 1
            k += 1
            while start + k * period < time.perf_counter():  # a tick that could not start: a miss
                misses["skipped"] = misses.get("skipped", 0) + 1
                k += 1
    finally:
        client.close()
    return {
        "decides": len(lat),
        "latency_ms": summary(lat),
        "server_ms": {name: summary(v) for name, v in stages.items() if name != "batch" and v},
        "batch_size": summary(stages["batch"]) if stages["batch"] else None,
        "misses": sum(misses.values()),
        "miss_kinds": misses,
    }


def run(args: argparse.Namespace) -> int:
    from tickcall.agent.config import ServeConfig
    from tickcall.agent.engines import build_engine
    from tickcall.agent.server import PolicyServer
    from tickcall.world import WorldSpec, make_world

    world = make_world(WorldSpec(env="tickcall/Arena-v0", seed=0))
    tools = world.tools
    world.close()
    spec = {"backend": "transformers", "model": args.model}
    engine = build_engine(spec)
    sched = {
        k: v
        for k, v in (("prefill_chunk_tokens", args.prefill_chunk_tokens), ("step_tokens", args.step_tokens))
        if v is not None
    }
    config = ServeConfig(engine=spec, bind="tcp://127.0.0.1:0", max_turn_tokens=args.max_turn_tokens, **sched)
    server = PolicyServer(engine, config)
    endpoint = server.start()
    try:
        from tickcall.agent.client import PolicyClient

        probe = PolicyClient(endpoint, timeout_ms=120_000, name="bench-probe")
        probe.register(tools)
        words = longest_legal_turn(probe)
        probe.close()
        print(f"longest legal turn: {words} words (max_turn_tokens {args.max_turn_tokens})", flush=True)
        alone = victim(endpoint, tools, args.rate, args.seconds)
        print(f"victim alone: p99 {alone['latency_ms']['p99']:.1f} ms, misses {alone['misses']}", flush=True)
        attackers = [Attacker(endpoint, tools, words, args.oversized_every) for _ in range(args.attackers)]
        for a in attackers:
            a.start()
        attacked = victim(endpoint, tools, args.rate, args.seconds)
        for a in attackers:
            a.stop.set()
        for a in attackers:
            a.join(timeout=300)
        stats = server.stats()
    finally:
        server.stop()
        engine.close()
    legal = [ms for a in attackers for ms in a.legal_ms]
    over = [ms for a in attackers for ms in a.oversized_ms]
    codes: dict[str, int] = {}
    for a in attackers:
        for c, n in a.oversized_codes.items():
            codes[c] = codes.get(c, 0) + n
    p99a, p99b = alone["latency_ms"]["p99"], attacked["latency_ms"]["p99"]
    ratio = p99b / p99a if p99a else None
    data = {
        "bench": "fairness",
        "model": args.model,
        "machine": machine(),
        "rate_hz": args.rate,
        "seconds": args.seconds,
        "attackers": args.attackers,
        "max_turn_tokens": args.max_turn_tokens,
        "prefill_chunk_tokens": config.prefill_chunk_tokens,
        "step_tokens": config.step_tokens,
        "server": {
            k: stats.get(k, 0)
            for k in ("batches", "prefill_chunks", "chunked_decides", "prefill_chunk_failures")
        }
        | {"chunk_waits": stats.get("chunk_waits", {})},
        "longest_legal_turn_words": words,
        "victim_alone": alone,
        "victim_attacked": attacked,
        "p99_ratio": ratio,
        "goal": {"p99_ratio_max": 1.5, "victim_misses": 0},
        "attacker": {
            "legal_decides": len(legal),
            "legal_latency_ms": summary(legal),
            "errors": {c: n for a in attackers for c, n in a.errors.items()},
        },
        "oversized": {
            "sent": len(over),
            "codes": codes,
            "all_too_long": bool(over) and codes == {"too_long": len(over)},
            "reply_ms": summary(over),
        },
    }
    rows = [
        ["victim alone", alone["decides"], alone["latency_ms"]["p50"], p99a, alone["misses"]],
        ["victim attacked", attacked["decides"], attacked["latency_ms"]["p50"], p99b, attacked["misses"]],
        [
            "attacker legal",
            len(legal),
            data["attacker"]["legal_latency_ms"]["p50"],
            data["attacker"]["legal_latency_ms"]["p99"],
            "-",
        ],
        [
            "attacker oversized",
            len(over),
            data["oversized"]["reply_ms"]["p50"],
            data["oversized"]["reply_ms"]["p99"],
            f"codes {codes}",
        ],
    ]
    print_table(
        ["client", "requests", "p50 ms", "p99 ms", "misses"],
        [["-" if c is None else c for c in r] for r in rows],
        title=f"fairness: victim at {args.rate:g} Hz beside {args.attackers} attacker(s)",
    )
    print(
        f"victim p99 attacked / alone: {ratio:.2f} (goal <= 1.5); victim misses {attacked['misses']} (goal 0)"
        if ratio
        else "victim p99 ratio: n/a"
    )
    write_json(args.json, data)
    return 0
