"""History lines of recent and in-flight calls, for the next turn's prompt.

The text is ``models.prompt_text``'s (``status_line``), the one format training rows use too; this
module only reads a ``CallFuture`` into a ``CallStatus``. Examples: ``move(x=3)@f17 running 120ms``,
``fire()@f16 failed: cooldown``, ``scan(r=5)@f15 done: [2, 7]``, ``aim(target="@f15")@f18 waiting @f15``,
``move(x=1)@f12 superseded by @f17``. Ages are whole milliseconds on the ``AsyncFC`` clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tickcall.control_loop.futures.states import CallFuture, CallState
from tickcall.models import prompt_text
from tickcall.models.calls import render_call


def call_status(fut: CallFuture, now: float,
                param_order: Mapping[str, Sequence[str]] | None = None) -> prompt_text.CallStatus:
    """What a history line says about ``fut`` at clock time ``now`` (seconds on the AsyncFC clock)."""
    order = tuple(param_order.get(fut.call.name, ())) if param_order else None
    s = fut.state
    if s is CallState.RUNNING:
        age = now - (fut.started_at or now)
    elif s is CallState.QUEUED:
        age = now - fut.dispatched_at
    else:
        age = 0.0
    return prompt_text.CallStatus(
        call=render_call(fut.call, order or None), id=fut.id, state=s.value, age_ms=age * 1000.0,
        result=fut.result if s is CallState.DONE else None, error=fut.error,
        superseded_by=fut.superseded_by, waiting_on=tuple(fut._waiting_on) if s is CallState.WAITING else ())


def status_line(fut: CallFuture, now: float, param_order: Mapping[str, Sequence[str]] | None = None,
                max_chars: int = prompt_text.DEFAULT_RESULT_CHARS) -> str:
    """One history line for one future (``models.prompt_text.status_line`` of its ``call_status``)."""
    return prompt_text.status_line(call_status(fut, now, param_order), max_chars)
