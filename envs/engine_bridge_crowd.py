"""A game engine's NPC crowd as the world of a crowd loop (engine bridge, protocol 1.1).

``open_crowd_bridge("engine:tcp://127.0.0.1:5560", env_kwargs, agents=N)`` binds an ``EngineBridge``
there and waits for a crowd engine (a hello with ``agents``) and the first observations of its
agents; ``EngineCrowdWorld(bridge)`` is that engine seen as a crowd world, by shape
(``control_loop.world.CrowdWorld``: ``agents``, ``tools``, ``observe_all()``, ``history(agent)``,
``fallback(agent, kind)``, ``apply_call(agent, call)``, episodes, lifecycle). The composition root
builds it: ``tickcall.bridge_world.make_engine_crowd_world(spec)``. This module imports nothing of the
loop.

* ``agents``: the engine's agents present now (its roster: hello ``agents``, joins by a first
  observation, leaves by ``bye`` with ``agent``). While no engine is connected (killed, restarting)
  it stays the roster of the last session, so a crowd loop keeps ticking those agents and each of
  their ticks is counted as missing an observation, never dropped: a dead engine is counted, not
  hidden. A new engine's roster replaces it once that engine says hello.
* ``observe_all()`` never waits: the newest fresh observation of each agent that has one; an agent
  of ``agents`` without one (silent past ``max_obs_age_ms``) is left out and counted in ``missed``
  (per agent, in ``describe()``). When *no* agent of a non-empty roster has one (the engine is gone,
  restarting or frozen) it raises ``NoObservation``, as the single-agent world's ``observe`` does: the
  crowd loop then records that tick as an ``error`` for every agent it knew and applies their
  fallbacks, so a dead engine's agent-ticks are counted, never dropped.
* ``apply_call(agent, call)`` sends the call at once (set-point semantics: the engine keeps it in
  force until the agent's next call) and returns its ``EngineCall``; the call names the agent, the
  tick and the agent's observation it answers (``obs_seq``, ``obs_t_ms``). A call for an agent that
  is not present, or while no engine is connected, is ``rejected`` with a clear reason (never sent).
* ``history(agent)``: that agent's recent calls as the status lines the single-agent loop shows
  (``fire()@f16 failed: cooldown: ...``, ``move(direction="E", speed="run")@f17 running 20ms``),
  numbered per agent.
* ``fallback(agent, kind)``: ``hold`` sends nothing; ``default``/``noop`` send the engine's declared
  ``default_call`` for that agent (hold when it declared none, or the agent or engine is gone).

Units: ``taken_at`` ``time.monotonic`` seconds; ``*_ms`` milliseconds.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tickcall.envs.engine_bridge import EngineBridge, EngineCall
from tickcall.envs.engine_bridge_notices import EngineNotices
from tickcall.envs.engine_bridge_state import EngineRefused
from tickcall.envs.engine_bridge_world import (
    WORLD_KWARGS,
    EngineWorldError,
    NoObservation,
    bridge_config,
)
from tickcall.models.calls import Call, render_call
from tickcall.models.prompt_text import CallStatus, status_line
from tickcall.models.tools import normalize_tools

__all__ = ["CROWD_KWARGS", "CrowdObservation", "EngineCrowdWorld", "open_crowd_bridge"]

# env_kwargs a crowd engine world understands: the single-agent world's, plus history_keep (calls
# remembered per agent for its history lines)
CROWD_KWARGS = (*WORLD_KWARGS, "history_keep")

# an EngineCall's state -> the history line's state (models.prompt_text.STATES)
_HISTORY_STATE = {
    "done": "done",
    "failed": "failed",
    "rejected": "rejected",
    "lost": "failed",
    "timeout": "timed_out",
}


@dataclass
class CrowdObservation:
    """One agent's observation as the loop reads it (the shape of ``control_loop.world.Observation``)."""

    text: str
    taken_at: float  # time.monotonic() seconds when the bridge received it
    episode: int = 0
    agent: str = ""
    data: dict[str, Any] | None = None
    seq: int = -1
    frame: int = -1
    t_ms: float = 0.0  # the engine's own clock at the observation (ms), echoed in calls as obs_t_ms


