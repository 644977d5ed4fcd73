"""Engine bridge wire protocol, mode 1 (the engine is the *world* of a tickcall control loop).

Everything here is pure data: message types, field checks, error codes, msgpack encode/decode.
No sockets, no threads. The normative description for engine developers is docs/protocol.md
("Engine bridge (mode 1)"); this module is its executable form and the two must agree.

Transport: the bridge binds a ZMQ ROUTER (default ``tcp://127.0.0.1:5560``); the engine connects a
DEALER. Every ZMQ message is ONE frame holding ONE msgpack map. Every map has ``v`` (protocol major
version, int) and ``type`` (str). Unknown extra keys are ignored (minor additions stay compatible);
a missing or wrongly typed known key is an error (``bad_field``).

Units: times ``*_ms`` are milliseconds (float); the engine's ``t_ms`` is its own monotonic clock
(never compared with the bridge's); rates ``*_hz`` are Hz; frames are integers counted by the engine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
DEFAULT_MAX_MSG_BYTES = 1 << 20  # 1 MiB: larger messages are answered ``oversized`` and dropped
DEFAULT_HEARTBEAT_MS = 250.0
DEFAULT_HEARTBEAT_MISSES = 4  # peer silent for heartbeat_ms * misses => considered gone

# message types ------------------------------------------------------------------------------------
ENGINE_TYPES = ("hello", "obs", "ack", "result", "episode", "ping", "pong", "bye")
BRIDGE_TYPES = ("welcome", "call", "step", "ping", "pong", "error", "bye")

# error codes sent by the bridge in ``error`` messages ---------------------------------------------
ERROR_CODES: dict[str, str] = {
    "malformed": "the frame is not one msgpack map (or has more than one frame)",
    "oversized": "the message exceeds the bridge's max_msg_bytes",
    "version_mismatch": "field v is missing or names a protocol version the bridge does not speak",
    "unknown_type": "field type names no engine->bridge message",
    "bad_field": "a required field is missing or has the wrong type or value",
    "bad_tools": "the tools in hello cannot be offered to a model (schema error)",
    "no_session": "a message other than hello from a peer without a live session: send hello",
    "superseded": "a newer hello (engine restart) replaced this session; this peer is ignored now",
    "unknown_call": "ack/result names a call id the bridge never sent to this session, or one "
                    "already finished",
    "stale_observation": "obs.seq is not greater than the newest seq seen in this session",
}

# observation formats declared in hello.observation.format
OBS_FORMATS = ("text", "values")


class ProtocolError(ValueError):
    """A message the bridge refuses. ``code`` is one of ERROR_CODES; ``fatal`` ends the session."""

    def __init__(self, code: str, message: str, *, fatal: bool = False, ref_type: str | None = None,
                 ref_id: Any = None) -> None:
        assert code in ERROR_CODES, code
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fatal = fatal
        self.ref_type = ref_type
        self.ref_id = ref_id

    def to_message(self) -> dict[str, Any]:
        return error_message(self.code, self.message, fatal=self.fatal, ref_type=self.ref_type,
                             ref_id=self.ref_id)


# --------------------------------------------------------------------------- encode / decode


def encode(msg: Mapping[str, Any]) -> bytes:
    """msgpack-encode one message map (str keys, bin type for bytes, no extension types)."""
    return msgpack.packb(dict(msg), use_bin_type=True)


def decode(payload: bytes, max_bytes: int = DEFAULT_MAX_MSG_BYTES) -> dict[str, Any]:
    """Decode one frame into a message map with a supported ``v`` and a str ``type``.

    Raises ProtocolError (``oversized``, ``malformed``, ``version_mismatch``, ``unknown_type`` is
    left to the caller since the allowed set depends on the direction).
    """
    if len(payload) > max_bytes:
        raise ProtocolError("oversized", f"message of {len(payload)} bytes exceeds the limit of "
                                         f"{max_bytes} bytes")
    try:
        msg = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several types (ExtraData, ValueError, ...)
        raise ProtocolError("malformed", f"payload is not a single msgpack value: "
                                         f"{type(exc).__name__}: {exc}"[:300]) from None
    if not isinstance(msg, dict):
        raise ProtocolError("malformed", f"payload must be a msgpack map, got {type(msg).__name__}")
    v = msg.get("v")
    mtype = msg.get("type")
    if not isinstance(v, int) or isinstance(v, bool) or v not in SUPPORTED_VERSIONS:
        raise ProtocolError(
            "version_mismatch",
            f"protocol version v={v!r} is not supported; this bridge speaks v in "
            f"{list(SUPPORTED_VERSIONS)}",
            fatal=mtype == "hello", ref_type=mtype if isinstance(mtype, str) else None)
    if not isinstance(mtype, str):
        raise ProtocolError("bad_field", f"field 'type' must be a string, got {mtype!r}"[:200])
    return msg


def error_message(code: str, message: str, *, fatal: bool = False, ref_type: str | None = None,
                  ref_id: Any = None) -> dict[str, Any]:
    """The bridge's ``error`` message."""
    return {"v": PROTOCOL_VERSION, "type": "error", "code": code, "message": message, "fatal": fatal,
            "ref_type": ref_type, "ref_id": ref_id}


