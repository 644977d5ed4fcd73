"""``tickcall run``: an env controlled by a model in the real-time loop; writes report.json + plots.

    tickcall run                                  # configs/run.yaml: the arena, the shipped model, CPU
    tickcall run --backend noop --duration 10     # the plumbing only, no model
    tickcall run --env CartPole-v1 --model PATH --rate 16 --episodes 5 --report reports/cp

Options override the config file. Exit status: 0 when the run completed, 2 for a bad config or a
setup problem (the message says what to change).
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "run an env controlled by a model in the real-time loop (report.json + plots in --report DIR)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML run config (default: configs/run.yaml)")
    parser.add_argument("--env", metavar="ID", help="gymnasium id, e.g. tickcall/Arena-v0, CartPole-v1 "
                        "(or engine:tcp://HOST:PORT for an external engine)")
    parser.add_argument("--model", metavar="PATH", help="SimpleTool-format model folder "
                        "(default: the shipped model)")
    parser.add_argument("--backend", choices=("transformers", "vllm", "noop"), help="decoding engine")
    parser.add_argument("--device", help="cpu, cuda, auto (transformers backend)")
    parser.add_argument("--rate", type=float, metavar="HZ", help="decisions per second (1-60)")
    end = parser.add_mutually_exclusive_group()
    end.add_argument("--duration", type=float, metavar="S", help="run this many seconds")
    end.add_argument("--episodes", type=int, metavar="N", help="run until N episodes have finished")
    parser.add_argument("--deadline-ms", type=float, metavar="MS", help="reply budget per tick "
                        "(default: one period)")
    parser.add_argument("--in-flight", choices=("skip", "supersede"),
                        help="what a tick does while the previous request is unanswered")
    parser.add_argument("--fallback", choices=("hold", "default", "noop"),
                        help="what acts when no legal call arrives by the deadline")
    parser.add_argument("--endpoint", metavar="URL", help="use a running policy service "
                        "(tickcall serve) instead of starting one")
    parser.add_argument("--rt-priority", type=int, metavar="N", help="SCHED_FIFO priority of the loop "
                        "thread, 1-99 (0: normal priority; default from the config: 10)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--report", metavar="DIR", help="report folder (default reports/run-<UTC time>/)")
    parser.add_argument("--no-plots", action="store_true", help="write report.json and ticks.jsonl only")
    parser.add_argument("--quiet", action="store_true", help="no live progress line")
    parser.add_argument("--json", action="store_true", help="print report.json to stdout at the end")


def config_from_args(args: argparse.Namespace):
    """The validated RunConfig: the file, then the command-line options."""
    from tickcall.control_loop.config import load_run_config

    overrides = {
        "env": args.env, "model": args.model, "backend": args.backend, "device": args.device,
        "rate_hz": args.rate, "duration_s": args.duration, "episodes": args.episodes,
        "deadline_ms": args.deadline_ms, "in_flight": args.in_flight, "fallback": args.fallback,
        "service.endpoint": args.endpoint, "seed": args.seed, "report_dir": args.report,
        "plots": False if args.no_plots else None, "progress": False if args.quiet else None,
        "rt_priority": args.rt_priority,
    }
    unset: tuple[str, ...] = ()
    if args.rt_priority == 0:
        unset += ("rt_priority",)
        overrides["rt_priority"] = None
    if args.episodes is not None:
        unset += ("duration_s",)
    elif args.duration is not None:
        unset += ("episodes",)
    return load_run_config(args.config, overrides, unset=unset)


def run(args: argparse.Namespace) -> int:
    from tickcall.control_loop.config import ConfigError

    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        print(f"tickcall run: bad configuration: {exc}", file=sys.stderr)
        return 2
    from tickcall.control_loop.world import WorldError
    from tickcall.job import RunError, run_job, summary_lines

    try:
        outcome = run_job(cfg)
    except (RunError, WorldError) as exc:
        print(f"tickcall run: {exc}", file=sys.stderr)
        return 2
    for line in summary_lines(outcome.report):
        print(line, file=sys.stderr)
    folder = outcome.paths.get("report", "")
    print(f"report: {folder}", file=sys.stderr)
    if "plot_error" in outcome.paths:
        print(f"plots were not written: {outcome.paths['plot_error']}", file=sys.stderr)
    if args.json:
        print(json.dumps(outcome.report, indent=2, default=str))
    return 0
