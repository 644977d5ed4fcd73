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

Crowds (protocol 1.1, ``PROTOCOL_REVISION``; optional additions, so ``v`` stays 1): a hello with
``agents`` (and optionally ``max_agents``) opens a crowd session; each ``obs`` then names its ``agent``
(an agent's first observation makes it join), ``AgentByeMsg`` (``bye`` with ``agent``) makes one agent
leave, ``episode`` may name its agent, and the bridge answers with ``CrowdWelcomeMsg`` and sends
``AgentCallMsg`` (``call`` with ``agent``). A session whose hello has no ``agents`` is exactly today's
single-agent session, byte for byte: the crowd variants are subclasses that only crowd sessions use.

Recordings (protocol 1.2, optional additions again): an ``obs`` may carry ``played`` (``PlayedCall``:
the call the engine's own AI, or a human player, took on that observation), decoded into the variant
``PlayedObsMsg``; a malformed or illegal one is refused with the one code ``bad_played``. A hello may
carry ``game``: the gymnasium id of the game the engine runs when it is the same game (same tools and
observation text, e.g. ``tickcall/Arena-v0``), so recordings and models name it. An obs without
``played`` is exactly the 1.1 ``ObsMsg``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

PROTOCOL_VERSION = 1
PROTOCOL_REVISION = "1.2"  # 1.1 crowds (agent ids), 1.2 recordings (obs.played, hello.game); optional
# fields only, so v stays 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
MAX_AGENTS = 1024  # the most agents one crowd session may have at once (hello.max_agents)
AGENT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
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
    "bad_played": "obs.played is not a legal call {name, arguments} of the engine's tools (protocol 1.2)",
}

OBS_FORMATS = ("text", "values")

_MAX_FLOAT = 1.7976931348623157e308
# a finite float (the bounds refuse NaN and +-inf); msgpack ints are accepted and become floats
Finite = Annotated[float, msgspec.Meta(ge=-_MAX_FLOAT, le=_MAX_FLOAT, description="a finite number")]


# ``M(description=...)`` on a field says what it must be: error messages quote it
M = msgspec.Meta

AGENT_ID_TEXT = "an agent id: 1..64 characters among letters, digits and _ . : -"
AgentId = Annotated[str, M(description=AGENT_ID_TEXT, pattern=AGENT_ID_PATTERN)]
OptionalAgentId = Annotated[AgentId | None, M(description=AGENT_ID_TEXT)]


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
    # protocol 1.1, crowds: the agents present at hello (absent = one agent, today's session) and the
    # most that may be present at once (default: len(agents)); more join with their first obs
    agents: Annotated[list[AgentId] | None, M(description="a list of agent ids (strings)")] = None
    max_agents: Annotated[Annotated[int, M(ge=1, le=MAX_AGENTS)] | None,
                          M(description=f"an integer 1..{MAX_AGENTS} (agents at once)")] = None
    # protocol 1.2: the gymnasium id of the same game (same tools and observation text), if any
    game: Annotated[Annotated[str, M(min_length=1, max_length=128)] | None,
                    M(description="a gymnasium env id (string, 1..128 characters)")] = None

    def __post_init__(self) -> None:
        if not self.engine.strip():
            raise ProtocolError("bad_field", "hello.engine must not be blank", fatal=True,
                                ref_type="hello")
        if not self.tools:
            raise ProtocolError("bad_tools", "hello.tools must be a non-empty list of maps", fatal=True,
                                ref_type="hello")
        if self.agents is None:
            if self.max_agents is not None:
                raise ProtocolError("bad_field", "hello.max_agents needs hello.agents (the crowd at "
                                    "hello, [] for none yet)", fatal=True, ref_type="hello")
            return
        if len(set(self.agents)) != len(self.agents):
            dup = sorted({a for a in self.agents if self.agents.count(a) > 1})
            raise ProtocolError("bad_field", f"hello.agents names {dup} more than once", fatal=True,
                                ref_type="hello")
        if not self.agents and self.max_agents is None:
            raise ProtocolError("bad_field", "hello.max_agents is required when hello.agents is empty "
                                "(how many agents may join)", fatal=True, ref_type="hello")
        if len(self.agents) > min(self.crowd_size, MAX_AGENTS):
            raise ProtocolError("bad_field", f"hello.agents lists {len(self.agents)} agents, more than "
                                f"hello.max_agents={self.crowd_size} (a crowd has at most {MAX_AGENTS})",
                                fatal=True, ref_type="hello")
        if self.lockstep:
            raise ProtocolError("bad_field", "hello.lockstep must be 0 with hello.agents (crowds run in "
                                "real time)", fatal=True, ref_type="hello")

    @property
    def crowd(self) -> bool:
        """A crowd session (protocol 1.1): observations and calls name their agent."""
        return self.agents is not None

    @property
    def crowd_size(self) -> int:
        """The most agents present at once: ``max_agents``, else ``len(agents)`` (0: not a crowd)."""
        if self.agents is None:
            return 0
        return self.max_agents if self.max_agents is not None else len(self.agents)


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
    # protocol 1.1: required in a crowd session, refused in a single-agent one; seq increases per agent
    agent: OptionalAgentId = None


class PlayedCall(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Protocol 1.2: the call the engine's own AI (or a human player) took on an observation."""

    name: Annotated[str, M(description="a tool name (string)", min_length=1)]
    arguments: Annotated[dict[str, Any], M(description="a map of arguments")] = {}


class PlayedObsMsg(ObsMsg, tag="obs", frozen=True, kw_only=True):
    """Protocol 1.2 (recordings): an observation with ``played``, the call the engine's AI or player
    took on it (applied at the engine's next step, as a call from tickcall would be). The bridge checks
    it against the session's tools (``bad_played``); ``tickcall record --env engine:...`` writes the
    pairs (observation text, played call) as a dataset."""

    played: Annotated[PlayedCall, M(description="a call map {name: str, arguments: map}")]


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
    agent: OptionalAgentId = None  # protocol 1.1: whose episode (crowd sessions)


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


class AgentByeMsg(ByeMsg, tag="bye", frozen=True, kw_only=True):
    """Engine -> bridge, protocol 1.1 (crowd sessions): one agent leaves; the session goes on. Its
    calls in flight end ``lost`` (``agent_left``); a later ``obs`` naming it makes it join again."""

    agent: AgentId


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


class CrowdWelcomeMsg(WelcomeMsg, tag="welcome", frozen=True, kw_only=True):
    """Protocol 1.1: the welcome of a crowd session (its hello had ``agents``); ``agents`` the roster
    accepted, ``max_agents`` the most at once. An engine that gets a plain welcome to a crowd hello
    talks to a bridge older than 1.1 and must not run its crowd over it."""

    agents: list[str]
    max_agents: int


class CallMsg(Envelope, tag="call", frozen=True):
    """Apply ``name(arguments)`` at the next frame; answer ``ack`` then ``result``."""

    id: int
    name: str
    arguments: dict[str, Any]
    tick: int = -1
    obs_seq: int = -1
    obs_t_ms: float | None = None  # the answered observation's t_ms, echoed (engine clock, ms)


class AgentCallMsg(CallMsg, tag="call", frozen=True, kw_only=True):
    """Protocol 1.1 (crowd sessions): a call for one ``agent``; ``obs_seq``/``obs_t_ms`` name that
    agent's observation."""

    agent: str


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

# protocol 1.1 variants: a message of this type with this key present decodes into the variant
ENGINE_VARIANTS: dict[str, tuple[str, type[Envelope]]] = {
    "bye": ("agent", AgentByeMsg), "obs": ("played", PlayedObsMsg)}
BRIDGE_VARIANTS: dict[str, tuple[str, type[Envelope]]] = {
    "call": ("agent", AgentCallMsg), "welcome": ("max_agents", CrowdWelcomeMsg)}

EngineMessage = HelloMsg | ObsMsg | AckMsg | ResultMsg | EpisodeMsg | PingMsg | PongMsg | ByeMsg
BridgeMessage = WelcomeMsg | CallMsg | StepMsg | PingMsg | PongMsg | ErrorMsg | ByeMsg
