"""The engine bridge's session state machine: sessions, observations, calls and accounting.

No sockets and no threads of its own. The socket loop (``envs/engine_bridge.py``) feeds it decoded
messages (``handle``) and clock ticks (``on_timer``); everything it wants sent goes out through the
``emit(peer, message, call_id)`` callable it was given, in order. Callers on other threads use the
public methods (``send_call``, ``latest_observation``, ...); one re-entrant lock guards the state.

Invariants
----------
* Nothing on the caller's side blocks on the engine: ``latest_observation`` reads a slot,
  ``send_call`` queues a message and returns an ``EngineCall`` at once. Only ``wait_for_engine`` and
  ``wait_observation`` (lock-step) wait, each with a timeout.
* Observations: latest wins. Only the newest observation of the current session is kept; one from
  an older session, with a seq not above the newest, or older than ``max_obs_age_ms`` is never
  returned.
* Every call ends in exactly one terminal state (``records.TERMINAL_STATES``):
  ``calls == done + failed + rejected + lost + timeout + in_flight`` at all times.
* One engine at a time: the newest ``hello`` wins; the previous peer, if still connected, gets a
  fatal ``superseded`` error. A repeated hello of the live session (same peer, session and tools)
  is idempotent.
* A session silent for ``max(bridge, engine heartbeat_ms) * heartbeat_misses`` is dropped.
* Crowd sessions (protocol 1.1, a hello with ``agents``): latest wins *per agent*; every ``obs`` names
  a valid agent id (an agent's first observation makes it join, up to the hello's ``max_agents``),
  ``seq`` increases per agent, ``bye`` with ``agent`` makes one agent leave (its calls in flight end
  ``lost``), and every call names an agent present now (else it is ``rejected``, code
  ``unknown_agent``). A session without ``agents`` behaves exactly as before.

Times: ``now`` and every stored instant are ``time.monotonic`` seconds; ``*_ms`` milliseconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from tickcall.envs.engine_bridge_config import BridgeConfig
from tickcall.envs.engine_bridge_messages import (
    ENGINE_MESSAGES,
    AckMsg,
    AgentByeMsg,
    AgentCallMsg,
    ByeMsg,
    CallMsg,
    CrowdWelcomeMsg,
    EngineMessage,
    Envelope,
    EpisodeMsg,
    HelloMsg,
    ObsMsg,
    PingMsg,
    PlayedObsMsg,
    PongMsg,
    ProtocolError,
    ResultMsg,
    StepMsg,
    WelcomeMsg,
)
from tickcall.envs.engine_bridge_protocol import check_obs, render_values
from tickcall.envs.engine_bridge_records import (
    AgentSlot,
    CallOutcome,
    EngineCall,
    EngineCallError,
    Observation,
    PeerLimiter,
    Session,
    settle,
)
from tickcall.models.calls import Call
from tickcall.models.tools import ToolSchemaError, ToolSpec, normalize_tools, validate_arguments

from tickcall.timing import summary

log = logging.getLogger("tickcall.engine_bridge")

Emit = Callable[[bytes, Envelope, "int | None"], None]
_TAGS = {cls: tag for tag, cls in ENGINE_MESSAGES.items()}
COUNTERS = (
    "calls", "done", "failed", "rejected", "lost", "timeout", "late_replies",
    "obs_received", "obs_replaced", "obs_taken", "obs_stale_queries",
    "errors_sent", "errors_suppressed", "send_failures", "sessions", "sessions_lost", "rehellos",
    "pings_sent", "pongs_received", "episodes", "steps_sent", "io_errors",
    "agents_joined", "agents_left", "obs_played", "played_dropped")
MAX_AGENT_IDS = 4096  # agent ids whose observations are counted one by one (obs_by_agent)
MAX_AGENT_EVENTS = 200  # join/leave events kept in ``events`` per bridge; later ones are only counted


class EngineRefused(RuntimeError):
    """An engine's hello was refused with a fatal error; ``error`` is the ``ProtocolError`` sent to it."""

    def __init__(self, error: ProtocolError) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


