"""Engine bridge wire protocol, mode 1: msgpack encoding and the one validation path.

The messages themselves are typed structs in ``envs/engine_bridge_messages.py`` (re-exported here);
this module turns bytes into those structs and back. Pure data: no sockets, no threads. The
description for engine developers is docs/protocol.md ("Engine bridge (mode 1)").

Transport: the bridge binds a ZMQ ROUTER (default ``tcp://127.0.0.1:5560``); the engine connects a
DEALER. Every ZMQ message is ONE frame holding ONE msgpack map with string keys. Unknown extra keys
are ignored (minor additions stay compatible); a missing or wrongly typed known key is an error
(``bad_field``). A nil value counts as absent, so an optional field may be sent as nil.

Validation, in order (``decode``): size (``oversized``), one msgpack map with string keys
(``malformed``), ``v`` (``version_mismatch``, fatal on hello), ``type`` (``bad_field`` when not a
string, ``unknown_type`` when no engine message has it), then the struct's field types, constraints
and ``__post_init__`` (``bad_field``; ``bad_tools`` for hello.tools; every hello error is fatal).

Crowds (protocol 1.1): a message whose type has a variant (``ENGINE_VARIANTS``/``BRIDGE_VARIANTS``:
``bye`` with ``agent``; ``call`` with ``agent``, ``welcome`` with ``max_agents``) decodes into that
variant; without the key it is exactly the 1.0 struct. Agent ids are checked here (``AgentId``: 1..64
characters among letters, digits and ``_ . : -``); whether an agent belongs to the session is the
state machine's check. Both are ``bad_field`` errors that name ``obs.agent`` (one clear line).
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

import msgspec
from tickcall.envs.engine_bridge_messages import (
    AGENT_ID_PATTERN,
    BRIDGE_MESSAGES,
    BRIDGE_TYPES,
    BRIDGE_VARIANTS,
    DEFAULT_HEARTBEAT_MISSES,
    DEFAULT_HEARTBEAT_MS,
    DEFAULT_MAX_MSG_BYTES,
    ENGINE_MESSAGES,
    ENGINE_TYPES,
    ENGINE_VARIANTS,
    ERROR_CODES,
    MAX_AGENTS,
    OBS_FORMATS,
    PROTOCOL_REVISION,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    AckMsg,
    AgentByeMsg,
    AgentCallMsg,
    BridgeMessage,
    ByeMsg,
    CallMsg,
    CrowdWelcomeMsg,
    DefaultCall,
    EngineMessage,
    Envelope,
    EpisodeMsg,
    ErrorMsg,
    HelloMsg,
    ObsField,
    ObsMsg,
    ObsSpec,
    PingMsg,
    PlayedCall,
    PlayedObsMsg,
    PongMsg,
    ProtocolError,
    ResultError,
    ResultMsg,
    StepMsg,
    WelcomeMsg,
)

__all__ = [
    "AGENT_ID_PATTERN", "BRIDGE_MESSAGES", "BRIDGE_TYPES", "BRIDGE_VARIANTS", "DEFAULT_HEARTBEAT_MISSES",
    "DEFAULT_HEARTBEAT_MS", "DEFAULT_MAX_MSG_BYTES", "ENGINE_MESSAGES", "ENGINE_TYPES", "ENGINE_VARIANTS",
    "ERROR_CODES", "MAX_AGENTS", "OBS_FORMATS", "PROTOCOL_REVISION", "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS", "AckMsg", "AgentByeMsg", "AgentCallMsg", "BridgeMessage", "ByeMsg", "CallMsg",
    "CrowdWelcomeMsg", "DefaultCall", "EngineMessage", "Envelope", "EpisodeMsg", "ErrorMsg", "HelloMsg", "ObsField",
    "ObsMsg", "ObsSpec", "PingMsg", "PlayedCall", "PlayedObsMsg", "PongMsg", "ProtocolError", "ResultError", "ResultMsg", "StepMsg",
    "WelcomeMsg", "check_obs", "decode", "decode_bridge", "encode", "render_values",
]

_ENCODER = msgspec.msgpack.Encoder()


def _no_extensions(code: int, data: memoryview) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


_DECODER = msgspec.msgpack.Decoder(ext_hook=_no_extensions)


def encode(msg: Envelope | Mapping[str, Any]) -> bytes:
    """msgpack-encode one message (a struct, or a plain map as a test peer or an old engine writes)."""
    return _ENCODER.encode(msg if isinstance(msg, Envelope) else dict(msg))


def decode(payload: bytes, max_bytes: int = DEFAULT_MAX_MSG_BYTES) -> EngineMessage:
    """Decode and validate one engine -> bridge frame; raises ProtocolError (see module docstring)."""
    return _decode(payload, max_bytes, ENGINE_MESSAGES, "an engine sends", "this bridge",  # type: ignore[return-value]
                   ENGINE_VARIANTS)


def decode_bridge(payload: bytes, max_bytes: int = DEFAULT_MAX_MSG_BYTES) -> BridgeMessage:
    """Decode and validate one bridge -> engine frame (what an engine written in Python reads)."""
    return _decode(payload, max_bytes, BRIDGE_MESSAGES, "the bridge sends", "this engine",  # type: ignore[return-value]
                   BRIDGE_VARIANTS)


def check_obs(obs: ObsMsg, spec: ObsSpec) -> None:
    """Check an observation against the format its session's hello declared."""
    if spec.format == "text" and obs.text is None:
        raise ProtocolError("bad_field", "obs.text is required (hello declared format 'text')",
                            ref_type="obs", ref_id=obs.seq)
    if spec.format == "values":
        if obs.values is None:
            raise ProtocolError("bad_field", "obs.values is required (hello declared format "
                                             "'values')", ref_type="obs", ref_id=obs.seq)
        missing = [f.name for f in spec.fields if f.name not in obs.values]
        if missing:
            raise ProtocolError("bad_field", f"obs.values lacks declared fields {missing}",
                                ref_type="obs", ref_id=obs.seq)


