"""The policy-service messages (protocol v1) as typed ``msgspec`` structs: the source of the wire format.

docs/protocol.md describes these structs; where the two differ, these win and the page is fixed.

Wire rules the structs encode:
* every message is one msgpack map; the envelope keys come first: ``v``, ``type``, ``id`` and, on
  replies, ``epoch`` (``hello`` with id 1 is the 19 bytes shown in docs/protocol.md);
* ``v`` and ``type`` are always written (they are default *factories*, which ``omit_defaults`` never
  drops); optional request fields and the "where known" extras of ``error`` are left out when None,
  as protocol-v1 peers wrote them; every other reply field is always written (nil where it has no
  value), because v1 readers index those keys directly;
* unknown keys are ignored on decoding (room for additions within v1); a known key of the wrong type
  fails decoding, which ``agent.protocol`` reports as ``malformed``.

Units: every ``*_ms`` is milliseconds (float, finite). Limits (``MAX_*``) are part of the types.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Literal

import msgspec

PROTOCOL_VERSION = 1

# field limits (a message larger than max_message_bytes is refused before these apply)
MAX_ID_CHARS = 128
MAX_NAME_CHARS = 256
MAX_TEMPLATE_CHARS = 64
MAX_TOOLS = 256
MAX_HISTORY_ITEMS = 1024
MAX_ENV_ITEMS = 1024
MAX_OBS_KEYS = 1024
MAX_DEADLINE_MS = 3_600_000.0

_MAX_FLOAT = sys.float_info.max
# NaN fails every comparison, so these bounds also refuse NaN (and +-inf).
Finite = Annotated[float, msgspec.Meta(ge=-_MAX_FLOAT, le=_MAX_FLOAT)]
# -2^63 .. 2^64-1 is the whole msgpack integer range, which msgspec's int already is.
MsgId = int | Annotated[str, msgspec.Meta(max_length=MAX_ID_CHARS)]
Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME_CHARS)]
Tick = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
DeadlineMs = Annotated[float, msgspec.Meta(gt=0, le=MAX_DEADLINE_MS)]
ObsValue = str | bool | int | Finite | None


def _const(value: Any) -> Any:
    """A field that is always encoded (``omit_defaults`` keeps values of default factories)."""
    return msgspec.field(default_factory=lambda: value)


class Message(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The shared envelope: protocol version and message type (always encoded, always first)."""

    v: int = _const(PROTOCOL_VERSION)
    type: str


# --------------------------------------------------------------------------- requests


class Request(Message, kw_only=True, omit_defaults=True):
    """A client -> server message; ``id`` is chosen by the client and echoed by the reply."""

    id: MsgId


class Hello(Request, kw_only=True, omit_defaults=True):
    """Optional handshake: learn the server's epoch, engine and limits."""

    type: Literal["hello"] = _const("hello")
    client: Name | None = None
    versions: Annotated[list[int], msgspec.Meta(min_length=1)] | None = None  # None: [1]


class Register(Request, kw_only=True, omit_defaults=True):
    """Register a tool set (JSON-schema tool maps, key order kept); answered ``registered``."""

    type: Literal["register"] = _const("register")
    tools: Annotated[list[dict[str, Any]], msgspec.Meta(min_length=1)]
    system: str | None = None
    template: Annotated[str, msgspec.Meta(max_length=MAX_TEMPLATE_CHARS)] | None = None
    allow_no_call: bool = False  # a null function head is the legal answer "no call this tick"
    assembly: Literal["strict", "lenient"] | None = None  # this tool set's assembly; nil: the engine's


