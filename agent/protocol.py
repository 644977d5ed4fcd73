"""Wire protocol v1 of the policy service: msgpack maps over ZeroMQ DEALER (client) <-> ROUTER (server).

Full specification: docs/protocol.md. This module is the single source of the constants, the strict
request parsing used by the server, and the encoding used by both sides.

Invariants:
* One ZMQ frame per message (the ROUTER adds the peer identity frame); the frame is one msgpack map.
* Every message carries ``v`` (protocol version), ``type`` and ``id``; every reply echoes the ``id`` of
  the request it answers (``None`` when the request's id could not be read) and carries the server
  ``epoch``.
* No pickle, no msgpack extension types: only nil, bool, int, float, str, bin, array, map.
* Parsing never raises anything but :class:`ProtocolError`, whose ``code`` is one of :data:`ERROR_CODES`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from tickcall.models.format import Turn

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)

# request types (client -> server) and reply types (server -> client)
REQUEST_TYPES: tuple[str, ...] = ("hello", "register", "decide", "ping", "bye")
REPLY_TYPES: tuple[str, ...] = ("welcome", "registered", "call", "pong", "bye", "error")

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
}

# field limits (a message larger than max_message_bytes is refused before these apply)
MAX_ID_CHARS = 128
MAX_NAME_CHARS = 256
MAX_TOOLS = 256
MAX_HISTORY_ITEMS = 1024
MAX_ENV_ITEMS = 1024
MAX_OBS_KEYS = 1024
MAX_DEADLINE_MS = 3_600_000.0


class ProtocolError(Exception):
    """A request that cannot be served: ``code`` (from ERROR_CODES) and a human-readable message."""

    def __init__(self, code: str, message: str, msg_id: Any = None, extra: dict[str, Any] | None = None):
        assert code in ERROR_CODES, code
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.msg_id = msg_id
        self.extra = extra or {}


# --------------------------------------------------------------------------- encoding


def pack(message: Mapping[str, Any]) -> bytes:
    """Encode one message (a map) as msgpack; str as str, bytes as bin."""
    return msgpack.packb(message, use_bin_type=True)


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def unpack(payload: bytes, max_bytes: int) -> dict[str, Any]:
    """Decode one payload into a map, or raise ProtocolError (oversized / malformed)."""
    if len(payload) > max_bytes:
        raise ProtocolError("oversized", f"message of {len(payload)} bytes exceeds the limit of {max_bytes}")
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True, ext_hook=_no_ext,
                              timestamp=0)
    except Exception as exc:  # msgpack raises several types (ExtraData, ValueError, UnicodeDecodeError...)
        raise ProtocolError("malformed", f"not valid msgpack: {type(exc).__name__}: {exc}"[:300]) from None
    if not isinstance(obj, dict):
        raise ProtocolError("malformed", f"a message must be a msgpack map, got {type(obj).__name__}")
    return obj


# --------------------------------------------------------------------------- field checks


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _str_field(msg: Mapping[str, Any], key: str, *, optional: bool, max_chars: int | None = None,
               msg_id: Any = None) -> str | None:
    v = msg.get(key)
    if v is None:
        if optional:
            return None
        raise ProtocolError("malformed", f"field {key!r} (string) is required", msg_id)
    if not isinstance(v, str):
        raise ProtocolError("malformed", f"field {key!r} must be a string, got {type(v).__name__}", msg_id)
    if max_chars is not None and len(v) > max_chars:
        raise ProtocolError("malformed", f"field {key!r} is longer than {max_chars} characters", msg_id)
    return v


def _str_list(v: Any, key: str, max_items: int, msg_id: Any) -> list[str]:
    if not isinstance(v, list):
        raise ProtocolError("malformed", f"field {key!r} must be an array of strings", msg_id)
    if len(v) > max_items:
        raise ProtocolError("malformed", f"field {key!r} has more than {max_items} items", msg_id)
    for i, item in enumerate(v):
        if not isinstance(item, str):
            raise ProtocolError("malformed", f"{key}[{i}] must be a string, got {type(item).__name__}", msg_id)
    return list(v)


def read_envelope(msg: Mapping[str, Any]) -> tuple[str, Any]:
    """Check ``v``, ``type`` and ``id``; return (type, id). Raises ProtocolError."""
    msg_id = msg.get("id")
    if not ((_is_int(msg_id) and -(2**63) <= msg_id < 2**64)
            or (isinstance(msg_id, str) and len(msg_id) <= MAX_ID_CHARS)):
        raise ProtocolError("malformed", "field 'id' (integer or string of at most "
                            f"{MAX_ID_CHARS} characters) is required")
    version = msg.get("v")
    if not _is_int(version):
        raise ProtocolError("malformed", "field 'v' (protocol version, integer) is required", msg_id)
    if version not in SUPPORTED_VERSIONS:
        raise ProtocolError("version_mismatch", f"protocol version {version} is not supported; this server "
                            f"speaks {list(SUPPORTED_VERSIONS)}", msg_id,
                            {"versions": list(SUPPORTED_VERSIONS)})
    mtype = msg.get("type")
    if not isinstance(mtype, str):
        raise ProtocolError("malformed", "field 'type' (string) is required", msg_id)
    if mtype not in REQUEST_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {mtype[:64]!r}; requests are "
                            f"{', '.join(REQUEST_TYPES)}", msg_id)
    return mtype, msg_id


# --------------------------------------------------------------------------- requests


@dataclass
class Hello:
    msg_id: Any
    client: str | None
    versions: list[int]


@dataclass
class Register:
    msg_id: Any
    tools: list[dict[str, Any]]
    system: str | None
    template: str | None


@dataclass
class WireTurn:
    """The per-tick turn as sent on the wire (see ``to_turn`` for the rendering of ``observation``)."""

    query: str = ""
    history: list[str] = field(default_factory=list)
    environment: list[str] | None = None
    observation: dict[str, Any] | None = None


@dataclass
class Decide:
    msg_id: Any
    handle: str
    tick: int
    turn: WireTurn
    sent_ms: float | None
    deadline_ms: float | None
    stream: str | None


@dataclass
class Ping:
    msg_id: Any
    sent_ms: float | None


@dataclass
class Bye:
    msg_id: Any


Request = Hello | Register | Decide | Ping | Bye


def _opt_num(msg: Mapping[str, Any], key: str, msg_id: Any) -> float | None:
    v = msg.get(key)
    if v is None:
        return None
    if not _is_num(v):
        raise ProtocolError("malformed", f"field {key!r} must be a finite number (ms)", msg_id)
    return float(v)


def parse_turn(v: Any, msg_id: Any) -> WireTurn:
    if not isinstance(v, dict):
        raise ProtocolError("malformed", "field 'turn' (map with query/history/environment/observation) "
                            "is required", msg_id)
    query = v.get("query", "")
    if query is None:
        query = ""
    if not isinstance(query, str):
        raise ProtocolError("malformed", "turn.query must be a string", msg_id)
    history = v.get("history")
    history = [] if history is None else _str_list(history, "turn.history", MAX_HISTORY_ITEMS, msg_id)
    env = v.get("environment")
    env = None if env is None else _str_list(env, "turn.environment", MAX_ENV_ITEMS, msg_id)
    obs = v.get("observation")
    if obs is not None:
        if not isinstance(obs, dict):
            raise ProtocolError("malformed", "turn.observation must be a map of name -> scalar", msg_id)
        if len(obs) > MAX_OBS_KEYS:
            raise ProtocolError("malformed", f"turn.observation has more than {MAX_OBS_KEYS} keys", msg_id)
        for key, val in obs.items():
            if not isinstance(key, str):
                raise ProtocolError("malformed", "turn.observation keys must be strings", msg_id)
            if not (val is None or isinstance(val, str | bool | int) or _is_num(val)):
                raise ProtocolError("malformed", f"turn.observation[{key[:40]!r}] must be a string, "
                                    "number, boolean or nil", msg_id)
    return WireTurn(query=query, history=history, environment=env, observation=obs)


def parse_request(msg: Mapping[str, Any]) -> Request:
    """Validate one decoded message and return its typed request. Raises ProtocolError."""
    mtype, msg_id = read_envelope(msg)
    if mtype == "decide":
        handle = _str_field(msg, "handle", optional=False, max_chars=MAX_NAME_CHARS, msg_id=msg_id)
        tick = msg.get("tick")
        if not (_is_int(tick) and -(2**63) <= tick < 2**63):
            raise ProtocolError("malformed", "field 'tick' (integer) is required", msg_id)
        deadline = _opt_num(msg, "deadline_ms", msg_id)
        if deadline is not None and not 0 < deadline <= MAX_DEADLINE_MS:
            raise ProtocolError("malformed", f"deadline_ms must be in (0, {MAX_DEADLINE_MS:.0f}] ms, or nil",
                                msg_id)
        return Decide(msg_id=msg_id, handle=handle, tick=tick, turn=parse_turn(msg.get("turn"), msg_id),
                      sent_ms=_opt_num(msg, "sent_ms", msg_id), deadline_ms=deadline,
                      stream=_str_field(msg, "stream", optional=True, max_chars=MAX_NAME_CHARS,
                                        msg_id=msg_id))
    if mtype == "hello":
        versions = msg.get("versions")
        if versions is None:
            versions = [PROTOCOL_VERSION]
        if not (isinstance(versions, list) and versions and all(_is_int(x) for x in versions)):
            raise ProtocolError("malformed", "field 'versions' must be a non-empty array of integers", msg_id)
        if not set(versions) & set(SUPPORTED_VERSIONS):
            raise ProtocolError("version_mismatch", f"client speaks {versions[:8]}, server speaks "
                                f"{list(SUPPORTED_VERSIONS)}", msg_id, {"versions": list(SUPPORTED_VERSIONS)})
        return Hello(msg_id=msg_id, client=_str_field(msg, "client", optional=True,
                                                      max_chars=MAX_NAME_CHARS, msg_id=msg_id),
                     versions=versions)
    if mtype == "register":
        tools = msg.get("tools")
        if not isinstance(tools, list) or not tools:
            raise ProtocolError("malformed", "field 'tools' (non-empty array of tool maps) is required", msg_id)
        if len(tools) > MAX_TOOLS:
            raise ProtocolError("illegal_tools", f"{len(tools)} tools: at most {MAX_TOOLS} per registration",
                                msg_id)
        for i, t in enumerate(tools):
            if not isinstance(t, dict):
                raise ProtocolError("malformed", f"tools[{i}] must be a map (JSON-schema tool)", msg_id)
        return Register(msg_id=msg_id, tools=tools,
                        system=_str_field(msg, "system", optional=True, msg_id=msg_id),
                        template=_str_field(msg, "template", optional=True, max_chars=64, msg_id=msg_id))
    if mtype == "ping":
        return Ping(msg_id=msg_id, sent_ms=_opt_num(msg, "sent_ms", msg_id))
    return Bye(msg_id=msg_id)


# --------------------------------------------------------------------------- turns


def format_observation(obs: Mapping[str, Any]) -> str:
    """``name=value`` pairs joined by single spaces, in the sender's key order, in the one observation
    format of ``models.prompt_text`` (the text the students are trained on): strings as they are,
    booleans ``true``/``false``, nil ``null``, integers in decimal, floats signed with 3 decimals
    (``0.25`` -> ``+0.250``; ``-1e-05`` -> ``+0.000``: send a string for other precisions).
    """
    from tickcall.models.prompt_text import render_observation

    return render_observation(obs)


def to_turn(wire: WireTurn):
    """The engine's ``models.format.Turn``: an observation line goes before the query (own line)."""
    query = wire.query
    if wire.observation:
        line = format_observation(wire.observation)
        query = f"{line}\n{query}" if query else line
    return Turn(query=query, history=wire.history, environment=wire.environment)


def turn_to_wire(turn: Any) -> dict[str, Any]:
    """A ``Turn``, a mapping with the wire keys, or a plain string (the query) -> the wire ``turn`` map."""
    if isinstance(turn, str):
        return {"query": turn}
    if isinstance(turn, Mapping):
        return {k: turn[k] for k in ("query", "history", "environment", "observation") if k in turn}
    out: dict[str, Any] = {"query": turn.query, "history": list(turn.history)}
    if turn.environment is not None:
        out["environment"] = list(turn.environment)
    return out


# --------------------------------------------------------------------------- replies


def error_message(code: str, message: str, msg_id: Any, epoch: str, **extra: Any) -> dict[str, Any]:
    assert code in ERROR_CODES, code
    out = {"v": PROTOCOL_VERSION, "type": "error", "id": msg_id, "epoch": epoch, "code": code,
           "message": message}
    out.update(extra)
    return out