# --------------------------------------------------------------------------- the validation path


def _decode(payload: bytes, max_bytes: int, known: Mapping[str, type[Envelope]], sender: str,
            speaker: str, variants: Mapping[str, tuple[str, type[Envelope]]]) -> Envelope:
    if len(payload) > max_bytes:
        raise ProtocolError("oversized", f"message of {len(payload)} bytes exceeds the limit of "
                                         f"{max_bytes} bytes")
    try:
        raw = _DECODER.decode(payload)
    except Exception as exc:  # msgspec.DecodeError, or an extension type refused by the hook
        raise ProtocolError("malformed", f"payload is not a single msgpack value: "
                                         f"{type(exc).__name__}: {exc}"[:300]) from None
    if not isinstance(raw, dict):
        raise ProtocolError("malformed", f"payload must be a msgpack map, got {type(raw).__name__}")
    if not all(isinstance(k, str) for k in raw):
        raise ProtocolError("malformed", "payload must be a msgpack map with string keys")
    v, mtype = raw.get("v"), raw.get("type")
    if not isinstance(v, int) or isinstance(v, bool) or v not in SUPPORTED_VERSIONS:
        raise ProtocolError(
            "version_mismatch",
            f"protocol version v={_short(v)} is not supported; {speaker} speaks v in "
            f"{list(SUPPORTED_VERSIONS)}",
            fatal=mtype == "hello", ref_type=mtype if isinstance(mtype, str) else None)
    if not isinstance(mtype, str):
        raise ProtocolError("bad_field", f"field 'type' must be a string, got {_short(mtype)}")
    cls = known.get(mtype)
    if cls is None:
        raise ProtocolError("unknown_type", f"unknown message type {_short(mtype)}; {sender} one of "
                                            f"{list(known)}", ref_type=mtype[:40])
    present = {k: value for k, value in raw.items() if value is not None}  # nil = absent
    variant = variants.get(mtype)
    if variant is not None and variant[0] in present:  # protocol 1.1: e.g. bye with agent
        cls = variant[1]
    try:
        return msgspec.convert(present, cls)
    except msgspec.ValidationError as exc:
        raise _explain(str(exc), present, cls, mtype) from None


