"""``tickcall bench prefix``: decide latency vs the number of registered tools, cached vs uncached.

Cached: the tools are registered once and every tick prefills only the user turn. Uncached: every
tick prefills the whole prompt (system turn with all tools, then the turn), as a server without a
persistent prefix would. ``flatness`` = cached p50 at the most tools / at the fewest (goal <= 1.15).
"""

from __future__ import annotations

import argparse
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    from tickcall.bench.workload import add_model_arguments

    add_model_arguments(p)
    p.add_argument("--tools", default="2,8,32,64", help="comma-separated tool counts")
    p.add_argument("--ticks", type=int, default=60, help="timed decides per tool count and mode")


def run(args: argparse.Namespace) -> int:
    import torch

    from tickcall.bench.common import machine, print_table, write_json
    from tickcall.bench.workload import forced_head_lengths, model_from_args, synthetic_tools
    from tickcall.models.calls import Call
    from tickcall.models.format import Turn
    from tickcall.models.hf_engine import HFEngine
    from tickcall.timing import summary

    path, desc = model_from_args(args)
    engine = HFEngine(path, device="auto")
    counts = [int(c) for c in args.tools.split(",")]
    turn = Turn("x=12.5 y=-3.0 hp=87 enemy=3 dist=14.2 bearing=-37", ["tool_01(mode=\"a\")"])
    call = Call("tool_00", {"mode": "b", "level": 7.5, "flag": True})
    cached, uncached, prefix_tokens, rows = {}, {}, {}, []
    for n in counts:
        tools = synthetic_tools(n)
        reg = engine.register(tools)
        engine.forced_lengths = forced_head_lengths(engine.encode, call, reg.tools, reg.heads)
        prefix_tokens[n] = reg.prefix_tokens
        c_ms, u_ms = [], []
        for i in range(args.ticks + 3):
            t0 = time.perf_counter()
            engine.decide(reg.handle, turn)
            t1 = time.perf_counter()
            fresh = engine.register(tools)  # the whole prompt prefilled again this tick
            engine.decide(fresh.handle, turn)
            t2 = time.perf_counter()
            engine.unregister(fresh.handle)
            if i >= 3:
                c_ms.append((t1 - t0) * 1e3)
                u_ms.append((t2 - t1) * 1e3)
        engine.unregister(reg.handle)
        cached[n] = summary(c_ms)["p50"]
        uncached[n] = summary(u_ms)["p50"]
        rows.append([n, reg.prefix_tokens, cached[n], uncached[n], uncached[n] / cached[n]])
    engine.forced_lengths = None
    flatness = cached[counts[-1]] / cached[counts[0]]
    print_table(["tools", "prefix tokens", "cached p50 ms", "uncached p50 ms", "uncached/cached"], rows,
                title=f"prefix: {desc}, {args.ticks} ticks each; flatness (cached {counts[-1]} / {counts[0]}) "
                      f"= {flatness:.3f}")
    write_json(args.json, {"bench": "prefix", "model": desc, "machine": machine(), "ticks": args.ticks,
                           "threads": torch.get_num_threads(), "prefix_tokens": prefix_tokens,
                           "cached_p50_ms": cached, "uncached_p50_ms": uncached, "flatness": flatness})
    return 0
