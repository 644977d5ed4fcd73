"""Engine bridge wire protocol, mode 1: every message as one typed ``msgspec.Struct``.

These structs are the source of truth of the protocol (docs/protocol.md describes them for engine
developers). Every message shares one envelope, ``Envelope``: ``type`` (the tag, a str) and ``v``
(protocol major version, int). Engine -> bridge: ``HelloMsg``, ``ObsMsg``, ``AckMsg``, ``ResultMsg``,
``EpisodeMsg``, ``PingMsg``, ``PongMsg``, ``ByeMsg``. Bridge -> engine: ``WelcomeMsg``, ``CallMsg``,
``StepMsg``, ``PingMsg``, ``PongMsg``, ``ErrorMsg``, ``ByeMsg``. The one error type is
``ProtocolError``; on the wire it becomes an ``ErrorMsg``.

Field types and ``Meta`` constraints are the checks; ``__post_init__`` adds the checks types cannot
say and raises ``ProtocolError`` with its code. Checks that depend on the session (the observation
format, the tools' schemas, seq order) live in the session state machine.

Units: ``*_ms`` milliseconds (float); ``t_ms`` the sender's own monotonic clock (never compared with
the other side's); ``*_hz`` per second; ``frame`` the engine's own frame counter.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
DEFAULT_MAX_MSG_BYTES = 1 << 20  # 1 MiB: larger messages are answered ``oversized`` and dropped
DEFAULT_HEARTBEAT_MS = 250.0
DEFAULT_HEARTBEAT_MISSES = 4  # peer silent for heartbeat_ms * misses => considered gone

# error codes sent by the bridge in ``error`` messages
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

OBS_FORMATS = ("text", "values")

_MAX_FLOAT = 1.7976931348623157e308
# a finite float (the bounds refuse NaN and +-inf); msgpack ints are accepted and become floats
Finite = Annotated[float, msgspec.Meta(ge=-_MAX_FLOAT, le=_MAX_FLOAT, description="a finite number")]


# ``M(description=...)`` on a field says what it must be: error messages quote it
M = msgspec.Meta


class ProtocolError(Exception):
    """A message the bridge refuses. ``code`` is one of ERROR_CODES; ``fatal`` ends the session.

    Not a ValueError on purpose: raised from a struct's ``__post_init__`` it passes through msgspec
    unchanged, code and all (msgspec wraps ValueError/TypeError into its own ValidationError)."""

    def __init__(self, code: str, message: str, *, fatal: bool = False, ref_type: str | None = None,
                 ref_id: Any = None) -> None:
        assert code in ERROR_CODES, code
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fatal = fatal
        self.ref_type = ref_type
        self.ref_id = ref_id

    def to_message(self) -> ErrorMsg:
        return ErrorMsg(code=self.code, message=self.message, fatal=self.fatal, ref_type=self.ref_type,
                        ref_id=self.ref_id)


class Envelope(msgspec.Struct, tag_field="type", kw_only=True, frozen=True):
    """What every message carries: ``type`` (the struct's tag) and ``v`` (protocol major version)."""

    v: int = PROTOCOL_VERSION


# --------------------------------------------------------------------------- engine -> bridge


class ObsField(msgspec.Struct, frozen=True):
    """One declared observation value: ``name`` (key in obs.values), ``unit``, ``description``,
    ``precision`` (decimals when the bridge renders a number)."""

    name: Annotated[str, M(description="a non-empty string", min_length=1)]
    unit: str = ""
    description: str = ""
    precision: Annotated[int, M(description="an integer 0..12 (decimals)", ge=0, le=12)] = 3


class ObsSpec(msgspec.Struct, frozen=True):
    """How the engine describes observations (hello.observation): ``text`` or named ``values``."""

    format: Annotated[Literal["text", "values"], M(description=f"one of {list(OBS_FORMATS)}")] = "text"
    description: str = ""
    fields: Annotated[tuple[ObsField, ...],
                      M(description="a list of {name, unit, description, precision}")] = ()

    def __post_init__(self) -> None:
        if self.format == "values" and not self.fields:
            raise ProtocolError("bad_field", "hello.observation.fields is required when format is "
                                             "'values'", fatal=True, ref_type="hello")


class DefaultCall(msgspec.Struct, frozen=True):
    """A call as the engine declares it (hello.default_call): ``name`` and ``arguments``."""

    name: Annotated[str, M(description="a tool name (string)")]
    arguments: Annotated[dict[str, Any], M(description="a map of arguments")] = {}


class HelloMsg(Envelope, tag="hello", frozen=True):
    """The engine's handshake. ``session`` is new for every engine process start. ``lockstep`` = N > 0:
    the engine waits for ``step`` after every observation (one every N frames); 0 = real time."""

    engine: Annotated[str, M(description="the engine's name (non-empty string)", min_length=1)]
    session: Annotated[str, M(description="a session id chosen by the engine (string, 1..128 characters)",
                              min_length=1, max_length=128)]
    tools: Annotated[list[dict[str, Any]], M(description="a list of tools as JSON schema (OpenAI style)")]
    engine_version: str = ""
    observation: Annotated[ObsSpec, M(description="a map {format, description, fields}")] = ObsSpec()
    frame_hz: Annotated[Finite, M(description="a finite number of frames per second")] = 60.0
    heartbeat_ms: Annotated[float, M(description="a number of milliseconds within 10..60000",
                                     ge=10.0, le=60_000.0)] = DEFAULT_HEARTBEAT_MS
    lockstep: Annotated[int, M(description="an integer >= 0 (frames per step)", ge=0)] = 0
    default_call: Annotated[DefaultCall | None, M(description="a call map {name, arguments}")] = None
    instructions: str = ""

    def __post_init__(self) -> None:
        if not self.engine.strip():
            raise ProtocolError("bad_field", "hello.engine must not be blank", fatal=True,
                                ref_type="hello")
        if not self.tools:
            raise ProtocolError("bad_tools", "hello.tools must be a non-empty list of maps", fatal=True,
                                ref_type="hello")


class ObsMsg(Envelope, tag="obs", frozen=True):
    """One observation. ``text`` or ``values`` as hello declared (checked against the session)."""

    seq: Annotated[int, M(description="an integer sequence number, increasing per session")]
    frame: Annotated[int, M(description="the engine's frame counter (integer)")]
    t_ms: Annotated[Finite, M(description="milliseconds on the engine's monotonic clock")] = 0.0
    text: Annotated[str | None, M(description="a string")] = None
    values: Annotated[dict[str, int | Finite | str | bool] | None,
                      M(description="a map name -> finite number, string or bool")] = None
    episode: Annotated[int, M(description="an integer episode index")] = 0
    ret: Annotated[Finite, M(description="the episode's return so far (number)")] = msgspec.field(
        default=0.0, name="return")
    done: Annotated[bool, M(description="a bool")] = False
    wait: Annotated[bool, M(description="a bool (lock-step: the engine waits for step)")] = False


class AckMsg(Envelope, tag="ack", frozen=True):
    """The engine received call ``id`` and queued it at ``frame``."""

    id: Annotated[int, M(description="the call id (integer)")]
    frame: Annotated[int, M(description="the frame the call was queued at (integer)")] = -1


class ResultError(msgspec.Struct, frozen=True):
    """Why a call failed, in the engine's words."""

    code: Annotated[str, M(description="an error code (string)")]
    message: str = ""


class ResultMsg(Envelope, tag="result", frozen=True):
    """Call ``id`` was applied: ``ok`` with ``value``, or not ok with ``error``."""

    id: Annotated[int, M(description="the call id (integer)")]
    ok: Annotated[bool, M(description="a bool")]
    frame: Annotated[int, M(description="the frame the call finished at (integer)")] = -1
    value: Any = None
    error: Annotated[ResultError | None, M(description="a map {code: str, message: str}")] = None

    def __post_init__(self) -> None:
        if not self.ok and self.error is None:
            raise ProtocolError("bad_field", "result.error must be a map {code: str, message: str} "
                                             "when ok is false", ref_type="result", ref_id=self.id)


class EpisodeMsg(Envelope, tag="episode", frozen=True):
    """An episode ended in the engine (``length`` in the engine's own steps); never dropped."""

    index: Annotated[int, M(description="the episode index (integer)")]
    ret: Annotated[Finite, M(description="the episode's return (number)")] = msgspec.field(name="return")
    length: Annotated[int, M(description="the episode's length in the engine's steps (integer)")]
    reason: str = ""


class PingMsg(Envelope, tag="ping", frozen=True):
    """Both ways: answer with ``pong`` echoing ``t_ms``. The bridge's carries its ``epoch``."""

    t_ms: Annotated[Finite, M(description="milliseconds on the sender's clock")] = 0.0
    epoch: Annotated[str | None, M(description="the bridge's epoch (string)")] = None


class PongMsg(Envelope, tag="pong", frozen=True):
    """Both ways: the answer to a ping, echoing its ``t_ms``. The bridge's carries its ``epoch``."""

    t_ms: Annotated[Finite, M(description="the echoed ping t_ms")] = 0.0
    epoch: Annotated[str | None, M(description="the bridge's epoch (string)")] = None


class ByeMsg(Envelope, tag="bye", frozen=True):
    """Both ways: the sender leaves (an engine's calls in flight end ``lost``)."""

    reason: str = ""


# --------------------------------------------------------------------------- bridge -> engine


class WelcomeMsg(Envelope, tag="welcome", frozen=True):
    """The session is live."""

    epoch: str
    session: str
    heartbeat_ms: float
    max_msg_bytes: int
    tools: list[str]
    lockstep: int = 0
    server: str = "tickcall"


class CallMsg(Envelope, tag="call", frozen=True):
    """Apply ``name(arguments)`` at the next frame; answer ``ack`` then ``result``."""

    id: int
    name: str
    arguments: dict[str, Any]
    tick: int = -1
    obs_seq: int = -1
    obs_t_ms: float | None = None  # the answered observation's t_ms, echoed (engine clock, ms)


class StepMsg(Envelope, tag="step", frozen=True):
    """LOCK-STEP: the calls ``calls`` for observation ``seq`` were sent; run the next N frames."""

    seq: int
    calls: list[int] = []


class ErrorMsg(Envelope, tag="error", frozen=True):
    """The engine sent something wrong; ``fatal`` ends the handshake or session."""

    code: str
    message: str
    fatal: bool = False
    ref_type: str | None = None
    ref_id: Any = None


ENGINE_MESSAGES: dict[str, type[Envelope]] = {
    "hello": HelloMsg, "obs": ObsMsg, "ack": AckMsg, "result": ResultMsg, "episode": EpisodeMsg,
    "ping": PingMsg, "pong": PongMsg, "bye": ByeMsg}
BRIDGE_MESSAGES: dict[str, type[Envelope]] = {
    "welcome": WelcomeMsg, "call": CallMsg, "step": StepMsg, "ping": PingMsg, "pong": PongMsg,
    "error": ErrorMsg, "bye": ByeMsg}
ENGINE_TYPES = tuple(ENGINE_MESSAGES)
BRIDGE_TYPES = tuple(BRIDGE_MESSAGES)

EngineMessage = HelloMsg | ObsMsg | AckMsg | ResultMsg | EpisodeMsg | PingMsg | PongMsg | ByeMsg
BridgeMessage = WelcomeMsg | CallMsg | StepMsg | PingMsg | PongMsg | ErrorMsg | ByeMsg