@dataclass
class _AgentBook:
    """What the world keeps per agent: its recent calls (for history lines) and its counters."""

    recent: deque[tuple[int, EngineCall]]
    taken: tuple[int, int, float] | None = None  # (tick, obs seq, obs t_ms) of the newest obs taken
    next_n: int = 1  # per-agent call number (the ``@fN`` of its history lines)
    observed: int = 0
    missed: int = 0
    calls: int = 0  # calls sent for it (its own and its fallbacks' default calls)
    ended: dict[str, int] = field(default_factory=dict)  # calls by terminal state
    fallbacks: dict[str, int] = field(default_factory=dict)


class EngineCrowdWorld:
    """An engine's crowd behind a bridge, seen as a crowd world by a crowd loop (module docstring)."""

    def __init__(
        self, bridge: EngineBridge, *, env_id: str, history_chars: int = 40, history_keep: int = 8
    ) -> None:
        sess = bridge.session
        if sess is None:
            raise EngineWorldError("no engine connected: call bridge.wait_for_engine() first")
        if not sess.crowd:
            raise EngineWorldError(
                f"the engine {sess.hello.engine!r} runs a single agent (its hello has "
                "no agents): use the single-agent world (make_engine_world)"
            )
        self.bridge = bridge
        self.env_id = env_id
        self.history_chars = history_chars
        self.history_keep = max(1, int(history_keep))
        self._tools = [dict(t) for t in sess.hello.tools]
        self.specs = normalize_tools(self._tools)
        self._order = {s.name: tuple(s.param_names) for s in self.specs}
        self.engine_name = sess.hello.engine
        self._lock = threading.Lock()
        self._books: dict[str, _AgentBook] = {}
        self._roster: list[str] = bridge.roster()  # kept while no engine is connected
        self._observed_roster: list[str] = []  # the roster the last observe_all went through
        self._tick = -1
        self.observe_calls = 0
        self._notices = EngineNotices()
        bridge.pin_tools(self._tools)

    # ---- what the loop uses -----------------------------------------------------------------
    @property
    def tools(self) -> list[dict[str, Any]]:
        return [dict(t) for t in self._tools]

    @property
    def agents(self) -> list[str]:
        """The engine's agents present now; the last session's while no engine is connected."""
        if self.bridge.connected:
            roster = self.bridge.roster()
            with self._lock:
                self._roster = roster
        with self._lock:
            return list(self._roster)

    def observe_all(self) -> dict[str, CrowdObservation]:
        """The newest fresh observation of every agent that has one (never waits); agents of
        ``agents`` without one are left out and counted as ``missed``. Raises ``NoObservation`` when
        agents are on the roster but none has a fresh observation (engine gone or silent)."""
        roster = self.agents
        fresh = self.bridge.latest_observations()
        out: dict[str, CrowdObservation] = {}
        with self._lock:
            self._tick += 1
            self.observe_calls += 1
            self._observed_roster = list(roster)
            for agent in roster:
                book = self._book(agent)
                obs = fresh.get(agent)
                if obs is None:
                    book.missed += 1
                    continue
                book.observed += 1
                book.taken = (self._tick, obs.seq, obs.t_ms)
                out[agent] = CrowdObservation(
                    text=self.bridge.observation_text(obs),
                    taken_at=obs.received,
                    episode=obs.episode,
                    agent=agent,
                    data=obs.values,
                    seq=obs.seq,
                    frame=obs.frame,
                    t_ms=obs.t_ms,
                )
        if roster and not out:
            why = (
                "no engine connected"
                if not self.bridge.connected
                else (
                    f"no observation from {self.engine_name} for any of its {len(roster)} agents in the last "
                    f"{self.bridge.config.max_obs_age_ms:.0f} ms"
                )
            )
            raise NoObservation(f"{why} ({len(roster)} agents missed this tick)")
        return out

    def unobserved(self, observations: Mapping[str, Any]) -> list[str]:
        """Optional hook the crowd loop reads: agents present now without a fresh observation in
        ``observations`` (each still gets its agent-tick, an ``error``, and its fallback)."""
        with self._lock:  # the roster observe_all went through (an agent joining since is not missed)
            roster = list(self._observed_roster)
        return [a for a in roster if a not in observations]

    def observed_all(self, tick: int, observations: Mapping[str, Any]) -> None:
        """Optional hook: the loop names the tick that took ``observations`` (default: the world
        numbers its ``observe_all`` calls from 0), so each call carries the loop's own tick."""
        with self._lock:
            self._tick = tick
            for agent, obs in observations.items():
                book = self._books.get(agent)
                if book is not None:
                    book.taken = (tick, getattr(obs, "seq", -1), getattr(obs, "t_ms", 0.0))

    def history(self, agent: str) -> list[str]:
        """That agent's recent calls, oldest first, as history lines (numbered per agent)."""
        with self._lock:
            book = self._books.get(agent)
            items = list(book.recent) if book is not None else []
        now = time.monotonic()
        return [status_line(self._status(n, handle, now), self.history_chars) for n, handle in items]

    def fallback(self, agent: str, kind: str) -> str:
        """``hold`` (send nothing) or ``default``/``noop`` (the engine's default call, for ``agent``)."""
        done = "hold"
        sess = self.bridge.session
        default = sess.hello.default_call if sess is not None else None
        if kind in ("default", "noop") and default is not None and agent in sess.roster:
            self._send(agent, Call(default.name, dict(default.arguments)), remember=False)
            done = kind
        with self._lock:
            book = self._book(agent)
            book.fallbacks[done] = book.fallbacks.get(done, 0) + 1
        return done

    def apply_call(self, agent: str, call: Any) -> EngineCall:
        """Send ``call`` for ``agent`` now and return its ``EngineCall`` (never waits for the engine)."""
        return self._send(agent, call if isinstance(call, Call) else Call.from_dict(call), remember=True)

    def episodes_done(self) -> int:
        return len(self.bridge.episodes)

    def episodes(self) -> list[dict[str, Any]]:
        """Episodes the engine reported finished, each with its ``agent``."""
        return [dict(e) for e in self.bridge.episodes]

    def current_episode(self) -> dict[str, Any]:
        """Per agent present: its episode index and return so far (from its newest observation)."""
        latest = self.bridge.latest_observations(max_age_ms=float("inf"))
        agents = {a: {"index": o.episode, "return": o.ret, "frame": o.frame} for a, o in latest.items()}
        indices = [a["index"] for a in agents.values()]
        return {"index": min(indices) if indices else None, "return": None, "length": None, "agents": agents}

    def notices(self) -> list[str]:
        """One line per engine event and per kind of refused message since the last call (throttled)."""
        with self._lock:
            return self._notices.update(self.bridge.stats())

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> EngineCrowdWorld:
        return self  # the engine runs its own frame loop

    def stop(self) -> None:
        """Nothing to stop: the engine keeps its frame loop; ``close`` ends the session."""

    def close(self) -> None:
        self.bridge.close()

    def describe(self) -> dict[str, Any]:
        """The engine, its crowd, per-agent counts (observed, missed, calls by state, fallbacks) and
        the bridge's counters. ``observed + missed`` per agent is the ticks that agent was on the
        roster; ``calls`` per agent equals the sum of its ``states`` (``in_flight`` included)."""
        stats = self.bridge.stats()
        with self._lock:
            per_agent: dict[str, dict[str, Any]] = {}
            for agent, book in self._books.items():
                states = dict(book.ended)
                states["in_flight"] = book.calls - sum(book.ended.values())
                per_agent[agent] = {
                    "observed": book.observed,
                    "missed": book.missed,
                    "calls": book.calls,
                    "states": states,
                    "fallbacks": dict(book.fallbacks),
                }
        return {
            "env": self.env_id,
            "tools": [s.name for s in self.specs],
            "engine": stats["engine"],
            "agents": self.agents,
            "observe_calls": self.observe_calls,
            "observe_failures": sum(b.get("missed", 0) for b in per_agent.values()),
            "per_agent": per_agent,
            "bridge": {
                k: stats[k]
                for k in (
                    "endpoint",
                    "counts",
                    "errors_by_code",
                    "ack_ms",
                    "result_ms",
                    "ping_rtt_ms",
                    "events",
                )
                if k in stats
            }
            | {"obs_by_agent": stats.get("obs_by_agent", {})},
        }

    # ---- internals ------------------------------------------------------------------------------
    def _book(self, agent: str) -> _AgentBook:
        book = self._books.get(agent)
        if book is None:
            book = self._books[agent] = _AgentBook(recent=deque(maxlen=self.history_keep))
        return book

    def _send(self, agent: str, call: Call, *, remember: bool) -> EngineCall:
        with self._lock:
            book = self._book(agent)
            tick, seq, t_ms = book.taken if book.taken is not None else (-1, -1, None)
        with self._lock:
            book.calls += 1
        handle = self.bridge.send_call(call, tick=tick, obs_seq=seq, obs_t_ms=t_ms, agent=agent)
        # counted when it ends (on the bridge's I/O thread, or here at once when it was rejected)
        handle.result.add_done_callback(lambda _f, b=book, h=handle: self._ended(b, h))
        if remember:
            with self._lock:
                book.recent.append((book.next_n, handle))
                book.next_n += 1
        return handle

    def _ended(self, book: _AgentBook, handle: EngineCall) -> None:
        with self._lock:
            book.ended[handle.state] = book.ended.get(handle.state, 0) + 1

    def _status(self, n: int, handle: EngineCall, now: float) -> CallStatus:
        call = render_call(handle.call, self._order.get(handle.call.name))
        if not handle.done:
            acked = handle.ack_at is not None
            since = handle.ack_at if acked else handle.sent_at
            return CallStatus(
                call, f"f{n}", "running" if acked else "queued", age_ms=max(0.0, now - since) * 1e3
            )
        if handle.state == "done":
            outcome = handle.result.result(timeout=0)
            return CallStatus(call, f"f{n}", "done", result=getattr(outcome, "value", None))
        error = None
        try:
            handle.result.result(timeout=0)
        except Exception as exc:  # EngineCallError: "cooldown: fire is cooling down: 3 steps left"
            error = str(exc)
        return CallStatus(call, f"f{n}", _HISTORY_STATE.get(handle.state, "failed"), error=error)