class WireTurn(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The per-tick turn as sent on the wire (``agent.protocol.to_turn`` renders ``observation``).

    Invariant after construction or decoding: ``query`` is a str and ``history`` a list (nil on the
    wire reads as "" and [], as v1 peers may send them)."""

    query: str | None = ""
    history: Annotated[list[str], msgspec.Meta(max_length=MAX_HISTORY_ITEMS)] | None = msgspec.field(
        default_factory=list
    )
    environment: Annotated[list[str], msgspec.Meta(max_length=MAX_ENV_ITEMS)] | None = None
    observation: Annotated[dict[str, ObsValue], msgspec.Meta(max_length=MAX_OBS_KEYS)] | None = None

    def __post_init__(self) -> None:
        if self.query is None:
            self.query = ""
        if self.history is None:
            self.history = []


class Decide(Request, kw_only=True, omit_defaults=True):
    """Ask for one call. ``deadline_ms`` counts from the server's receipt; ``sent_ms`` is echoed."""

    type: Literal["decide"] = _const("decide")
    handle: Name
    tick: Tick
    turn: WireTurn
    deadline_ms: DeadlineMs | None = None
    sent_ms: Finite | None = None
    stream: Name | None = None


class Ping(Request, kw_only=True, omit_defaults=True):
    type: Literal["ping"] = _const("ping")
    sent_ms: Finite | None = None


class Bye(Request, kw_only=True, omit_defaults=True):
    """The client leaves: its queued decides are cancelled, the tool sets only it registered dropped."""

    type: Literal["bye"] = _const("bye")


# --------------------------------------------------------------------------- replies


class Reply(Message, kw_only=True, omit_defaults=True):
    """A server -> client message: the ``id`` of the request it answers (None when that id could not
    be read) and the server's ``epoch`` (a random id per server start)."""

    id: MsgId | None
    epoch: str


class ServerInfo(msgspec.Struct):
    name: str
    version: str


class Limits(msgspec.Struct):
    max_message_bytes: int
    max_batch: int
    max_registrations: int
    max_deadline_ms: float


class Welcome(Reply, kw_only=True, omit_defaults=True):
    type: Literal["welcome"] = _const("welcome")
    versions: list[int]
    server: ServerInfo
    engine: dict[str, Any]
    templates: list[str]
    limits: Limits


class Registered(Reply, kw_only=True, omit_defaults=True):
    type: Literal["registered"] = _const("registered")
    handle: str
    heads: list[str]
    head_count: int
    prefix_tokens: int
    template: str
    tools: list[str]


class WireCall(msgspec.Struct):
    """A decided call: tool name and arguments (keys in the tool's parameter order)."""

    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


class Tokens(msgspec.Struct):
    """``prompt``: suffix tokens prefilled; ``cached``: prefix tokens reused; ``generated``: per head."""

    prompt: int = 0
    cached: int = 0
    generated: dict[str, int] = msgspec.field(default_factory=dict)


class Timings(msgspec.Struct):
    """Server-side stage times (ms): receipt -> decode start (``queue``), the engine's ``prefill``,
    ``decode`` and ``assemble``, the whole batch call (``engine``), receipt -> reply (``server``)."""

    queue: float = 0.0
    prefill: float = 0.0
    decode: float = 0.0
    assemble: float = 0.0
    engine: float = 0.0
    server: float = 0.0


class CallReply(Reply, kw_only=True, omit_defaults=True):
    """The answer to a ``decide``. ``legal`` False: the call must not be applied (``reason`` says why;
    "" when legal). ``call`` is None when no offered tool was named."""

    type: Literal["call"] = _const("call")
    tick: int
    handle: str
    call: WireCall | None
    legal: bool
    reason: str
    heads: dict[str, str]
    tokens: Tokens
    timings_ms: Timings
    batch: int
    sent_ms: float | None
    confidence: float | None = None  # smallest chosen-token probability over the heads; nil: not reported
    # which weights answered (their model folder's name, or the backend): a hot swap changes it between
    # two replies; nil from servers that do not say (additive within v1)
    weights: str | None = None

    @property
    def ok(self) -> bool:
        """A legal call that may be applied."""
        return self.legal and self.call is not None


class Pong(Reply, kw_only=True, omit_defaults=True):
    """``busy_ms``: how long the current engine batch has run (0 idle; growing: a stuck engine)."""

    type: Literal["pong"] = _const("pong")
    sent_ms: float | None
    queued: int
    busy_ms: float


class ByeReply(Reply, kw_only=True, omit_defaults=True):
    type: Literal["bye"] = _const("bye")


class ErrorReply(Reply, kw_only=True, omit_defaults=True):
    """A request that could not be served. ``message`` is the one human-readable text of an error.

    ``code`` is one of ``agent.protocol.ERROR_CODES`` on the wire; the Python client also makes
    ``timeout`` and ``bad_reply`` replies of its own. The extras are present only where known."""

    type: Literal["error"] = _const("error")
    code: str
    message: str
    tick: int | None = None
    handle: str | None = None
    versions: list[int] | None = None
    by_tick: int | None = None
    late_ms: float | None = None


DecideReply = CallReply | ErrorReply

REQUEST_CLASSES: dict[str, type[Request]] = {
    "hello": Hello,
    "register": Register,
    "decide": Decide,
    "ping": Ping,
    "bye": Bye,
}
REPLY_CLASSES: dict[str, type[Reply]] = {
    "welcome": Welcome,
    "registered": Registered,
    "call": CallReply,
    "pong": Pong,
    "bye": ByeReply,
    "error": ErrorReply,
}
