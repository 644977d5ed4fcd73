"""``tickcall run``: an env controlled by a model in the real-time loop; writes report.json + plots.

    tickcall run                                  # configs/run.yaml: the arena, the shipped model, CPU
    tickcall run --backend noop --duration 10     # the plumbing only, no model
    tickcall run --env CartPole-v1 --model PATH --rate 16 --episodes 5 --report reports/cp
    tickcall run --cascade-model BIG --threshold 0 --report reports/c0   # a big model beside (docs/cascade.md)
    tickcall run --cascade-model BIG --cascade-calibrate reports/c0      # threshold from that run's pairs
    tickcall run --env tickcall/CrowdArena-v0 --agents 16          # 16 NPCs, one loop (docs/multi-agent.md)
    tickcall run --config configs/run-crowd.yaml --replicas 2       # ... decided by two policy replicas

Options override the config file. Exit status: 0 when the run completed, 2 for a bad config or a
setup problem (the message says what to change).
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "run an env controlled by a model in the real-time loop (report.json + plots in --report DIR)"


def _options() -> list:
    from tickcall.control_loop.config import RunConfig
    from tickcall.control_loop.config_fields import cli_options

    return cli_options(RunConfig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``, one flag per ``RunConfig`` field that declares one (help from the field), ``--json``."""
    parser.add_argument("--config", metavar="FILE", help="YAML run config (default: configs/run.yaml)")
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for opt in _options():
        target = parser
        if opt.flag.group is not None:
            if opt.flag.group not in groups:
                groups[opt.flag.group] = parser.add_mutually_exclusive_group()
            target = groups[opt.flag.group]
        help_text = f"{opt.key}: {opt.help}"
        if opt.switch:
            target.add_argument(
                opt.flag.name,
                dest=opt.dest,
                action="store_true",
                help=f"{opt.key} = {str(not opt.default).lower()} (default: {opt.help})",
            )
            continue
        if opt.flag.off is not None:
            help_text += f"; {opt.flag.off} here: unset"
        target.add_argument(
            opt.flag.name,
            dest=opt.dest,
            type=opt.check.arg_type,
            metavar=opt.flag.metavar,
            choices=(opt.check.choices if opt.check.kind == "choice" else None) or None,
            help=help_text,
        )  # a number_or's words are checked with its numbers, not by argparse
    parser.add_argument("--json", action="store_true", help="print report.json to stdout at the end")


def config_from_args(args: argparse.Namespace):
    """The validated RunConfig: the file, then the command-line options (the override map comes from
    the fields' flags: a switch sets the opposite of the field's default, a flag's ``off`` value unsets
    its key, and a flag of a group unsets the group's other keys)."""
    from tickcall.control_loop.config import load_run_config

    options = _options()
    overrides: dict[str, object] = {}
    unset: list[str] = []
    for opt in options:
        value = getattr(args, opt.dest, None)
        if value is None or (opt.switch and value is False):
            continue
        if opt.switch:
            value = not opt.default
        if opt.flag.off is not None and value == opt.flag.off:
            unset.append(opt.key)
            continue
        overrides[opt.key] = value
        unset += [
            o.key for o in options if opt.flag.group and o.flag.group == opt.flag.group and o is not opt
        ]
    from tickcall.control_loop.config import ConfigError

    try:
        return load_run_config(args.config, overrides, unset=tuple(unset))
    except ConfigError as exc:  # a value given on the command line: name its flag, not the config file
        text = str(exc)
        for opt in options:
            if opt.key in overrides and (text.startswith(f"{opt.key}:") or f": {opt.key}:" in text):
                keyed = text[text.index(f"{opt.key}:") :]  # "key: problem", without the file it overrode
                raise ConfigError(f"{opt.flag.name} {overrides[opt.key]}: {keyed}") from None
        raise


def run(args: argparse.Namespace) -> int:
    from tickcall.control_loop.config import ConfigError

    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        print(f"tickcall run: bad configuration: {exc}", file=sys.stderr)
        return 2
    from tickcall.control_loop.world import WorldError
    from tickcall.job import RunError, RunInterrupted, run_job, summary_lines

    try:
        outcome = run_job(cfg)
    except RunInterrupted as exc:
        print(f"tickcall run: {exc}", file=sys.stderr)
        return 130
    except (RunError, WorldError) as exc:
        print(f"tickcall run: {exc}", file=sys.stderr)
        return 2
    for line in summary_lines(outcome.report):
        print(line, file=sys.stderr)
    folder = outcome.paths.get("report", "")
    print(f"report: {folder}", file=sys.stderr)
    if "html" in outcome.paths:
        print(f"page: {outcome.paths['html']}", file=sys.stderr)
    if "plot_error" in outcome.paths:
        print(f"plots were not written: {outcome.paths['plot_error']}", file=sys.stderr)
    if "html_error" in outcome.paths:
        print(f"report.html was not written: {outcome.paths['html_error']}", file=sys.stderr)
    if args.json:
        print(json.dumps(outcome.report, indent=2, default=str))
    return 130 if outcome.interrupted else 0  # 128 + SIGINT, as shells report an interrupted command
