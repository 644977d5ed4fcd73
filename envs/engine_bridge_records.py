"""What the engine bridge keeps: the session, observations as received, calls and their futures.

Times: ``*_at``/``received``/``started``/``last_*`` are ``time.monotonic`` seconds on the bridge's
clock; ``*_ms`` milliseconds. A call's state is ``in_flight`` until it ends in exactly one terminal
state of ``TERMINAL_STATES``.
"""

from __future__ import annotations

from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from tickcall.envs.engine_bridge_messages import HelloMsg, ObsMsg
from tickcall.models.calls import Call
from tickcall.models.tools import ToolSpec

TERMINAL_STATES = ("done", "failed", "rejected", "lost", "timeout")


class EngineCallError(RuntimeError):
    """A call that did not succeed: ``state`` is its terminal state, ``code`` says why."""

    def __init__(self, state: str, code: str, message: str) -> None:
        # str() is what a history line shows: "cooldown: fire is cooling down: 3 steps left"
        super().__init__(f"{code}: {message}" if message else code)
        self.state = state
        self.code = code
        self.message = message


@dataclass
class CallOutcome:
    """A finished call's result as reported by the engine (``value`` is the engine's, may be None)."""

    id: int
    value: Any
    ack_frame: int
    result_frame: int
    ack_ms: float
    result_ms: float


@dataclass
class EngineCall:
    """One call handed to the engine. ``acked`` resolves with the engine's frame when the engine
    acknowledges; ``result`` with a ``CallOutcome``, or raises ``EngineCallError``. Callbacks added
    to these futures run on the bridge's I/O thread: keep them short."""

    id: int
    call: Call
    session: str
    tick: int
    obs_seq: int
    sent_at: float
    agent: str | None = None  # crowd sessions (protocol 1.1): the agent the call is for
    acked: Future = field(default_factory=Future, repr=False)
    result: Future = field(default_factory=Future, repr=False)
    state: str = "in_flight"
    ack_frame: int = -1
    ack_at: float | None = None

    @property
    def done(self) -> bool:
        return self.state != "in_flight"


@dataclass(frozen=True)
class Observation:
    """One observation as the bridge keeps it: the engine's ``obs`` plus the session it came from
    and ``received``, the bridge's clock at receipt."""

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
    agent: str | None = None  # crowd sessions (protocol 1.1): whose observation
    played: Call | None = None  # protocol 1.2: the call the engine's AI or player took on it

    @classmethod
    def of(cls, msg: ObsMsg, *, session: str, received: float) -> Observation:
        played = getattr(msg, "played", None)  # PlayedObsMsg only
        return cls(seq=msg.seq, frame=msg.frame, t_ms=msg.t_ms, text=msg.text, values=msg.values,
                   episode=msg.episode, ret=msg.ret, done=msg.done, wait=msg.wait, session=session,
                   received=received, agent=msg.agent,
                   played=Call(played.name, dict(played.arguments)) if played is not None else None)


@dataclass
class AgentSlot:
    """One agent present in a crowd session: its newest ``seq`` (seq increases per agent), how many
    observations it sent, and when it joined (bridge clock, s)."""

    joined: float
    newest_seq: int = -1
    obs_received: int = 0


@dataclass
class Session:
    """The engine currently connected (one at a time): its peer identity, hello and tools."""

    peer: bytes
    hello: HelloMsg
    tools: list[ToolSpec]
    started: float
    last_seen: float
    last_ping: float = 0.0
    newest_seq: int = -1
    obs_received: int = 0
    # crowd sessions (protocol 1.1): the agents present now, in join order
    roster: dict[str, AgentSlot] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.hello.session

    @property
    def crowd(self) -> bool:
        return self.hello.crowd

    @property
    def tool_map(self) -> dict[str, ToolSpec]:
        return {t.name: t for t in self.tools}


class PeerLimiter:
    """Error replies per peer per second (bounded memory: at most ``cap`` peers remembered)."""

    def __init__(self, per_second: int, cap: int = 1024) -> None:
        self.per_second = per_second
        self.cap = cap
        self._windows: dict[bytes, list[float]] = {}

    def allow(self, peer: bytes, now: float) -> bool:
        w = self._windows.get(peer)
        if w is None or now - w[0] >= 1.0:
            if w is None and len(self._windows) >= self.cap:
                self._windows.pop(next(iter(self._windows)))
            self._windows[peer] = [now, 1]
            return True
        if w[1] >= self.per_second:
            return False
        w[1] += 1
        return True


def settle(fut: Future, value: Any = None, exc: BaseException | None = None) -> None:
    """Resolve a future unless it is already done (a caller may have cancelled it)."""
    if fut.done():
        return
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)
    except InvalidStateError:  # cancelled between the check and the set
        pass
