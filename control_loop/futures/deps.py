"""Futures as arguments: a whole argument value ``"@f17"`` names the result of call ``f17``.

Only whole values count (``"@f17"``, not ``"near @f17"``), so ordinary strings are never mistaken
for references (the LLMCompiler pitfall of regex over raw text). A call with such inputs waits
(``waiting``) until every one is ``done``, then runs with the values substituted; if one ends any
other way the call is rejected without running (``Dependents``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tickcall.control_loop.futures.states import CallFuture, CallState
from tickcall.models.calls import Call

_REF = re.compile(r"@(f[1-9][0-9]*)")


def future_ref(value: Any) -> str | None:
    """``"@f17"`` -> ``"f17"``; anything else -> None."""
    if isinstance(value, str):
        m = _REF.fullmatch(value.strip())
        if m:
            return m.group(1)
    return None


def references(call: Call) -> list[str]:
    """The future ids a call's arguments name, in argument order, without duplicates."""
    out: list[str] = []
    for value in call.arguments.values():
        ref = future_ref(value)
        if ref is not None and ref not in out:
            out.append(ref)
    return out


def substitute(call: Call, results: Mapping[str, Any]) -> Call:
    """The call with each ``"@fN"`` argument replaced by ``results["fN"]``."""
    args = {}
    for name, value in call.arguments.items():
        ref = future_ref(value)
        args[name] = results[ref] if ref is not None else value
    return Call(call.name, args)


class Dependents:
    """Which waiting calls need which futures' results (``AsyncFC`` calls it with its lock held).

    A call that names ``"@fN"`` inputs is admitted with ``admit``: it is refused when an input is
    unknown, not older than the call, or already ended other than ``done``; inputs already done are
    stored in ``fut._inputs``; the others are waited on. ``release`` hands a finished future's
    outcome to its waiters.
    """

    def __init__(self) -> None:
        self._waiters: dict[str, list[CallFuture]] = {}

    def admit(self, fut: CallFuture, refs: list[str], futures: Mapping[str, CallFuture]) -> str | None:
        """Record ``fut``'s inputs; returns the rejection reason, or None (then ``fut._waiting_on``
        holds the inputs still running: empty means it can enter its lane now)."""
        for ref in refs:
            src = futures.get(ref)
            if src is None or src.n >= fut.n:
                return f"unknown future @{ref}"
            if src.done() and src.state is not CallState.DONE:
                return f"input @{ref} {src.state.value}"
        for ref in refs:
            src = futures[ref]
            if src.state is CallState.DONE:
                fut._inputs[ref] = src.result
            else:
                fut._waiting_on.add(ref)
                self._waiters.setdefault(ref, []).append(fut)
        return None

    def forget(self, fut: CallFuture) -> None:
        """A waiting call ended (cancelled, timed out): stop waiting on its inputs."""
        for ref in fut._waiting_on:
            waiters = self._waiters.get(ref)
            if waiters and fut in waiters:
                waiters.remove(fut)

    def release(self, src: CallFuture) -> list[tuple[CallFuture, bool]]:
        """``src`` ended: its still-waiting dependents, each with True when it now has every input
        (``src`` done, its result stored) or False when it must be rejected (``src`` not done)."""
        out: list[tuple[CallFuture, bool]] = []
        for dep in self._waiters.pop(src.id, []):
            if dep.done():
                continue
            if src.state is CallState.DONE:
                dep._waiting_on.discard(src.id)
                dep._inputs[src.id] = src.result
                if dep._waiting_on:
                    continue
                out.append((dep, True))
            else:
                out.append((dep, False))
        return out
