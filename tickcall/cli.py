"""The ``tickcall`` command line: one sub-command per module in ``tickcall.commands``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their command runs, so ``tickcall --help`` stays fast and a missing
optional dependency (vLLM, llm-compressor) only affects the command that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

# command name -> (module, one-line help). Help is duplicated here so --help imports nothing heavy.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("tickcall.commands.run", "run an env controlled by a model in the real-time loop"),
    "serve": ("tickcall.commands.serve", "run the policy service standalone (ZeroMQ)"),
    "decide": ("tickcall.commands.decide", "decode one call for a turn (demo of the engine)"),
    "bench": ("tickcall.commands.bench", "benchmarks: decode, prefix, heads, serve, loop, asyncfc"),
    "eval": ("tickcall.commands.eval", "evaluate a policy (expert, random, model) on an env"),
    "train": ("tickcall.commands.train", "distil a teacher into a SimpleTool-format student"),
    "record": ("tickcall.commands.record", "record a teacher's decisions on an env as a training dataset"),
    "quantize": ("tickcall.commands.quantize", "quantize a model folder to W4A16 (AWQ recipe)"),
    "bridge": ("tickcall.envs.engine_bridge_cli", "check a game engine against the engine bridge (no model)"),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (what is wrong, where the help is) and exit 2, not the
    usage block followed by the message; sub-parsers (``tickcall bench NAME``) inherit it."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message}; see `{self.prog} --help`\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="tickcall", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = OneLineParser(prog=f"tickcall {name}", description=module.HELP)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    from tickcall.commands.errors import CommandError

    try:
        return int(module.run(args) or 0)
    except CommandError as exc:  # a failure the command explained: one line, no traceback
        print(f"tickcall {name}: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    raise SystemExit(main())
