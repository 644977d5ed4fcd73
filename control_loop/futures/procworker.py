"""The child side of a ``Lane(executor="process")``: ``python -m control_loop.futures.procworker TARGET``.

``TARGET`` is ``"package.module:attr"``; with ``--factory`` the attribute is called once (no
arguments) to build the actuator. The child answers ``{"ready": true, "pid": N}`` (or
``{"ready": false, "error": "..."}``) and then one reply per request ``{"id", "call"}``:
``{"id", "ok": true, "result"}`` or ``{"id", "ok": false, "error"}``. An ``ActuatorCrash`` ends the
child with exit code 70 (the parent fails the call and restarts the child). The actuator's own
prints go to stderr; the protocol owns the original stdout.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

CRASH_EXIT_CODE = 70


def load_target(target: str) -> Callable[..., Any]:
    """``"pkg.mod:attr"`` -> the object; a clear ``ValueError`` for a malformed path."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"actuator target must look like 'package.module:function', not {target!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{target} is not callable")
    return obj


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    from tickcall.control_loop.futures.states import ActuatorCrash
    from tickcall.control_loop.futures.wire import FrameError, read_frame, write_frame
    from tickcall.models.calls import Call

    args = list(sys.argv[1:] if argv is None else argv)
    factory = "--factory" in args
    targets = [a for a in args if not a.startswith("--")]
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints from the actuator must not corrupt the protocol
    inp = sys.stdin.buffer
    try:
        if len(targets) != 1:
            raise ValueError("usage: procworker TARGET [--factory]")
        fn = load_target(targets[0])
        if factory:
            fn = fn()
    except Exception as exc:
        write_frame(out, {"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return 2
    write_frame(out, {"ready": True, "pid": os.getpid()})
    while True:
        try:
            msg = read_frame(inp)
        except FrameError as exc:
            print(f"procworker: {exc}", file=sys.stderr)
            return 3
        if msg is None:
            return 0
        rid = msg.get("id")
        try:
            result = fn(Call.from_dict(msg["call"]))
            reply: dict[str, Any] = {"id": rid, "ok": True, "result": result}
            write_frame(out, reply)
            continue
        except ActuatorCrash as exc:
            print(f"procworker: actuator crashed: {_reason(exc)}", file=sys.stderr)
            sys.stderr.flush()
            os._exit(CRASH_EXIT_CODE)
        except (TypeError, ValueError, OverflowError) as exc:
            # also reached when the result is not a msgpack value
            reply = {"id": rid, "ok": False, "error": _reason(exc)}
        except Exception as exc:
            reply = {"id": rid, "ok": False, "error": _reason(exc)}
        write_frame(out, reply)


if __name__ == "__main__":
    raise SystemExit(main())
