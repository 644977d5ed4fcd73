"""How the control loop reads a policy's reply to a tick: apply it, fall back, or count it an error.

Replies are the typed structs of ``tickcall.agent.messages`` (``CallReply`` / ``ErrorReply``), so the
loop reads an error's text from ``ErrorReply.message`` and a call's illegality from
``CallReply.reason``, and the two cannot be confused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from tickcall.agent.messages import CallReply, DecideReply, ErrorReply
from tickcall.control_loop.records import ILLEGAL_PREFIX
from tickcall.models.calls import Call

# Error codes that mean "no decision was made in time" (not a bad answer): counted as a missing
# reply, not as an error. ``timeout`` and ``superseded`` also come from the client itself
# (agent.client.PolicyClient), never from the model.
NO_DECISION_CODES = frozenset({"expired", "superseded", "cancelled", "timeout"})


@dataclass(frozen=True)
class Verdict:
    """What a reply that came in time means for its tick: ``outcome`` ``ok`` (apply ``call``),
    ``error`` (never applied; the fallback acts) or ``fallback`` (no decision; the fallback acts)."""

    outcome: str
    reason: str
    call: Call | None = None


def no_decision(reply: DecideReply) -> bool:
    """An error that only says no decision was made (expired, superseded, cancelled, timed out)."""
    return isinstance(reply, ErrorReply) and reply.code in NO_DECISION_CODES


def is_round_trip(reply: DecideReply) -> bool:
    """False for a client-made timeout: nothing came back, so there is no round trip to record."""
    return not (isinstance(reply, ErrorReply) and reply.code == "timeout")


def judge(reply: DecideReply) -> Verdict:
    """The verdict on a reply that came before its tick's deadline."""
    if isinstance(reply, ErrorReply):
        if reply.code in NO_DECISION_CODES:
            return Verdict("fallback", f"service: {reply.code} {reply.message}".strip())
        return Verdict("error", f"service error {reply.code}: {reply.message}".strip())
    call = None if reply.call is None else Call(name=reply.call.name, arguments=dict(reply.call.arguments))
    if call is None and reply.legal:  # the registration allowed "no call this tick"
        return Verdict("ok", reply.reason or "no call")
    if call is None or not reply.legal:
        return Verdict("error", f"{ILLEGAL_PREFIX} {reply.reason or 'no call'}", call)
    return Verdict("ok", "", call)


def stage_timings(reply: DecideReply) -> dict[str, float]:
    """The server's stage times (ms) of a call; none for an error."""
    if not isinstance(reply, CallReply):
        return {}
    return {str(k): float(v) for k, v in msgspec.structs.asdict(reply.timings_ms).items()}


def call_dict(call: Call | None) -> dict[str, Any] | None:
    """A call as the tick record keeps it (``{name, arguments}``), None without a call."""
    return None if call is None else call.to_dict()