# --------------------------------------------------------------------------- field helpers


def _where(mtype: str, key: str) -> str:
    return f"{mtype}.{key}"


def _req(msg: Mapping[str, Any], key: str, kinds: tuple[type, ...], what: str) -> Any:
    if key not in msg:
        raise ProtocolError("bad_field", f"{_where(msg['type'], key)} is required ({what})",
                            ref_type=msg["type"])
    return _check(msg, key, kinds, what)


def _opt(msg: Mapping[str, Any], key: str, kinds: tuple[type, ...], what: str, default: Any) -> Any:
    if msg.get(key) is None:
        return default
    return _check(msg, key, kinds, what)


def _check(msg: Mapping[str, Any], key: str, kinds: tuple[type, ...], what: str) -> Any:
    value = msg[key]
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if ok and isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok:
        raise ProtocolError("bad_field", f"{_where(msg['type'], key)} must be {what}, got "
                                         f"{_short(value)}", ref_type=msg["type"],
                            ref_id=msg.get("id", msg.get("seq")))
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_NUM = (int, float)


# --------------------------------------------------------------------------- engine -> bridge


@dataclass(frozen=True)
class ObsField:
    """One declared observation value: ``name`` (key in obs.values), ``unit``, ``description``,
    ``precision`` (decimals when the bridge renders a number; default 3)."""

    name: str
    unit: str = ""
    description: str = ""
    precision: int = 3


@dataclass(frozen=True)
class ObsSpec:
    """How the engine describes observations (hello.observation)."""

    format: str = "text"
    description: str = ""
    fields: tuple[ObsField, ...] = ()


@dataclass(frozen=True)
class Hello:
    """The engine's handshake. ``session`` is chosen by the engine, new for each engine process
    start (a restart is a new session). ``lockstep`` = N > 0: the engine waits for a ``step`` after
    every observation it sends (it sends one every N frames); 0 = real time (never waits)."""

    engine: str
    engine_version: str
    session: str
    tools: list[dict[str, Any]]
    observation: ObsSpec
    frame_hz: float
    heartbeat_ms: float
    lockstep: int = 0
    default_call: dict[str, Any] | None = None
    instructions: str = ""


