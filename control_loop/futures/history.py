"""Compact status lines of recent and in-flight calls, for the next turn's prompt.

Examples: ``move(x=3)@f17 running 120ms``, ``fire()@f16 failed: cooldown``,
``scan(r=5)@f15 done: [2, 7]``, ``aim(target="@f15")@f18 waiting @f15``,
``move(x=1)@f12 superseded by @f17``. Ages are whole milliseconds on the ``AsyncFC`` clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from tickcall.control_loop.futures.states import CallFuture, CallState
from tickcall.models.calls import render_call


def short_value(value: Any, max_chars: int = 40) -> str:
    """JSON text of a value (``repr`` if not JSON), cut to ``max_chars`` with an ellipsis."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def status_line(fut: CallFuture, now: float, param_order: Mapping[str, Sequence[str]] | None = None,
                max_chars: int = 40) -> str:
    """One line for one future (see the module docstring for the shapes)."""
    order = tuple(param_order.get(fut.call.name, ())) if param_order else None
    head = f"{render_call(fut.call, order or None)}@{fut.id}"
    s = fut.state
    if s is CallState.RUNNING:
        return f"{head} running {_ms(now - (fut.started_at or now))}"
    if s is CallState.QUEUED:
        return f"{head} queued {_ms(now - fut.dispatched_at)}"
    if s is CallState.WAITING:
        return f"{head} waiting " + " ".join(f"@{r}" for r in sorted(fut._waiting_on, key=_num))
    if s is CallState.DONE:
        return head + " done" + ("" if fut.result is None else ": " + short_value(fut.result, max_chars))
    if s is CallState.SUPERSEDED and fut.superseded_by:
        return f"{head} superseded by @{fut.superseded_by}"
    if s is CallState.TIMED_OUT:
        return f"{head} timed out: {fut.error}" if fut.error else f"{head} timed out"
    label = s.value
    return f"{head} {label}: {_cut(fut.error, max_chars)}" if fut.error else f"{head} {label}"


def _ms(seconds: float) -> str:
    return f"{max(0, round(seconds * 1000))}ms"


def _num(call_id: str) -> int:
    return int(call_id[1:]) if call_id[1:].isdigit() else 0


def _cut(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"
