"""The policy client's bookkeeping: kept tool sets, requests in flight, client-made error codes.

Times are milliseconds on this client's clock (``time.monotonic``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tickcall.agent.messages import WireTurn

CLIENT_CODES = {
    "timeout": "no reply within timeout_ms (or the request was lost when the socket was reset)",
    "bad_reply": "the server answered a decide with a reply of another type",
}


class PolicyTimeout(TimeoutError):
    """No reply to a blocking request within its timeout (the socket has been reset)."""


def now_ms() -> float:
    return time.monotonic() * 1e3


@dataclass
class ClientRegistration:
    """A tool set kept by the client. ``handle``/``epoch`` change when it is registered again."""

    tools: list[dict[str, Any]]
    system: str | None
    template: str | None
    allow_no_call: bool = False
    handle: str | None = None
    epoch: str | None = None
    heads: list[str] = field(default_factory=list)
    prefix_tokens: int = 0
    tool_names: list[str] = field(default_factory=list)
    renewals: int = 0
    _pending_id: int | None = field(default=None, repr=False)


@dataclass
class Out:
    """A request in flight (or waiting for a re-registration)."""

    kind: str  # decide | hello | register | ping | bye
    msg_id: int
    t_ms: float  # first send (client clock)
    timeout_at: float  # ms, client clock
    reg: ClientRegistration | None = None
    tick: int | None = None
    turn: WireTurn | None = None
    deadline_ms: float | None = None
    stream: str | None = None
    retried: bool = False
    internal: bool = False
    result: Any = None
    done: bool = False
