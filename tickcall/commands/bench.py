"""``tickcall bench NAME [options]``: run one benchmark (see ``tickcall.bench``)."""

from __future__ import annotations

import argparse
import importlib

HELP = "benchmarks; each prints a table and writes --json FILE"

BENCHES: dict[str, tuple[str, str]] = {
    "decode": ("tickcall.bench.decode", "parallel heads vs autoregressive JSON on the same weights"),
    "prefix": ("tickcall.bench.prefix", "decide latency vs tool count, cached vs uncached prefix"),
    "heads": ("tickcall.bench.heads", "decode-step time for 1, 2, 4, 8 heads"),
    "serve": ("tickcall.bench.serve", "policy service overhead vs raw ZMQ, batching gain"),
    "service-cost": (
        "tickcall.bench.service_cost",
        "the policy service's CPU per decide at batch 1 and 64 vs a raw ZMQ echo",
    ),
    "loop": ("tickcall.bench.loop", "rate keeper lateness and drift with a no-op policy"),
    "asyncfc": ("tickcall.bench.asyncfc", "async vs sync dispatch with a slow actuator"),
    "constrain": ("tickcall.bench.constrain", "decide latency with and without schema-constrained heads"),
    "legality": ("tickcall.bench.legality", "legal-call sweep: every gymnasium env id and BFCL tool set"),
    "fairness": (
        "tickcall.bench.fairness",
        "victim P99 at 16 Hz beside a client sending maximal legal turns",
    ),
    "anchor": ("tickcall.bench.anchor", "tickcall (ZMQ, HTTP door) vs SimpleTool's rt_server.py, same model"),
    "soak": ("tickcall.bench.soak", "server memory under minutes of mixed hostile traffic"),
    "lm": (
        "tickcall.bench.lm",
        "a language model's decide latency: float32 vs the CPU fast path (bf16/int8)",
    ),
    "fleet": ("tickcall.bench.fleet", "many agents at 10 Hz on 1 and 2 policy service replicas, failover"),
    "cascade": ("tickcall.bench.cascade", "small alone, big alone and the cascade on the goal arena at 16 Hz"),
    "service-kill": (
        "tickcall.bench.service_kill",
        "the loop's outage when the policy service is killed: restart, re-registration, first ok tick",
    ),
    "gpu-check": ("tickcall.bench.gpu_check", "decide P50/P90 on a CUDA GPU, eager vs CUDA graphs (scripts/gpu_check.sh)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="NAME", required=True)
    for name, (module_name, help_text) in BENCHES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # a bench whose optional dependency is missing
            p.set_defaults(_missing=f"{name}: {exc}")
            continue
        module.add_arguments(p)
        p.set_defaults(_run=module.run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "_missing", None):
        raise SystemExit(f"tickcall bench {args._missing}")
    return int(args._run(args) or 0)
