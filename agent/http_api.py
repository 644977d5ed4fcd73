"""SimpleTool's HTTP API as data: the request and response bodies of ``POST /v1/function_call`` and
how they map onto the policy service's messages (``agent.messages``). No sockets, no server here.

The fields are those of SimpleTool's reference servers (``rt_server.py`` and its v1/v2 successor;
read, not copied): request ``messages``, ``tools``, ``environment``, ``history``, ``system``,
``max_tokens``, ``temperature``, ``include_content_head``; response ``success``, ``function``,
``args``, ``heads``, ``content``, ``latency_ms``, ``error``. Two optional request fields are tickcall's
own: ``assembly`` (``strict``/``lenient``; default: the door's) and ``template`` (a name of
``models.format.TEMPLATES``; default: the door's). Unknown request fields are ignored, as there.

Invariants: a request that validates here is one the service can be asked (its limits still apply:
``too_long``, ``illegal_tools``...); ``latency_ms`` is milliseconds; head texts in a response are read
as the servers read them (trimmed, one trailing stop marker cut, ``<|null|>`` shown as ``""``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from tickcall.agent.messages import (
    MAX_ENV_ITEMS,
    MAX_HISTORY_ITEMS,
    MAX_TEMPLATE_CHARS,
    MAX_TOOLS,
    CallReply,
    ErrorReply,
    WireTurn,
)
from tickcall.models.lenient import clean_text

NO_FUNCTION = "No function called"  # the servers' error text when the function head is null

# Service error code -> HTTP status of the door's answer (bodies are FCResponse, success false).
STATUS_OF_CODE = {
    "malformed": 400,
    "illegal_tools": 400,
    "oversized": 413,
    "too_long": 413,
    "over_quota": 429,
    "engine_failure": 500,
    "unknown_handle": 503,
    "expired": 503,
    "superseded": 503,
    "cancelled": 503,
    "unsupported_version": 500,
}


class Message(BaseModel):
    """One chat message; the last ``user`` message is the query (others are ignored, as there)."""

    model_config = ConfigDict(extra="ignore")
    role: str
    content: str


class FCRequest(BaseModel):
    """The body of ``POST /v1/function_call``. ``max_tokens`` and ``temperature`` are validated and,
    as in SimpleTool's servers, not used: heads decode greedily within the engine's per-head budget."""

    model_config = ConfigDict(extra="ignore")
    messages: list[Message]
    tools: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_TOOLS)
    environment: list[str] | None = Field(default=None, max_length=MAX_ENV_ITEMS)
    history: list[str] | None = Field(default=None, max_length=MAX_HISTORY_ITEMS)
    system: str | None = None
    max_tokens: int = Field(default=32, ge=1, le=4096)
    temperature: float = Field(default=0.0, ge=0.0, le=100.0, allow_inf_nan=False)
    include_content_head: bool = False
    # tickcall's own (optional): how heads become a call, and which prompt template
    assembly: Literal["strict", "lenient"] | None = None
    template: str | None = Field(default=None, max_length=MAX_TEMPLATE_CHARS)

    def query(self) -> str:
        """The content of the last ``user`` message ("" when there is none)."""
        return next((m.content for m in reversed(self.messages) if m.role == "user"), "")

    def wire_turn(self) -> WireTurn:
        """The per-tick turn the service decides on (the template cuts history to what it shows)."""
        return WireTurn(query=self.query(), history=list(self.history or []), environment=self.environment)


class FCResponse(BaseModel):
    """The body of every ``/v1/function_call`` answer, success or not."""

    success: bool
    function: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    heads: dict[str, str] = Field(default_factory=dict)
    content: str | None = None
    latency_ms: float = 0.0
    error: str | None = None


def server_heads(heads: dict[str, str]) -> dict[str, str]:
    """Head texts as the servers hand them out: trimmed, one trailing stop marker cut (``<|null|>`` -> "")."""
    return {name: clean_text(text) for name, text in heads.items()}


def response_of(reply: CallReply | ErrorReply, latency_ms: float) -> tuple[int, FCResponse]:
    """(HTTP status, body) for the service's reply to one decide."""
    if isinstance(reply, ErrorReply):
        status = STATUS_OF_CODE.get(reply.code, 500)
        return status, FCResponse(
            success=False, latency_ms=latency_ms, error=f"{reply.code}: {reply.message}"
        )
    heads = server_heads(reply.heads)
    call = reply.call
    if reply.ok:
        assert call is not None  # reply.ok implies a call
        return 200, FCResponse(
            success=True, function=call.name, args=dict(call.arguments), heads=heads, latency_ms=latency_ms
        )
    if call is None and not heads.get("function"):
        error = NO_FUNCTION
    else:
        error = reply.reason or "illegal call"
    return 200, FCResponse(
        success=False,
        function=None if call is None else call.name,
        args={} if call is None else dict(call.arguments),
        heads=heads,
        latency_ms=latency_ms,
        error=error,
    )
