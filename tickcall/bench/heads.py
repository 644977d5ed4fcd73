"""``tickcall bench heads``: the time of one batched decode step for 1, 2, 4 and 8 heads.

Decoding is memory-bound, so more heads in the batch should cost little more than one
(``overhead_8_vs_1`` = step time at 8 heads / at 1; goal <= 1.3 on CPU). Each measurement decodes
``--steps`` tokens per head from the same cached prompt; the figure is the median step time.
"""

from __future__ import annotations

import argparse
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    from tickcall.bench.workload import add_model_arguments

    add_model_arguments(p)
    p.add_argument("--heads", default="1,2,4,8")
    p.add_argument("--steps", type=int, default=8, help="decode steps per measurement")
    p.add_argument("--repeats", type=int, default=60)


def run(args: argparse.Namespace) -> int:
    import torch

    from tickcall.bench.common import machine, print_table, write_json
    from tickcall.bench.workload import GAME_TOOLS, model_from_args
    from tickcall.models.format import Turn, open_tag
    from tickcall.models.hf_engine import HFEngine
    from tickcall.timing import summary

    path, desc = model_from_args(args)
    engine = HFEngine(path, device="auto")
    lm = engine.lm
    reg = engine.register(GAME_TOOLS)
    suffix = engine.encode(reg.template.suffix(Turn("x=12.5 y=-3.0 hp=87 enemy=3 dist=14.2 bearing=-37")))
    tags_all = [engine.token_ids[open_tag(h)] for h in ("function", "arg1", "arg2", "arg3", "arg4", "arg5",
                                                         "arg6")]
    step_ms, rows = {}, []
    for n in [int(h) for h in args.heads.split(",")]:
        tags = [tags_all[i % len(tags_all)] for i in range(n)]
        times = []
        for r in range(args.repeats + 3):
            group = lm.prefill_group([suffix], reg.state, tags)
            rb = lm.rows([group], args.steps + 1)
            tok = group.logits[0].argmax(-1)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                tok = lm.step(rb, tok).argmax(-1)
            if engine.device == "cuda":
                torch.cuda.synchronize()
            if r >= 3:
                times.append((time.perf_counter() - t0) * 1e3 / args.steps)
        step_ms[n] = summary(times)["p50"]
    base = step_ms[min(step_ms)]
    for n, ms in step_ms.items():
        rows.append([n, ms, ms / base])
    top = max(step_ms)
    overhead = step_ms[top] / base
    print_table(["heads", "step p50 ms", "vs 1 head"], rows,
                title=f"heads: {desc}, {args.steps} steps x {args.repeats} repeats")
    write_json(args.json, {"bench": "heads", "model": desc, "machine": machine(), "threads": torch.get_num_threads(),
                           "step_p50_ms": step_ms, f"overhead_{top}_vs_{min(step_ms)}": overhead,
                           "overhead_8_vs_1": step_ms.get(8, float("nan")) / step_ms.get(1, float("nan"))})
    return 0