@dataclass(frozen=True)
class Observation:
    """One observation as the bridge keeps it. ``received`` is the bridge's monotonic clock
    (seconds, ``time.monotonic``) at receipt; ``session`` the engine session it came from."""

    seq: int
    frame: int
    t_ms: float
    text: str | None
    values: dict[str, Any] | None
    episode: int
    ret: float
    done: bool
    wait: bool
    session: str = ""
    received: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def parse_hello(msg: Mapping[str, Any]) -> Hello:
    """Check a ``hello`` map; tools are checked later (normalize_tools) for a ``bad_tools`` error."""
    engine = _req(msg, "engine", (str,), "the engine's name (string)")
    if not engine.strip():
        raise ProtocolError("bad_field", "hello.engine must not be empty", ref_type="hello")
    session = _req(msg, "session", (str,), "a session id chosen by the engine (string)")
    if not session or len(session) > 128:
        raise ProtocolError("bad_field", "hello.session must be 1..128 characters", ref_type="hello")
    tools = _req(msg, "tools", (list,), "a list of tools as JSON schema (OpenAI style)")
    if not tools or not all(isinstance(t, dict) for t in tools):
        raise ProtocolError("bad_tools", "hello.tools must be a non-empty list of maps", fatal=True,
                            ref_type="hello")
    obs = _opt(msg, "observation", (dict,), "a map {format, description, fields}", {})
    fmt = obs.get("format", "text")
    if fmt not in OBS_FORMATS:
        raise ProtocolError("bad_field", f"hello.observation.format must be one of {list(OBS_FORMATS)}, "
                                         f"got {_short(fmt)}", ref_type="hello")
    fields_in = obs.get("fields") or []
    if not isinstance(fields_in, list):
        raise ProtocolError("bad_field", "hello.observation.fields must be a list", ref_type="hello")
    fields_out = []
    for i, f in enumerate(fields_in):
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not f["name"]:
            raise ProtocolError("bad_field", f"hello.observation.fields[{i}] must be a map with a "
                                             "string name", ref_type="hello")
        prec = f.get("precision", 3)
        if not isinstance(prec, int) or isinstance(prec, bool) or not 0 <= prec <= 12:
            raise ProtocolError("bad_field", f"hello.observation.fields[{i}].precision must be an "
                                             "integer 0..12", ref_type="hello")
        fields_out.append(ObsField(name=f["name"], unit=str(f.get("unit") or ""),
                                   description=str(f.get("description") or ""), precision=prec))
    if fmt == "values" and not fields_out:
        raise ProtocolError("bad_field", "hello.observation.fields is required when format is "
                                         "'values'", ref_type="hello")
    frame_hz = float(_opt(msg, "frame_hz", _NUM, "a number of frames per second", 60.0))
    hb = float(_opt(msg, "heartbeat_ms", _NUM, "a number of milliseconds", DEFAULT_HEARTBEAT_MS))
    if not 10.0 <= hb <= 60_000.0:
        raise ProtocolError("bad_field", "hello.heartbeat_ms must be within 10..60000", ref_type="hello")
    lockstep = _opt(msg, "lockstep", (int,), "an integer >= 0 (frames per step)", 0)
    if lockstep < 0:
        raise ProtocolError("bad_field", "hello.lockstep must be >= 0", ref_type="hello")
    default_call = _opt(msg, "default_call", (dict,), "a call map {name, arguments}", None)
    if default_call is not None and not isinstance(default_call.get("name"), str):
        raise ProtocolError("bad_field", "hello.default_call.name must be a string", ref_type="hello")
    return Hello(engine=engine, engine_version=str(msg.get("engine_version") or ""), session=session,
                 tools=list(tools),
                 observation=ObsSpec(format=fmt, description=str(obs.get("description") or ""),
                                     fields=tuple(fields_out)),
                 frame_hz=frame_hz, heartbeat_ms=hb, lockstep=lockstep, default_call=default_call,
                 instructions=str(msg.get("instructions") or ""))


def parse_obs(msg: Mapping[str, Any], spec: ObsSpec) -> Observation:
    """Check an ``obs`` map against the session's observation spec."""
    seq = _req(msg, "seq", (int,), "an integer sequence number, increasing per session")
    frame = _req(msg, "frame", (int,), "the engine's frame counter (integer)")
    t_ms = float(_opt(msg, "t_ms", _NUM, "milliseconds on the engine's monotonic clock", 0.0))
    text = _opt(msg, "text", (str,), "a string", None)
    values = _opt(msg, "values", (dict,), "a map name -> number/string/bool", None)
    if spec.format == "text" and text is None:
        raise ProtocolError("bad_field", "obs.text is required (hello declared format 'text')",
                            ref_type="obs", ref_id=seq)
    if spec.format == "values":
        if values is None:
            raise ProtocolError("bad_field", "obs.values is required (hello declared format "
                                             "'values')", ref_type="obs", ref_id=seq)
        missing = [f.name for f in spec.fields if f.name not in values]
        if missing:
            raise ProtocolError("bad_field", f"obs.values lacks declared fields {missing}",
                                ref_type="obs", ref_id=seq)
        for k, val in values.items():
            if not isinstance(val, int | float | str | bool) or (
                    isinstance(val, float) and not math.isfinite(val)):
                raise ProtocolError("bad_field", f"obs.values[{k!r}] must be a finite number, string "
                                                 f"or bool, got {_short(val)}", ref_type="obs",
                                    ref_id=seq)
    episode = _opt(msg, "episode", (int,), "an integer episode index", 0)
    ret = float(_opt(msg, "return", _NUM, "the episode's return so far (number)", 0.0))
    done = _opt(msg, "done", (bool,), "a bool", False)
    wait = _opt(msg, "wait", (bool,), "a bool (lock-step: engine waits for step)", False)
    return Observation(seq=seq, frame=frame, t_ms=t_ms, text=text, values=values, episode=episode,
                       ret=ret, done=done, wait=wait)