class BridgeState:
    """The state machine behind ``EngineBridge`` (see module docstring)."""

    def __init__(self, config: BridgeConfig, epoch: str, emit: Emit,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.epoch = epoch
        self._emit = emit
        self._clock = clock
        self._lock = threading.RLock()  # re-entrant: error replies may be emitted while it is held
        self._obs_cond = threading.Condition(self._lock)
        self._session: Session | None = None
        self._latest: Observation | None = None
        self._taken_seq = -1
        # crowd sessions: newest observation and newest seq taken, per agent present
        self._crowd_latest: dict[str, Observation] = {}
        self._crowd_taken: dict[str, int] = {}
        self._agent_events = 0
        # observations received per agent id over the bridge's life (every session), for reports and
        # tests ("every agent observed every frame"); at most MAX_AGENT_IDS ids, the rest are only
        # counted in obs_received
        self.obs_by_agent: dict[str, int] = {}
        self._calls: dict[int, EngineCall] = {}
        self._next_id = 1
        self._pinned: list[ToolSpec] | None = None
        self._limiter = PeerLimiter(config.errors_per_second)
        self._t0 = clock()
        self.counts: dict[str, int] = {k: 0 for k in COUNTERS}
        self.errors_by_code: dict[str, int] = {}
        self.events: list[dict[str, Any]] = []
        self.episodes: list[dict[str, Any]] = []
        # the newest hello refused with a fatal error while no session was live: wait_for_engine ends
        # with it at once (the engine will not get in until it is fixed and restarted)
        self.refused: ProtocolError | None = None
        self._ack_ms: deque[float] = deque(maxlen=100_000)
        self._result_ms: deque[float] = deque(maxlen=100_000)
        self._rtt_ms: deque[float] = deque(maxlen=10_000)
        # protocol 1.2: observations with ``played``, oldest first, for a recorder (config.keep_played;
        # when full the oldest goes and counts as played_dropped)
        self._played: deque[Observation] = deque()

    # ---- what the loop uses (any thread) --------------------------------------------------------
    @property
    def session(self) -> Session | None:
        return self._session

    def wait_for_engine(self, timeout_s: float, endpoint: str = "") -> HelloMsg:
        """Block until an engine has said hello; raises TimeoutError after ``timeout_s`` seconds, or
        ``EngineRefused`` at once when an engine's hello was refused with a fatal error (bad tools, wrong
        version): that engine cannot get in until it is fixed."""
        deadline = self._clock() + timeout_s
        with self._obs_cond:
            while self._session is None:
                if self.refused is not None:
                    raise EngineRefused(self.refused)
                left = deadline - self._clock()
                if left <= 0:
                    raise TimeoutError(f"no engine connected to {endpoint} within {timeout_s} s")
                self._obs_cond.wait(left)
            return self._session.hello

    def latest_observation(self, max_age_ms: float | None = None) -> Observation | None:
        """The newest observation of the current session, or None when there is none that is fresh
        (no engine, none yet, or older than ``max_age_ms``, default the config's). Never blocks."""
        max_age = self.config.max_obs_age_ms if max_age_ms is None else max_age_ms
        with self._lock:
            obs = self._latest
            if obs is None:
                return None
            if (self._clock() - obs.received) * 1e3 > max_age:
                self.counts["obs_stale_queries"] += 1
                return None
            self._mark_taken(obs)
            return obs

    def latest_observations(self, max_age_ms: float | None = None) -> dict[str, Observation]:
        """CROWD SESSIONS: the newest fresh observation of every agent present that has one (agents
        without a fresh one are left out); ``{}`` when no crowd engine is connected. Never blocks."""
        max_age = self.config.max_obs_age_ms if max_age_ms is None else max_age_ms
        with self._lock:
            now = self._clock()
            out: dict[str, Observation] = {}
            for agent, obs in self._crowd_latest.items():
                if (now - obs.received) * 1e3 > max_age:
                    self.counts["obs_stale_queries"] += 1
                    continue
                if self._crowd_taken.get(agent) != obs.seq:
                    self._crowd_taken[agent] = obs.seq
                    self.counts["obs_taken"] += 1
                out[agent] = obs
            return out

    def roster(self) -> list[str]:
        """CROWD SESSIONS: the agents present now, in join order (``[]`` without a crowd session)."""
        with self._lock:
            sess = self._session
            return list(sess.roster) if sess is not None else []

    def wait_crowd(self, timeout_s: float, min_agents: int = 1) -> int:
        """Block until the crowd session has fresh observations of at least ``min_agents`` agents (or of
        every agent present, when fewer are), or ``timeout_s`` passes; returns how many agents have an
        observation. For start-up only (a run waits for its crowd before its first tick)."""
        deadline = self._clock() + timeout_s
        with self._obs_cond:
            while True:
                sess = self._session
                have = len(self._crowd_latest)
                if sess is not None and sess.crowd and have and have >= min(min_agents, len(sess.roster)):
                    return have
                left = deadline - self._clock()
                if left <= 0:
                    return have
                self._obs_cond.wait(left)

    def wait_observation(self, after_seq: int, timeout_s: float) -> Observation | None:
        """LOCK-STEP ONLY (deterministic tests): block until an observation with seq > ``after_seq``
        arrives in the current session, or ``timeout_s`` passes (returns None)."""
        deadline = self._clock() + timeout_s
        with self._obs_cond:
            while True:
                obs = self._latest
                if obs is not None and obs.seq > after_seq:
                    self._mark_taken(obs)
                    return obs
                left = deadline - self._clock()
                if left <= 0:
                    return None
                self._obs_cond.wait(left)

    def take_played(self) -> list[Observation]:
        """Protocol 1.2: the observations with ``played`` received since the last call, oldest first
        (only when ``config.keep_played`` > 0). Never blocks."""
        with self._lock:
            out = list(self._played)
            self._played.clear()
            return out

    def observation_text(self, obs: Observation) -> str:
        """The per-tick text of an observation: the engine's ``text``, or its ``values`` rendered in
        the declared field order (``x=+0.012 v=-0.340``)."""
        sess = self._session
        if obs.text is not None:
            return obs.text
        if sess is None or obs.values is None:
            return ""
        return render_values(obs.values, sess.hello.observation)

    def send_call(self, call: Call | Mapping[str, Any], *, tick: int = -1, obs_seq: int = -1,
                  obs_t_ms: float | None = None, agent: str | None = None) -> EngineCall:
        """Queue ``call`` for the engine and return at once. A call the engine's tools do not allow,
        one made while no engine is connected, or one whose ``agent`` does not fit the session (a crowd
        session needs an agent present now; a single-agent session takes none) is ``rejected`` (never
        sent): its ``result`` future raises EngineCallError."""
        if not isinstance(call, Call):
            call = Call.from_dict(call)
        with self._lock:
            sess = self._session
            handle = EngineCall(id=self._next_id, call=call, session=sess.id if sess else "",
                                tick=tick, obs_seq=obs_seq, sent_at=self._clock(), agent=agent)
            self._next_id += 1
            self.counts["calls"] += 1
            if sess is None:
                self._finish(handle, "rejected", "no_engine", "no engine is connected")
                return handle
            why_agent = self._agent_problem(sess, agent)
            if why_agent:
                self._finish(handle, "rejected", "unknown_agent", why_agent)
                return handle
            spec = sess.tool_map.get(call.name)
            reason = (f"the engine offers no tool {call.name!r}" if spec is None
                      else validate_arguments(spec, call.arguments))
            if reason:
                self._finish(handle, "rejected", "illegal_call", reason)
                return handle
            self._calls[handle.id] = handle
            fields = dict(id=handle.id, name=call.name, arguments=dict(call.arguments), tick=tick,
                          obs_seq=obs_seq, obs_t_ms=obs_t_ms)
            msg = CallMsg(**fields) if agent is None else AgentCallMsg(**fields, agent=agent)
            self._emit(sess.peer, msg, handle.id)
        return handle

    @staticmethod
    def _agent_problem(sess: Session, agent: str | None) -> str:
        """Why ``agent`` cannot receive a call in ``sess`` ("" when it can)."""
        if not sess.crowd:
            return "" if agent is None else (f"agent {agent!r}: the engine {sess.hello.engine!r} runs a "
                                             "single agent (its hello declared no agents)")
        if agent is None:
            return (f"the engine {sess.hello.engine!r} runs a crowd: a call must name one of its agents "
                    f"({len(sess.roster)} present)")
        if agent not in sess.roster:
            return (f"agent {agent!r} is not present in the engine {sess.hello.engine!r} (it left, never "
                    f"joined, or the id is wrong; {len(sess.roster)} agents present)")
        return ""

    def step(self, seq: int, calls: list[int] | None = None) -> None:
        """LOCK-STEP ONLY: release the engine waiting on observation ``seq`` (after the calls in
        ``calls``, already sent, which the engine applies first)."""
        with self._lock:
            if self._session is None:
                return
            self.counts["steps_sent"] += 1
            self._emit(self._session.peer, StepMsg(seq=seq, calls=list(calls or [])), None)

    def pin_tools(self, tools: list[Any] | None) -> None:
        """Accept only engines offering exactly these tools from now on (None: any tools). A control
        loop pins the tools it registered with the model; an engine that comes back with others gets
        a fatal ``bad_tools`` error."""
        with self._lock:
            self._pinned = None if tools is None else normalize_tools(tools)

    def in_flight(self) -> list[EngineCall]:
        with self._lock:
            return list(self._calls.values())

    def stats(self, endpoint: str = "") -> dict[str, Any]:
        """Counters, per-code error counts, call latencies (ms: sent -> ack, sent -> result, ping
        round trip), session events and episodes. ``calls`` always equals the terminal states plus
        ``in_flight``."""
        with self._lock:
            counts = dict(self.counts)
            counts["in_flight"] = len(self._calls)
            sess = self._session
            return {
                "endpoint": endpoint, "epoch": self.epoch, "counts": counts,
                "errors_by_code": dict(self.errors_by_code),
                "ack_ms": summary(self._ack_ms, digits=3), "result_ms": summary(self._result_ms, digits=3),
                "ping_rtt_ms": summary(self._rtt_ms, digits=3),
                "engine": None if sess is None else {
                    "name": sess.hello.engine, "version": sess.hello.engine_version,
                    "session": sess.id, "tools": [t.name for t in sess.tools],
                    "lockstep": sess.hello.lockstep, "frame_hz": sess.hello.frame_hz,
                    **({"agents": len(sess.roster), "max_agents": sess.hello.crowd_size}
                       if sess.crowd else {})},
                "events": list(self.events), "episodes": list(self.episodes),
                **({"obs_by_agent": dict(self.obs_by_agent)} if self.obs_by_agent else {}),
            }

    # ---- what the socket loop feeds in (its I/O thread) ---------------------------------------------
    def handle(self, peer: bytes, msg: EngineMessage) -> None:
        """Apply one decoded engine message from ``peer``; raises ProtocolError to refuse it."""
        if isinstance(msg, HelloMsg):
            self._on_hello(peer, msg)
            return
        now = self._clock()
        with self._lock:
            sess = self._session
            if sess is None or sess.peer != peer:
                raise ProtocolError("no_session", "no live session for this peer (tickcall restarted, "
                                    "the session timed out, or hello was never sent): send hello",
                                    ref_type=_TAGS.get(type(msg)))
            sess.last_seen = now
            match msg:
                case ObsMsg():
                    self._on_obs(sess, msg, now)
                case AckMsg():
                    self._on_ack(msg, now)
                case ResultMsg():
                    self._on_result(msg, now)
                case EpisodeMsg():
                    if msg.agent is not None:
                        self._check_agent_field(sess, msg.agent, "episode", msg.index)
                    self.counts["episodes"] += 1
                    ep = {"index": msg.index, "return": msg.ret, "length": msg.length,
                          "reason": msg.reason, "session": sess.id}
                    if msg.agent is not None:
                        ep["agent"] = msg.agent
                    self.episodes.append(ep)
                case PingMsg():
                    self._emit(sess.peer, PongMsg(epoch=self.epoch, t_ms=msg.t_ms), None)
                case PongMsg():
                    self.counts["pongs_received"] += 1
                    rtt = (now - self._t0) * 1e3 - msg.t_ms
                    if 0 <= rtt < 60_000:
                        self._rtt_ms.append(rtt)
                case AgentByeMsg():
                    self._on_agent_bye(sess, msg, now)
                case ByeMsg():
                    self.counts["sessions_lost"] += 1
                    self._event("engine_bye", session=sess.id, reason=msg.reason)
                    self.end_session("lost", "engine_bye", "the engine said bye")

    def reply_error(self, peer: bytes, err: ProtocolError) -> None:
        """Count ``err`` and send it to ``peer`` unless its rate limit is spent (fatal ones always go)."""
        with self._lock:
            self.errors_by_code[err.code] = self.errors_by_code.get(err.code, 0) + 1
            allowed = err.fatal or self._limiter.allow(peer, self._clock())
            self.counts["errors_sent" if allowed else "errors_suppressed"] += 1
            if allowed:
                self._emit(peer, err.to_message(), None)
            if err.fatal and err.ref_type == "hello":
                self._event("engine_refused", code=err.code, message=err.message)
                if self._session is None:
                    self.refused = err
                    self._obs_cond.notify_all()
        log.debug("engine bridge: error to %r: %s", peer, err)

    def on_timer(self) -> None:
        """Heartbeats, liveness and call timeouts; the socket loop calls it every few ms."""
        now = self._clock()
        with self._lock:
            sess = self._session
            if sess is None:
                return
            silent_ms = (now - sess.last_seen) * 1e3
            limit_ms = max(self.config.heartbeat_ms, sess.hello.heartbeat_ms) * self.config.heartbeat_misses
            if silent_ms > limit_ms:
                self.counts["sessions_lost"] += 1
                self._event("engine_lost", session=sess.id, silent_ms=round(silent_ms, 1))
                self.end_session("lost", "engine_lost", f"no message from the engine for {silent_ms:.0f} ms")
                return
            ack_s, res_s = self.config.ack_timeout_ms / 1e3, self.config.result_timeout_ms / 1e3
            for handle in list(self._calls.values()):
                if handle.ack_at is None and now - handle.sent_at > ack_s:
                    self._finish(handle, "timeout", "ack_timeout",
                                 f"no ack within {self.config.ack_timeout_ms:.0f} ms")
                elif res_s > 0 and now - handle.sent_at > res_s:
                    self._finish(handle, "timeout", "result_timeout",
                                 f"no result within {self.config.result_timeout_ms:.0f} ms")
            if now - sess.last_ping >= self.config.heartbeat_ms / 1e3:
                sess.last_ping = now
                self.counts["pings_sent"] += 1
                self._emit(sess.peer, PingMsg(epoch=self.epoch, t_ms=(now - self._t0) * 1e3), None)

    def on_send_failed(self, call_id: int | None) -> None:
        """The socket could not deliver a message (peer gone, or not reading): its call is lost."""
        with self._lock:
            self.counts["send_failures"] += 1
            handle = self._calls.get(call_id) if call_id is not None else None
            if handle is not None:
                self._finish(handle, "lost", "send_failed", "the engine could not be reached "
                             "(disconnected or not reading its socket)")

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def say_bye(self, reason: str) -> None:
        """Tell the connected engine that tickcall is stopping."""
        with self._lock:
            if self._session is not None:
                self._emit(self._session.peer, ByeMsg(reason=reason), None)

    def end_session(self, state: str, code: str, message: str) -> None:
        """End the current session: its calls in flight end ``state`` with ``code``."""
        with self._lock:
            for handle in list(self._calls.values()):
                self._finish(handle, state, code, message)
            self._session = None
            self._latest = None
            self._crowd_latest.clear()
            self._crowd_taken.clear()
            self._obs_cond.notify_all()

    # ---- internals (lock held) -------------------------------------------------------------------
    def _on_obs(self, sess: Session, msg: ObsMsg, now: float) -> None:
        check_obs(msg, sess.hello.observation)
        if isinstance(msg, PlayedObsMsg):
            self._check_played(sess, msg)
        if sess.crowd or msg.agent is not None:
            self._on_agent_obs(sess, msg, now)
            return
        if msg.seq <= sess.newest_seq:
            raise ProtocolError("stale_observation", f"obs.seq={msg.seq} is not above the newest seq "
                                f"{sess.newest_seq} of this session; dropped", ref_type="obs",
                                ref_id=msg.seq)
        sess.newest_seq = msg.seq
        sess.obs_received += 1
        self.counts["obs_received"] += 1
        if self._latest is not None and self._latest.seq != self._taken_seq:
            self.counts["obs_replaced"] += 1
        self._latest = Observation.of(msg, session=sess.id, received=now)
        if self._latest.played is not None:
            self.counts["obs_played"] += 1
            if self.config.keep_played > 0:
                if len(self._played) >= self.config.keep_played:
                    self._played.popleft()
                    self.counts["played_dropped"] += 1
                self._played.append(self._latest)
        self._obs_cond.notify_all()

    @staticmethod
    def _check_played(sess: Session, msg: PlayedObsMsg) -> None:
        """Protocol 1.2: ``obs.played`` must be a legal call of the session's tools (``bad_played``)."""
        spec = sess.tool_map.get(msg.played.name)
        reason = (f"names no tool of this engine ({', '.join(t.name for t in sess.tools)})" if spec is None
                  else validate_arguments(spec, msg.played.arguments))
        if reason:
            raise ProtocolError("bad_played", f"obs.played {msg.played.name}(...) is not a legal call: "
                                f"{reason}; send the call the AI or player took as {{name, arguments}} of "
                                "the tools in hello", ref_type="obs", ref_id=msg.seq)

    def _check_agent_field(self, sess: Session, agent: str | None, mtype: str, ref: Any) -> None:
        """``agent`` in a ``mtype`` message must fit the session: required in a crowd, refused
        otherwise (the id's format was checked when decoding)."""
        if not sess.crowd and agent is not None:
            raise ProtocolError("bad_field", f"{mtype}.agent={agent!r}: this session's hello declared no "
                                "agents; leave agent out, or say hello with agents to run a crowd",
                                ref_type=mtype, ref_id=ref)
        if sess.crowd and agent is None:
            raise ProtocolError("bad_field", f"{mtype}.agent is required: this session's hello declared "
                                "agents (a crowd), so every observation names its agent",
                                ref_type=mtype, ref_id=ref)

    def _on_agent_obs(self, sess: Session, msg: ObsMsg, now: float) -> None:
        """A crowd session's observation: the agent joins if new (up to max_agents); seq per agent."""
        self._check_agent_field(sess, msg.agent, "obs", msg.seq)
        agent = msg.agent
        assert agent is not None
        slot = sess.roster.get(agent)
        if slot is None:
            limit = sess.hello.crowd_size
            if len(sess.roster) >= limit:
                raise ProtocolError("bad_field", f"obs.agent={agent!r} is a new agent but {limit} are "
                                    f"present already (hello.max_agents={limit}): have one say bye "
                                    "first, or raise max_agents", ref_type="obs", ref_id=msg.seq)
            slot = self._join(sess, agent, now)
        if msg.seq <= slot.newest_seq:
            raise ProtocolError("stale_observation", f"obs.seq={msg.seq} is not above the newest seq "
                                f"{slot.newest_seq} of agent {agent!r}; dropped", ref_type="obs",
                                ref_id=msg.seq)
        slot.newest_seq = msg.seq
        slot.obs_received += 1
        if agent in self.obs_by_agent or len(self.obs_by_agent) < MAX_AGENT_IDS:
            self.obs_by_agent[agent] = self.obs_by_agent.get(agent, 0) + 1
        sess.obs_received += 1
        self.counts["obs_received"] += 1
        old = self._crowd_latest.get(agent)
        if old is not None and old.seq != self._crowd_taken.get(agent):
            self.counts["obs_replaced"] += 1
        self._crowd_latest[agent] = Observation.of(msg, session=sess.id, received=now)
        self._obs_cond.notify_all()

    def _join(self, sess: Session, agent: str, now: float, event: bool = True) -> AgentSlot:
        """``agent`` joins (its first observation; ``event=False`` for the hello's roster, which the
        ``engine_connected`` event already names)."""
        slot = sess.roster[agent] = AgentSlot(joined=now)
        self.counts["agents_joined"] += 1
        if event:
            self._agent_event("agent_joined", agent=agent, present=len(sess.roster))
        return slot

    def _on_agent_bye(self, sess: Session, msg: AgentByeMsg, now: float) -> None:
        """One agent of a crowd leaves: its observation is dropped, its calls in flight end ``lost``."""
        if not sess.crowd:
            raise ProtocolError("bad_field", f"bye.agent={msg.agent!r}: this session's hello declared no "
                                "agents; leave agent out to end the session", ref_type="bye")
        if sess.roster.pop(msg.agent, None) is None:
            raise ProtocolError("bad_field", f"bye.agent={msg.agent!r} is not present in this session "
                                f"({len(sess.roster)} agents are)", ref_type="bye")
        self._crowd_latest.pop(msg.agent, None)
        self._crowd_taken.pop(msg.agent, None)
        self.counts["agents_left"] += 1
        self._agent_event("agent_left", agent=msg.agent, reason=msg.reason, present=len(sess.roster))
        for handle in list(self._calls.values()):
            if handle.agent == msg.agent:
                self._finish(handle, "lost", "agent_left", f"agent {msg.agent!r} left the engine")

    def _agent_event(self, event: str, **info: Any) -> None:
        """Join/leave events: the first MAX_AGENT_EVENTS go into ``events``, all are counted."""
        self._agent_events += 1
        if self._agent_events <= MAX_AGENT_EVENTS:
            self._event(event, **info)

    def _on_ack(self, msg: AckMsg, now: float) -> None:
        handle = self._calls.get(msg.id)
        if handle is None:
            self._late_or_unknown(msg.id, "ack")
        elif handle.ack_at is None:
            self._record_ack(handle, msg.frame, now)
            settle(handle.acked, msg.frame)

    def _on_result(self, msg: ResultMsg, now: float) -> None:
        handle = self._calls.get(msg.id)
        if handle is None:
            self._late_or_unknown(msg.id, "result")
            return
        if handle.ack_at is None:  # a result implies the ack
            self._record_ack(handle, msg.frame, now)
        result_ms = (now - handle.sent_at) * 1e3
        self._result_ms.append(result_ms)
        if msg.ok:
            ack_ms = ((handle.ack_at or now) - handle.sent_at) * 1e3
            self._finish(handle, "done", "ok", "", CallOutcome(
                id=msg.id, value=msg.value, ack_frame=handle.ack_frame, result_frame=msg.frame,
                ack_ms=ack_ms, result_ms=result_ms))
        else:
            err = msg.error
            self._finish(handle, "failed", (err.code if err else "") or "engine_error",
                         err.message if err else "")

    def _on_hello(self, peer: bytes, hello: HelloMsg) -> None:
        tools = self._check_hello_tools(hello)
        now = self._clock()
        with self._lock:
            self.refused = None  # an engine got in: an earlier refusal is history
            old = self._session
            if old is not None and old.peer == peer and old.id == hello.session and old.tools == tools:
                # the same engine session saying hello again (it missed our welcome or thought we
                # were gone): idempotent, the session and its calls go on
                old.hello = hello
                old.last_seen = now
                self.counts["rehellos"] += 1
            else:
                if old is not None:
                    self._replace_session(old, peer, hello)
                self._session = Session(peer=peer, hello=hello, tools=tools, started=now,
                                        last_seen=now, last_ping=now)
                for agent in hello.agents or ():
                    self._join(self._session, agent, now, event=False)
                self._taken_seq = -1
                self.counts["sessions"] += 1
                crowd = {"agents": len(hello.agents or ()), "max_agents": hello.crowd_size} if hello.crowd else {}
                self._event("engine_connected", engine=hello.engine, session=hello.session,
                            tools=[t.name for t in tools], lockstep=hello.lockstep, **crowd)
                self._obs_cond.notify_all()
            welcome = dict(epoch=self.epoch, session=hello.session, heartbeat_ms=self.config.heartbeat_ms,
                           max_msg_bytes=self.config.max_msg_bytes, tools=[t.name for t in tools],
                           lockstep=hello.lockstep)
            if hello.crowd:  # protocol 1.1: the roster accepted and the most agents at once
                roster = list(self._session.roster) if self._session is not None else []
                self._emit(peer, CrowdWelcomeMsg(**welcome, agents=roster, max_agents=hello.crowd_size),
                           None)
            else:
                self._emit(peer, WelcomeMsg(**welcome), None)

    def _check_hello_tools(self, hello: HelloMsg) -> list[ToolSpec]:
        """The hello's tools, normalized: offerable to a model, the pinned ones if pinned, and its
        default call legal for them; raises a fatal ProtocolError otherwise."""
        try:
            tools = normalize_tools(hello.tools)
        except ToolSchemaError as exc:
            raise ProtocolError("bad_tools", str(exc), fatal=True, ref_type="hello") from None
        pinned = self._pinned
        if pinned is not None and tools != pinned:
            raise ProtocolError(
                "bad_tools", f"this tickcall run registered the tools {[t.name for t in pinned]} with "
                f"its model; the engine now offers {[t.name for t in tools]} (or changed their "
                "schemas): restart tickcall to use new tools", fatal=True, ref_type="hello")
        call = hello.default_call
        if call is not None:
            spec = {t.name: t for t in tools}.get(call.name)
            reason = "names no declared tool" if spec is None else validate_arguments(spec, call.arguments)
            if reason:
                raise ProtocolError("bad_field", f"hello.default_call is not a legal call: {reason}",
                                    fatal=True, ref_type="hello")
        return tools

    def _replace_session(self, old: Session, peer: bytes, hello: HelloMsg) -> None:
        restarted = old.id != hello.session
        code = "engine_restarted" if restarted else "engine_rehello"
        self._event(code, old_session=old.id, session=hello.session)
        self.end_session("lost", code, "the engine said hello again (new session)")
        if old.peer != peer:
            self.reply_error(old.peer, ProtocolError(
                "superseded", f"engine session {hello.session!r} ({hello.engine}) replaced this one",
                fatal=True))

    def _mark_taken(self, obs: Observation) -> None:
        if obs.seq != self._taken_seq:
            self._taken_seq = obs.seq
            self.counts["obs_taken"] += 1

    def _record_ack(self, handle: EngineCall, frame: int, now: float) -> None:
        """The call's first acknowledgement (an ``ack``, or a ``result`` that implies one)."""
        handle.ack_at = now
        handle.ack_frame = frame
        self._ack_ms.append((now - handle.sent_at) * 1e3)

    def _late_or_unknown(self, call_id: int, what: str) -> None:
        if 0 < call_id < self._next_id:
            self.counts["late_replies"] += 1  # a call that already ended (timeout, lost)
            return
        raise ProtocolError("unknown_call", f"{what} for call id {call_id}, which was never sent",
                            ref_type=what, ref_id=call_id)

    def _finish(self, handle: EngineCall, state: str, code: str, message: str,
                outcome: CallOutcome | None = None) -> None:
        if handle.done:
            return
        handle.state = state
        self._calls.pop(handle.id, None)
        self.counts[state] += 1
        if state == "done":
            settle(handle.acked, handle.ack_frame)
            settle(handle.result, outcome)
        else:
            error = EngineCallError(state, code, message)
            settle(handle.acked, exc=error)
            settle(handle.result, exc=error)

    def _event(self, event: str, **info: Any) -> None:
        self.events.append({"t_s": round(self._clock() - self._t0, 3), "event": event, **info})
        log.info("engine bridge: %s %s", event, info)
