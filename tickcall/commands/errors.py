"""One clear line for a command's failure: ``tickcall <command>: <what is wrong>; <how to fix>``.

A command raises ``CommandError`` for bad input (exit 2) or a failure it understands; ``tickcall.cli.main``
catches it once and prints the single line, so users never see a traceback for their own mistakes.
The helpers below validate flags and paths *before* any work starts (a model load, an evaluation), so a
bad ``--json`` path or ``--repeat 0`` costs nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

BAD_INPUT = 2  # the conventional exit status for a usage error (argparse uses it too)


class CommandError(Exception):
    """A command failure to report as one line, without a traceback; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = BAD_INPUT) -> None:
        super().__init__(message)
        self.code = code


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (library messages sometimes span several, or quote KeyErrors)."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    # a trailing period would read badly before the "; how to fix" part
    return " ".join(str(text).split()).rstrip(".") or type(exc).__name__


def require_at_least(flag: str, value: float | None, low: float) -> None:
    if value is not None and value < low:
        raise CommandError(f"{flag} {value:g} is too small; use {low:g} or more")


def require_between(flag: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:
        raise CommandError(f"{flag} {value:g} is outside {low:g}-{high:g}; pick a value in that range")


def check_writable(flag: str, path: str | None) -> None:
    """Fail now, not after the work, if ``path`` cannot be written (missing folder, no permission)."""
    if not path:
        return
    target = Path(path)
    if target.is_dir():
        raise CommandError(f"{flag} {path} is a folder; give a file path")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise CommandError(f"{flag} {path}: folder {parent} does not exist; create it or pick another path")
    ok = os.access(target, os.W_OK) if target.exists() else os.access(parent, os.W_OK | os.X_OK)
    if not ok:
        raise CommandError(f"{flag} {path} is not writable; pick a path you can write")


def check_env(env_id: str) -> None:
    """An unknown or deprecated env id becomes one line (the world layer's own check, no env is made)."""
    from tickcall.world import check_spec

    try:
        check_spec(env_id)
    except ValueError as exc:
        raise CommandError(f"{one_line(exc)}; check the id (gymnasium ids look like CartPole-v1)") from None


def read_tools_file(path: str) -> Any:
    """The JSON list of tools in ``path``; a missing or non-JSON file is one line."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except OSError as exc:
        raise CommandError(f"cannot read --tools {path}: {exc.strerror or exc}; give an existing JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CommandError(f"--tools {path} is not valid JSON ({exc}); fix it or regenerate it") from None


def model_load_error(model: object, exc: BaseException) -> CommandError:
    """A failure while loading a model folder (corrupt config.json, truncated weights, missing files)."""
    return CommandError(f"cannot load model {model}: {one_line(exc)}; "
                        "check the folder is complete (config.json, model.safetensors, tokenizer)")