def open_crowd_bridge(
    env: str, env_kwargs: Mapping[str, Any] | None = None, *, agents: int | None = None
) -> EngineBridge:
    """Bind the bridge ``env`` (``engine:tcp://HOST:PORT``) names and wait up to ``wait_s``
    (env_kwargs, default 60 s) for a crowd engine's hello and the first observations of ``agents``
    of its agents (all present, when fewer; default: the hello's roster); an engine that may run more
    than ``agents`` at once (its ``max_agents``) is refused. ``history_keep`` and
    ``lane_timeout_s`` belong to the caller and are ignored here. Raises EngineWorldError (one line)
    for unknown env_kwargs, no engine in time, a refused hello, or a single-agent engine; the bridge is
    closed then."""
    cfg, wait_s = bridge_config(env, env_kwargs, CROWD_KWARGS)
    bridge = EngineBridge(cfg).start()
    try:
        t0 = time.monotonic()
        hello = bridge.wait_for_engine(timeout_s=wait_s)
        if not hello.crowd:
            raise EngineWorldError(
                f"the engine on {cfg.endpoint} runs a single agent (its hello has no "
                "agents): start it with --agents N, or run with agents=1"
            )
        if agents is not None and hello.crowd_size > agents:
            # the run's service was sized for ``agents`` streams: more agents would be refused there
            raise EngineWorldError(
                f"the engine on {cfg.endpoint} may run up to {hello.crowd_size} agents at once "
                f"(hello.max_agents) but this run is for {agents}: run with --agents {hello.crowd_size}, "
                f"or start the engine with --agents {agents}"
            )
        want = agents if agents is not None else max(1, len(hello.agents or ()))
        left = max(0.0, wait_s - (time.monotonic() - t0))
        if bridge.state.wait_crowd(left, min_agents=want) == 0:
            raise TimeoutError(
                f"the crowd engine on {cfg.endpoint} said hello but sent no observation within {wait_s} s"
            )
        return bridge
    except EngineRefused as exc:  # at once: waiting longer would not let this engine in
        bridge.close()
        raise EngineWorldError(
            f"the engine on {cfg.endpoint} was refused ({exc}); fix its hello and restart it"
        ) from None
    except TimeoutError as exc:
        bridge.close()
        raise EngineWorldError(
            f"{exc}: start the engine (it connects to {cfg.endpoint}), e.g. "
            "engines/build/tickcall-reference-engine --agents 4 --connect "
            f"{cfg.endpoint}, or wait longer with --wait-s"
        ) from None
    except BaseException:
        bridge.close()
        raise