@dataclass(frozen=True)
class Ack:
    id: int
    frame: int


@dataclass(frozen=True)
class Result:
    """``ok`` with ``value``, or not ok with ``error_code`` and ``error_message`` (engine's words)."""

    id: int
    frame: int
    ok: bool
    value: Any = None
    error_code: str = ""
    error_message: str = ""


def parse_ack(msg: Mapping[str, Any]) -> Ack:
    return Ack(id=_req(msg, "id", (int,), "the call id (integer)"),
               frame=_opt(msg, "frame", (int,), "the frame the call was applied at", -1))


def parse_result(msg: Mapping[str, Any]) -> Result:
    cid = _req(msg, "id", (int,), "the call id (integer)")
    ok = _req(msg, "ok", (bool,), "a bool")
    frame = _opt(msg, "frame", (int,), "the frame the call finished at", -1)
    if ok:
        return Result(id=cid, frame=frame, ok=True, value=msg.get("value"))
    err = msg.get("error")
    if not isinstance(err, dict) or not isinstance(err.get("code"), str):
        raise ProtocolError("bad_field", "result.error must be a map {code: str, message: str} when "
                                         "ok is false", ref_type="result", ref_id=cid)
    return Result(id=cid, frame=frame, ok=False, error_code=err["code"],
                  error_message=str(err.get("message") or ""))


@dataclass(frozen=True)
class EpisodeEnd:
    """An episode finished in the engine: never dropped (unlike observations)."""

    index: int
    ret: float
    length: int
    reason: str = ""


def parse_episode(msg: Mapping[str, Any]) -> EpisodeEnd:
    return EpisodeEnd(index=_req(msg, "index", (int,), "the episode index (integer)"),
                      ret=float(_req(msg, "return", _NUM, "the episode's return (number)")),
                      length=_req(msg, "length", (int,), "the episode's length in the engine's "
                                                         "steps (integer)"),
                      reason=str(msg.get("reason") or ""))


# --------------------------------------------------------------------------- bridge -> engine


def welcome_message(*, epoch: str, session: str, heartbeat_ms: float, max_msg_bytes: int,
                    tools: list[str], lockstep: int) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "type": "welcome", "server": "tickcall", "epoch": epoch,
            "session": session, "heartbeat_ms": heartbeat_ms, "max_msg_bytes": max_msg_bytes,
            "tools": tools, "lockstep": lockstep}


def call_message(*, call_id: int, name: str, arguments: Mapping[str, Any], tick: int,
                 obs_seq: int) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "type": "call", "id": call_id, "name": name,
            "arguments": dict(arguments), "tick": tick, "obs_seq": obs_seq}


def step_message(*, seq: int, calls: list[int]) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "type": "step", "seq": seq, "calls": calls}


def ping_message(*, epoch: str, t_ms: float) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "type": "ping", "epoch": epoch, "t_ms": t_ms}


def pong_message(*, epoch: str, t_ms: float) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "type": "pong", "epoch": epoch, "t_ms": t_ms}


def bye_message(reason: str) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "type": "bye", "reason": reason}


# --------------------------------------------------------------------------- observation text


def render_values(values: Mapping[str, Any], spec: ObsSpec) -> str:
    """``name=value`` pairs in the declared field order; units are in the hello, not here (the
    per-tick text is prefilled every tick, so it stays short).

    Numbers: the field's ``precision`` decides, never the msgpack type (msgpack-c >= 4 writes an
    integral double such as 5.0 as an int): precision > 0 -> an explicit sign and that many decimals
    (``x=+0.012``, ``-0.000`` printed ``+0.000``); precision 0 -> a plain integer (``cd=3``). Bools
    ``true``/``false``; strings as they are. The format is ``models.prompt_text``'s, shared with
    training and the other observation paths."""
    from tickcall.models.prompt_text import render_observation

    return render_observation({f.name: values[f.name] for f in spec.fields},
                              precision={f.name: f.precision for f in spec.fields})