def _explain(text: str, raw: Mapping[str, Any], cls: type, mtype: str) -> ProtocolError:
    """A msgspec ValidationError (``Expected `int`, got `str` - at `$.seq```) as a ProtocolError that
    names the field as ``type.path`` and says what it must be (the field's ``Meta`` description)."""
    what, _, at = text.partition(" - at `")
    at = at.rstrip("`")
    if at.startswith("key` in `"):  # a map key of the wrong type
        at, what = at[len("key` in `"):], "its keys must be strings"
    path = at[1:].lstrip(".")  # "$.observation.fields[0]" -> "observation.fields[0]"
    missing = what.startswith("Object missing required field `")
    if missing:
        name = what.split("`")[1]
        path = f"{path}.{name}" if path else name
    steps = _steps(path)
    desc = _description(cls, [s for s in steps if isinstance(s, str)])
    where = f"{mtype}.{path}" if path else mtype
    if missing:
        message = f"{where} is required" + (f" ({desc})" if desc else "")
    else:
        got = _at(raw, steps)
        if desc and steps and isinstance(steps[-1], str):
            message = f"{where} must be {desc}" + ("" if got is _UNKNOWN else f", got {_short(got)}")
        else:  # an element of a list or map, or a field without a description
            field_path = path.split("[", 1)[0]
            message = (f"{where}: {what[:1].lower()}{what[1:]}"
                       + ("" if got is _UNKNOWN else f" ({_short(got)})")
                       + (f"; {mtype}.{field_path} must be {desc}" if desc else ""))
    code = "bad_tools" if mtype == "hello" and path.startswith("tools[") else "bad_field"
    if mtype == "obs" and (path == "played" or path.startswith(("played.", "played["))):
        code = "bad_played"  # protocol 1.2: every fault of obs.played has this one code
    ref_id = raw.get("id", raw.get("seq"))
    return ProtocolError(code, message, fatal=mtype == "hello", ref_type=mtype,
                         ref_id=ref_id if isinstance(ref_id, int | str) else None)


_UNKNOWN = object()


def _steps(path: str) -> list[str | int | None]:
    """``observation.fields[0].name`` -> ["observation", "fields", 0, "name"]; ``[...]`` -> None."""
    out: list[str | int | None] = []
    for part in path.replace("[", ".[").split("."):
        if not part:
            continue
        if part.startswith("["):
            inner = part[1:-1]
            out.append(int(inner) if inner.isdigit() else None)
        else:
            out.append(part)
    return out


def _at(raw: Any, steps: list[str | int | None]) -> Any:
    """The value at ``steps`` in the raw message, or _UNKNOWN (``[...]`` hides which map entry)."""
    for step in steps:
        if step is None:
            return _UNKNOWN
        try:
            raw = raw[step]
        except (KeyError, IndexError, TypeError):
            return _UNKNOWN
    return raw


def _description(cls: Any, names: list[str]) -> str | None:
    """The ``Meta(description=...)`` of the field reached by ``names`` (wire names) from ``cls``."""
    desc = None
    for name in names:
        if not (isinstance(cls, type) and issubclass(cls, msgspec.Struct)):
            return None
        info = {f.encode_name: f for f in msgspec.structs.fields(cls)}.get(name)
        if info is None:
            return None
        desc, cls = _unwrap(info.type)
    return desc


def _unwrap(hint: Any) -> tuple[str | None, Any]:
    """(description, the struct type inside) of an annotation such as Annotated[X | None, Meta]."""
    desc = None
    while typing.get_origin(hint) is typing.Annotated:
        for meta in hint.__metadata__:
            desc = getattr(meta, "description", None) or desc
        hint = hint.__origin__
    structs = [a for a in (typing.get_args(hint) or (hint,))
               if isinstance(a, type) and issubclass(a, msgspec.Struct)]
    return desc, structs[0] if structs else None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
