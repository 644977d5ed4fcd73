"""Wire protocol v1 of the policy service: msgpack maps over ZeroMQ DEALER (client) <-> ROUTER (server).

Full specification: docs/protocol.md; the message types are the structs of ``agent.messages``. This
module holds the constants and error codes, and the one validation path of both sides:
``decode_request`` (server) and ``decode_reply`` (client) turn one payload into one typed message,
checking size, envelope and field types/limits together; ``encode`` writes any message.

Invariants:
* One ZMQ frame per message (the ROUTER adds the peer identity frame); the frame is one msgpack map.
* Every message carries ``v`` (protocol version), ``type`` and ``id``; every reply echoes the ``id`` of
  the request it answers (``None`` when the request's id could not be read) and carries the server
  ``epoch``.
* No pickle, no msgpack extension types: only nil, bool, int, float, str, bin, array, map.
* Decoding never raises anything but :class:`ProtocolError`, whose ``code`` is one of :data:`ERROR_CODES`.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import msgspec
from tickcall.agent.messages import (
    MAX_DEADLINE_MS,
    MAX_ENV_ITEMS,
    MAX_HISTORY_ITEMS,
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_OBS_KEYS,
    MAX_TOOLS,
    PROTOCOL_VERSION,
    REPLY_CLASSES,
    REQUEST_CLASSES,
    Bye,
    Decide,
    ErrorReply,
    Hello,
    Ping,
    Register,
    Reply,
    WireTurn,
)
from tickcall.models.format import Turn
from tickcall.models.prompt_text import DEFAULT_PRECISION, fmt_number, fmt_value

__all__ = [
    "ERROR_CODES",
    "MAX_DEADLINE_MS",
    "MAX_ENV_ITEMS",
    "MAX_HISTORY_ITEMS",
    "MAX_ID_CHARS",
    "MAX_NAME_CHARS",
    "MAX_OBS_KEYS",
    "MAX_TOOLS",
    "PROTOCOL_VERSION",
    "REPLY_TYPES",
    "REQUEST_TYPES",
    "SUPPORTED_VERSIONS",
    "PolicyError",
    "ProtocolError",
    "Request",
    "WireTurn",
    "decode_reply",
    "decode_request",
    "encode",
    "error_reply",
    "format_observation",
    "pack",
    "parse_request",
    "parse_turn",
    "to_turn",
    "turn_to_wire",
    "wire_tools",
]

SUPPORTED_VERSIONS: tuple[int, ...] = (PROTOCOL_VERSION,)

# request types (client -> server) and reply types (server -> client)
REQUEST_TYPES: tuple[str, ...] = tuple(REQUEST_CLASSES)
REPLY_TYPES: tuple[str, ...] = tuple(REPLY_CLASSES)

# error codes, each with its meaning (docs/protocol.md lists the same table)
ERROR_CODES: dict[str, str] = {
    "unknown_type": "the message type is not one of hello, register, decide, ping, bye",
    "version_mismatch": "the protocol version is not supported (see 'versions' in the reply)",
    "malformed": "not a msgpack map, several frames, or a field missing or of the wrong type",
    "oversized": "the message is larger than the server's max_message_bytes",
    "unknown_handle": "the handle was never registered in this server epoch (or was evicted)",
    "illegal_tools": "the tool list cannot be offered to the model (schema, arity, duplicates)",
    "expired": "the deadline passed before decoding started; nothing was decoded",
    "superseded": "a newer decide from the same client and stream replaced this one before decoding",
    "cancelled": "the client said bye before this decide was decoded",
    "engine_failure": "the engine raised while deciding this request",
    "too_long": "the turn (decide) or tool prefix (register) has more tokens than the server allows",
    "over_quota": "the client has too many queued streams or bytes, or the server has no room for its tools",
}

Request = Hello | Register | Decide | Ping | Bye


class ProtocolError(Exception):
    """A request that cannot be served: ``code`` (from ERROR_CODES) and a human-readable message."""

    def __init__(self, code: str, message: str, msg_id: Any = None, extra: dict[str, Any] | None = None):
        assert code in ERROR_CODES, code
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.msg_id = msg_id
        self.extra = extra or {}


class PolicyError(RuntimeError):
    """The service answered a blocking request (hello, register, ping) with an error (a client's view)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# --------------------------------------------------------------------------- encoding

_encoder = msgspec.msgpack.Encoder()


def encode(message: msgspec.Struct | Mapping[str, Any]) -> bytes:
    """One message (a struct of ``agent.messages``, or a plain map) as msgpack; str as str, bytes as bin."""
    return _encoder.encode(message)


pack = encode  # the name v1 callers use for plain maps


def error_reply(code: str, message: str, msg_id: Any, epoch: str, **extra: Any) -> ErrorReply:
    """An ``error`` reply; ``extra`` are the "where known" fields (tick, handle, versions, ...)."""
    assert code in ERROR_CODES, code
    return ErrorReply(id=msg_id, epoch=epoch, code=code, message=message, **extra)


# --------------------------------------------------------------------------- decoding


def _no_ext(code: int, data: memoryview) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


class _Envelope(msgspec.Struct):
    """What every message must have, read before its own fields (so the error codes keep their order:
    an unreadable id, then the version, then the type). Types are checked by hand, hence Any."""

    v: Any = None
    type: Any = None
    id: Any = None


_envelope = msgspec.msgpack.Decoder(_Envelope, ext_hook=_no_ext)
_request_decoders = {t: msgspec.msgpack.Decoder(c, ext_hook=_no_ext) for t, c in REQUEST_CLASSES.items()}
_reply_decoders = {t: msgspec.msgpack.Decoder(c, ext_hook=_no_ext) for t, c in REPLY_CLASSES.items()}


# A decide (and a call reply) as tickcall's encoder and every v1 peer that writes the envelope first
# (docs/protocol.md) begins with these bytes after the map header: "v": 1, "type": "decide" ("call").
# Such a payload is decoded straight into its struct, once: the envelope's checks hold by construction
# (v and type are these bytes, unless a later duplicate key changes v, which is checked; the id is
# checked by the struct's own MsgId type). Anything else, or a payload the struct refuses, takes the
# envelope path, which names the error exactly as before.
_FAST_DECIDE = b"\xa1v\x01\xa4type\xa6decide"
_FAST_CALL = b"\xa1v\x01\xa4type\xa4call"


def _fast(payload: bytes, prefix: bytes, decoder: msgspec.msgpack.Decoder) -> Any:
    """The struct when ``payload`` is a map (fixmap, or map16: msgspec writes map16 for a struct of more
    than 15 fields even when defaults are omitted) starting with ``prefix`` that ``decoder`` accepts
    with a supported ``v``; else None (the caller takes the envelope path)."""
    head = payload[:1]
    if head and 0x80 <= head[0] <= 0x8F:
        start = 1
    elif head == b"\xde":
        start = 3
    else:
        return None
    if not payload.startswith(prefix, start):
        return None
    try:
        msg = decoder.decode(payload)
    except Exception:  # the envelope path decodes it again and reports what is wrong
        return None
    return msg if msg.v in SUPPORTED_VERSIONS else None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _read_envelope(payload: bytes, max_bytes: float) -> _Envelope:
    if len(payload) > max_bytes:
        raise ProtocolError("oversized", f"message of {len(payload)} bytes exceeds the limit of {max_bytes}")
    try:
        return _envelope.decode(payload)
    except msgspec.ValidationError as exc:  # valid msgpack, but not a map with string keys
        raise ProtocolError(
            "malformed", f"a message must be a msgpack map with string keys: {exc}"[:300]
        ) from None
    except Exception as exc:  # DecodeError, or the ext hook's ValueError
        raise ProtocolError("malformed", f"not valid msgpack: {type(exc).__name__}: {exc}"[:300]) from None


def _check_envelope(env: _Envelope) -> tuple[str, Any]:
    """``v``, ``type`` and ``id`` of a request; returns (type, id). Raises ProtocolError."""
    msg_id = env.id
    if not (
        (_is_int(msg_id) and -(2**63) <= msg_id < 2**64)
        or (isinstance(msg_id, str) and len(msg_id) <= MAX_ID_CHARS)
    ):
        raise ProtocolError(
            "malformed", f"field 'id' (integer or string of at most {MAX_ID_CHARS} characters) is required"
        )
    if not _is_int(env.v):
        raise ProtocolError("malformed", "field 'v' (protocol version, integer) is required", msg_id)
    if env.v not in SUPPORTED_VERSIONS:
        raise ProtocolError(
            "version_mismatch",
            f"protocol version {env.v} is not supported; this server speaks {list(SUPPORTED_VERSIONS)}",
            msg_id,
            {"versions": list(SUPPORTED_VERSIONS)},
        )
    if not isinstance(env.type, str):
        raise ProtocolError("malformed", "field 'type' (string) is required", msg_id)
    if env.type not in REQUEST_CLASSES:
        raise ProtocolError(
            "unknown_type",
            f"unknown message type {env.type[:64]!r}; requests are {', '.join(REQUEST_TYPES)}",
            msg_id,
        )
    return env.type, msg_id


def _has_timestamp(value: Any) -> bool:
    """True if a msgpack timestamp (decoded as datetime) hides in free-form data such as tool schemas."""
    if isinstance(value, datetime.datetime | datetime.date | datetime.time | datetime.timedelta):
        return True
    if isinstance(value, dict):
        return any(_has_timestamp(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_timestamp(v) for v in value)
    return False


def decode_request(payload: bytes, max_bytes: float) -> Request:
    """One payload -> its typed request: size, envelope, then every field's type and limit.

    Raises ProtocolError: ``oversized``, ``malformed``, ``version_mismatch``, ``unknown_type``, or
    ``illegal_tools`` for more than MAX_TOOLS tools."""
    if len(payload) <= max_bytes:
        req = _fast(payload, _FAST_DECIDE, _request_decoders["decide"])
        if req is not None:
            return req
    mtype, msg_id = _check_envelope(_read_envelope(payload, max_bytes))
    try:
        req = _request_decoders[mtype].decode(payload)
    except msgspec.ValidationError as exc:
        raise ProtocolError("malformed", f"{mtype}: {exc}"[:300], msg_id) from None
    except Exception as exc:
        raise ProtocolError(
            "malformed", f"not valid msgpack: {type(exc).__name__}: {exc}"[:300], msg_id
        ) from None
    if (
        isinstance(req, Hello)
        and req.versions is not None
        and not set(req.versions) & set(SUPPORTED_VERSIONS)
    ):
        raise ProtocolError(
            "version_mismatch",
            f"client speaks {req.versions[:8]}, server speaks {list(SUPPORTED_VERSIONS)}",
            msg_id,
            {"versions": list(SUPPORTED_VERSIONS)},
        )
    if isinstance(req, Register):
        if len(req.tools) > MAX_TOOLS:
            raise ProtocolError(
                "illegal_tools", f"{len(req.tools)} tools: at most {MAX_TOOLS} per registration", msg_id
            )
        if _has_timestamp(req.tools):
            raise ProtocolError(
                "malformed", "tools must not hold msgpack extension types (timestamps)", msg_id
            )
    return req


def parse_request(msg: Mapping[str, Any]) -> Request:
    """A request given as a plain map (as a v1 peer writes it) -> its typed request, by the same path
    as a payload off the socket. Raises ProtocolError."""
    try:
        payload = msgpack.packb(msg, use_bin_type=True)
    except Exception as exc:  # e.g. non-msgpack values in a hand-made map
        raise ProtocolError("malformed", f"not encodable as msgpack: {exc}"[:300]) from None
    return decode_request(payload, float("inf"))


def decode_reply(payload: bytes) -> Reply:
    """One payload from the server -> its typed reply. Raises ProtocolError (``malformed``) for anything
    that is not a v1 reply (a wrong version, an unknown type, a field of the wrong type)."""
    reply = _fast(payload, _FAST_CALL, _reply_decoders["call"])
    if reply is not None:
        return reply
    env = _read_envelope(payload, float("inf"))
    if env.v not in SUPPORTED_VERSIONS or not _is_int(env.v):
        raise ProtocolError("malformed", f"reply of protocol version {env.v!r}")
    decoder = _reply_decoders.get(env.type) if isinstance(env.type, str) else None
    if decoder is None:
        raise ProtocolError("malformed", f"unknown reply type {str(env.type)[:64]!r}")
    try:
        return decoder.decode(payload)
    except Exception as exc:
        raise ProtocolError("malformed", f"{env.type}: {exc}"[:300], env.id) from None


def parse_turn(v: Any, msg_id: Any = None) -> WireTurn:
    """A wire ``turn`` map -> WireTurn (the same checks as inside a decide). Raises ProtocolError."""
    try:
        return msgspec.convert(v, WireTurn)
    except msgspec.ValidationError as exc:
        raise ProtocolError("malformed", f"turn: {exc}"[:300], msg_id) from None


# --------------------------------------------------------------------------- turns
def format_observation(obs: Mapping[str, Any]) -> str:
    """``name=value`` pairs joined by single spaces, in the sender's key order, in the one observation
    format of ``models.prompt_text`` (the text the students are trained on): strings as they are,
    booleans ``true``/``false``, nil ``null``, integers in decimal, floats signed with 3 decimals
    (``0.25`` -> ``+0.250``; ``-1e-05`` -> ``+0.000``: send a string for other precisions).
    """
    # The same text as ``prompt_text.render_observation(obs)`` (tests/test_bench_service_cost.py checks
    # it value by value), dispatched on the exact type: a wire observation holds only str, bool, int,
    # finite float and nil (``messages.ObsValue``), and render_observation's general checks (numpy
    # scalars, per-name precision, units) cost ~10 us per decide on the service's I/O thread. Any other
    # type (a numpy scalar put in a WireTurn by hand) takes prompt_text's general path.
    parts = []
    for name, value in obs.items():
        kind = type(value)
        if kind is float:
            text = fmt_number(value, DEFAULT_PRECISION, True)
        elif kind is str:
            text = value
        elif kind is int:
            text = str(value)
        elif kind is bool:
            text = "true" if value else "false"
        elif value is None:
            text = "null"
        else:
            text = fmt_value(value)
        parts.append(f"{name}={text}")
    return " ".join(parts)


def to_turn(wire: WireTurn):
    """The engine's ``models.format.Turn``: an observation line goes before the query (own line)."""
    query = wire.query
    if wire.observation:
        line = format_observation(wire.observation)
        query = f"{line}\n{query}" if query else line
    return Turn(query=query, history=wire.history, environment=wire.environment)


def wire_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """Tool dicts go on the wire as given (key order kept); callables are converted with models.tools.
    The parameter count is not checked here: only the engine knows its model's heads (``max_heads``)
    and refuses a tool over them at registration (``illegal_tools``)."""
    if all(isinstance(t, dict) for t in tools):
        return [dict(t) for t in tools]
    from tickcall.models.format import MAX_HEADS_LIMIT
    from tickcall.models.tools import normalize_tools

    return [s.rendered for s in normalize_tools(tools, max_arity=MAX_HEADS_LIMIT)]


def turn_to_wire(turn: Any) -> WireTurn:
    """A ``Turn``, a mapping with the wire keys, or a plain string (the query) -> the wire turn.

    Raises ValueError (msgspec.ValidationError) for a mapping that is not a valid wire turn."""
    if isinstance(turn, WireTurn):
        return turn
    if isinstance(turn, str):
        return WireTurn(query=turn)
    if isinstance(turn, Mapping):
        return msgspec.convert(
            {k: turn[k] for k in ("query", "history", "environment", "observation") if k in turn}, WireTurn
        )
    return WireTurn(
        query=turn.query,
        history=list(turn.history),
        environment=None if turn.environment is None else list(turn.environment),
    )
