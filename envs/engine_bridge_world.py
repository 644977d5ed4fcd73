"""An external game engine as the *world* of a tickcall control loop (engine bridge, mode 1).

``open_bridge("engine:tcp://127.0.0.1:5560", env_kwargs)`` binds an ``EngineBridge`` there and waits
for an engine's hello and first observation; ``EngineWorld(bridge, hands=...)`` is that engine seen
as a world, by shape (``control_loop.world.World``: ``tools``, ``observe()``, ``fallback(kind)``,
``apply_call``, ``hands``, ``episodes()``, ``describe()``, ...). The composition root builds the
hands and the world: ``tickcall.bridge_world.make_engine_world(spec)``, what
``tickcall run --env engine:tcp://127.0.0.1:5560`` uses. This module imports nothing of the loop.

* ``observe()`` never waits: it returns the newest observation of the connected engine; when there
  is none that is fresh (engine gone, restarting, silent past ``max_obs_age_ms``) it raises
  ``NoObservation`` and the loop records the tick and applies its fallback.
* ``hands`` (given by the caller): an AsyncFC whose lane calls ``EngineActuator``, which sends the
  call to the engine and waits (in the lane's worker thread, never on the tick path) for the
  engine's ``result``: the engine's value, or ``EngineCallError`` with the engine's error code.
* The tools are the engine's (from its hello) and stay pinned for the run: an engine that comes back
  with different tools is refused with a fatal ``bad_tools`` error (the model registered the old ones).
* Fallbacks: ``hold`` sends nothing (the engine keeps the last call in force); ``default`` and
  ``noop`` send the engine's declared ``default_call`` (or hold when it declared none or is gone).

``run_lockstep`` is the deterministic driver for engines that said ``lockstep: N`` in their hello:
LOCK-STEP, FOR TESTS AND EVALUATION ONLY (the engine waits for tickcall after every observation).

Units: ``*_s`` seconds, ``*_ms`` milliseconds, ``taken_at`` on ``time.monotonic``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tickcall.envs.engine_bridge import (
    DEFAULT_ENDPOINT,
    BridgeConfig,
    EngineBridge,
    EngineCallError,
)
from tickcall.envs.engine_bridge_notices import EngineNotices
from tickcall.envs.engine_bridge_state import EngineRefused
from tickcall.models.calls import Call
from tickcall.models.tools import normalize_tools

ENGINE_PREFIX = "engine:"
# env_kwargs an engine world understands (everything else is refused with a clear message):
# wait_s (s, for the engine's hello and first observation), lane_timeout_s (s, the hands' lane
# completion timeout) and every BridgeConfig field
WORLD_KWARGS = ("wait_s", "lane_timeout_s") + tuple(BridgeConfig.__dataclass_fields__)


class NoObservation(RuntimeError):
    """No fresh observation: no engine connected, or it has been silent too long."""


class EngineWorldError(ValueError):
    """An engine world that cannot be made (bad spec, no engine within the wait)."""


@dataclass
class WorldObservation:
    """What the loop reads each tick (the shape of ``control_loop.world.Observation``)."""

    text: str
    taken_at: float  # time.monotonic() seconds when the bridge received it
    episode: int = 0
    data: dict[str, Any] | None = None
    seq: int = -1
    frame: int = -1
    t_ms: float = 0.0  # the engine's own clock at the observation (ms), echoed in calls as obs_t_ms
    played: dict[str, Any] | None = None  # protocol 1.2: the engine's AI's call on it ({name, arguments})


class TickObservations:
    """Which observation each loop tick decided on: tick -> (obs ``seq``, obs ``t_ms``), the newest
    ``keep`` ticks. The loop tells the world at the tick's start (``EngineWorld.observed``); the
    actuator reads it when the tick's call goes out, so the call names the observation it answers."""

    def __init__(self, keep: int = 256) -> None:
        self.keep = keep
        self._by_tick: dict[int, tuple[int, float]] = {}
        self._newest: tuple[int, int, float] | None = None  # (tick, seq, t_ms)
        self._lock = threading.Lock()

    def note(self, tick: int, seq: int, t_ms: float) -> None:
        with self._lock:
            self._by_tick[tick] = (seq, t_ms)
            self._newest = (tick, seq, t_ms)
            while len(self._by_tick) > self.keep:
                self._by_tick.pop(next(iter(self._by_tick)))  # dicts keep insertion order: the oldest

    def of(self, tick: int | None) -> tuple[int, int, float | None]:
        """``(tick, obs_seq, obs_t_ms)`` for ``tick``; ``(-1, -1, None)`` when it is not known."""
        with self._lock:
            if tick is not None and tick in self._by_tick:
                seq, t_ms = self._by_tick[tick]
                return tick, seq, t_ms
        return -1, -1, None

    def newest(self) -> tuple[int, int, float | None]:
        """The newest tick that took an observation (what a fallback call answers)."""
        with self._lock:
            return self._newest if self._newest is not None else (-1, -1, None)


def endpoint_from_spec(env: str) -> str:
    """``engine:tcp://127.0.0.1:5560`` -> ``tcp://127.0.0.1:5560``; ``engine:`` -> the default."""
    if not env.startswith(ENGINE_PREFIX):
        raise EngineWorldError(f"{env!r} is not an engine spec (expected engine:tcp://HOST:PORT)")
    endpoint = env[len(ENGINE_PREFIX):] or DEFAULT_ENDPOINT
    if not endpoint.startswith(("tcp://", "ipc://", "inproc://")):
        raise EngineWorldError(f"{env!r}: the endpoint must be tcp://HOST:PORT (or ipc://PATH)")
    return endpoint


class EngineActuator:
    """Actuator for the futures layer: send a call to the engine and wait for its result.

    Returns the engine's result value (what the history line shows: ``fire()@f16 done: {"hit":
    true}``); raises ``EngineCallError`` (``cooldown: ...``) for an error result, a call the engine
    never acknowledged, a lost engine, or an illegal call."""

    def __init__(self, bridge: EngineBridge, timeout_s: float = 5.0, ticks: TickObservations | None = None) -> None:
        self.bridge = bridge
        self.timeout_s = timeout_s
        self.ticks = ticks if ticks is not None else TickObservations()

    def __call__(self, call: Call, ctx: Any = None) -> Any:
        """``ctx``: the futures layer's ``CallContext`` (lane ``context=True``); its ``seq`` is the tick."""
        tick, obs_seq, obs_t_ms = self.ticks.of(getattr(ctx, "seq", None))
        handle = self.bridge.send_call(call, tick=tick, obs_seq=obs_seq, obs_t_ms=obs_t_ms)
        try:
            return handle.result.result(timeout=self.timeout_s).value
        except TimeoutError:
            raise EngineCallError("timeout", "actuator_timeout",
                                  f"no result within {self.timeout_s} s") from None


class _NoPhysics:
    """The engine runs its own frame loop: there is no physics thread here to start or stop."""

    physics_hz = None

    def stop(self) -> None:
        pass


class EngineWorld:
    """The engine behind a bridge, seen as a world by the control loop (see module docstring)."""

    def __init__(self, bridge: EngineBridge, *, env_id: str, history_chars: int = 40,
                 hands: Any = None, ticks: TickObservations | None = None) -> None:
        hello = bridge.session.hello if bridge.session else None
        if hello is None:
            raise EngineWorldError("no engine connected: call bridge.wait_for_engine() first")
        self.bridge = bridge
        self.env_id = env_id
        self.history_chars = history_chars
        self.hands = hands
        self.rt = _NoPhysics()
        self._tools = [dict(t) for t in hello.tools]
        self.specs = normalize_tools(self._tools)
        self.engine_name = hello.engine
        self.game = hello.game  # the gymnasium id of the game it plays (protocol 1.2), or None
        self.fallbacks: dict[str, int] = {}
        self.observe_failures = 0
        self.ticks = ticks if ticks is not None else TickObservations()  # shared with the actuator
        self._notices = EngineNotices()
        self._notices_lock = threading.Lock()
        bridge.pin_tools(self._tools)

    # ---- what the loop uses -----------------------------------------------------------------
    @property
    def tools(self) -> list[dict[str, Any]]:
        return [dict(t) for t in self._tools]

    def observe(self) -> WorldObservation:
        """The newest fresh observation; raises NoObservation (never waits)."""
        obs = self.bridge.latest_observation()
        if obs is None:
            self.observe_failures += 1
            why = "no engine connected" if not self.bridge.connected else (
                f"no observation from {self.engine_name} in the last "
                f"{self.bridge.config.max_obs_age_ms:.0f} ms")
            raise NoObservation(why)
        return WorldObservation(text=self.bridge.observation_text(obs), taken_at=obs.received,
                                episode=obs.episode, data=obs.values, seq=obs.seq, frame=obs.frame, t_ms=obs.t_ms,
                                played=obs.played.to_dict() if obs.played is not None else None)

    def observed(self, tick: int, obs: WorldObservation) -> None:
        """The loop took ``obs`` for ``tick`` (its optional world hook): the tick's call will carry
        ``tick``, ``obs_seq`` and ``obs_t_ms``."""
        self.ticks.note(tick, obs.seq, obs.t_ms)

    def notices(self) -> list[str]:
        """One line per engine event (connected, lost, left, refused) and per kind of message the
        bridge refused, since the last call, throttled (``envs.engine_bridge_notices``)."""
        with self._notices_lock:
            return self._notices.update(self.bridge.stats())

    def fallback(self, kind: str) -> str:
        """``hold`` (send nothing) or ``default``/``noop`` (send the engine's default call)."""
        done = "hold"
        sess = self.bridge.session
        default = sess.hello.default_call if sess is not None else None
        if kind in ("default", "noop") and default is not None:
            tick, obs_seq, obs_t_ms = self.ticks.newest()
            self.bridge.send_call(Call(default.name, dict(default.arguments)), tick=tick, obs_seq=obs_seq,
                                  obs_t_ms=obs_t_ms)
            done = kind
        self.fallbacks[done] = self.fallbacks.get(done, 0) + 1
        return done

    def apply_call(self, call: Any) -> Any:
        """Send a call directly (used when the world has no hands); returns the ``EngineCall``."""
        return self.bridge.send_call(call if isinstance(call, Call) else Call.from_dict(call))

    def episodes_done(self) -> int:
        return len(self.bridge.episodes)

    def episodes(self) -> list[dict[str, Any]]:
        """Episodes the engine reported finished: ``{"return", "length", "index", "reason", "session"}``."""
        return [dict(e) for e in self.bridge.episodes]

    def current_episode(self) -> dict[str, Any]:
        obs = self.bridge.latest_observation(max_age_ms=float("inf"))
        if obs is None:
            return {"index": None, "return": None, "length": None}
        return {"index": obs.episode, "return": obs.ret, "length": None, "frame": obs.frame}

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> EngineWorld:
        return self  # the engine runs its own frame loop

    def stop(self) -> None:
        """Nothing to stop: the engine keeps its own frame loop, and the bridge stays open so calls in
        flight can still end (``close`` ends the session)."""

    def close(self) -> None:
        try:
            if self.hands is not None:
                self.hands.shutdown(timeout_s=0.5)
        finally:
            self.bridge.close()

    def describe(self) -> dict[str, Any]:
        stats = self.bridge.stats()
        out: dict[str, Any] = {
            "env": self.env_id, "game": self.game, "tools": [s.name for s in self.specs], "engine": stats["engine"],
            "fallbacks": dict(self.fallbacks), "observe_failures": self.observe_failures,
            "bridge": {k: stats[k] for k in ("endpoint", "counts", "errors_by_code", "ack_ms",
                                             "result_ms", "ping_rtt_ms", "events")},
        }
        if self.hands is not None:
            try:
                m = self.hands.metrics()
                out["hands"] = {k: m[k] for k in ("accepted", "finished", "in_flight", "states",
                                                  "late_results", "balanced", "dispatch_us") if k in m}
            except Exception:  # description is best effort
                pass
        return out


def bridge_config(env: str, env_kwargs: Mapping[str, Any] | None,
                  allowed: tuple[str, ...] = WORLD_KWARGS) -> tuple[BridgeConfig, float]:
    """The ``BridgeConfig`` and ``wait_s`` (s, default 60) of an ``engine:`` spec and its env_kwargs;
    keys in ``allowed`` that are not bridge settings belong to the caller and are dropped here.
    Raises EngineWorldError for unknown env_kwargs."""
    kwargs = dict(env_kwargs or {})
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise EngineWorldError(f"{env}: unknown env_kwargs {unknown}; an engine world takes {list(allowed)}")
    wait_s = float(kwargs.pop("wait_s", 60.0))
    fields = set(BridgeConfig.__dataclass_fields__)
    return BridgeConfig(endpoint=endpoint_from_spec(env),
                        **{k: v for k, v in kwargs.items() if k in fields}), wait_s


def open_bridge(env: str, env_kwargs: Mapping[str, Any] | None = None) -> EngineBridge:
    """Bind the bridge that ``env`` (``engine:tcp://HOST:PORT``) names and wait up to ``wait_s``
    (env_kwargs, default 60 s) for an engine's hello and its first observation (the first tick must
    find one). ``lane_timeout_s`` is the caller's (it belongs to the hands) and is ignored here.
    Raises EngineWorldError for unknown env_kwargs, no engine in time, or an engine that runs a crowd
    (protocol 1.1: ``envs.engine_bridge_crowd`` is its world); the bridge is closed then."""
    cfg, wait_s = bridge_config(env, env_kwargs)
    bridge = EngineBridge(cfg).start()
    try:
        t0 = time.monotonic()
        hello = bridge.wait_for_engine(timeout_s=wait_s)
        if hello.crowd:
            raise EngineWorldError(
                f"the engine on {cfg.endpoint} runs a crowd of up to {hello.crowd_size} agents (its hello "
                f"has agents): run it with agents={hello.crowd_size} (--agents {hello.crowd_size}), or "
                "start the engine without --agents")
        left = max(0.0, wait_s - (time.monotonic() - t0))
        if bridge.wait_observation(after_seq=-1, timeout_s=left) is None:
            raise TimeoutError(f"the engine on {cfg.endpoint} said hello but sent no observation "
                               f"within {wait_s} s")
        return bridge
    except EngineRefused as exc:  # at once: waiting longer would not let this engine in
        bridge.close()
        raise EngineWorldError(f"the engine on {cfg.endpoint} was refused ({exc}); fix its hello and "
                               "restart it") from None
    except TimeoutError as exc:
        bridge.close()
        raise EngineWorldError(f"{exc}: start the engine (it connects to {cfg.endpoint}), e.g. "
                               "engines/build/tickcall-reference-engine --connect "
                               f"{cfg.endpoint}, or wait longer with --wait-s") from None
    except BaseException:
        bridge.close()
        raise


# --------------------------------------------------------------------------- lock-step driver


@dataclass
class LockstepRecord:
    """One lock-step: the observation answered, the call sent (if any) and its engine outcome."""

    step: int
    seq: int
    text: str
    call: dict[str, Any] | None
    state: str
    code: str = ""
    ack_ms: float | None = None


@dataclass
class LockstepResult:
    records: list[LockstepRecord] = field(default_factory=list)
    timeouts: int = 0

    @property
    def states(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.records:
            out[r.state] = out.get(r.state, 0) + 1
        return out


def run_lockstep(bridge: EngineBridge, decide: Callable[[str], Call | Mapping[str, Any] | None],
                 steps: int, *, obs_timeout_s: float = 5.0, result_timeout_s: float = 5.0
                 ) -> LockstepResult:
    """LOCK-STEP (deterministic tests and evaluation only). For each of ``steps`` steps: wait for the
    engine's next observation, ask ``decide(text)`` for a call (None = no call), send it, wait for its
    result, then release the engine with ``step``. With a deterministic ``decide`` and a seeded
    engine, two runs give the same records."""
    out = LockstepResult()
    seq = -1
    for k in range(steps):
        obs = bridge.wait_observation(after_seq=seq, timeout_s=obs_timeout_s)
        if obs is None:
            out.timeouts += 1
            break
        seq = obs.seq
        text = bridge.observation_text(obs)
        call = decide(text)
        if call is None:
            out.records.append(LockstepRecord(k, seq, text, None, "no_call"))
            bridge.step(seq, [])
            continue
        handle = bridge.send_call(call, tick=k, obs_seq=seq)
        bridge.step(seq, [handle.id])
        rec = LockstepRecord(k, seq, text, handle.call.to_dict(), "in_flight")
        try:
            outcome = handle.result.result(timeout=result_timeout_s)
            rec.state, rec.ack_ms = "done", outcome.ack_ms
        except EngineCallError as exc:
            rec.state, rec.code = exc.state, exc.code
        except TimeoutError:
            rec.state, rec.code = "timeout", "lockstep_result_timeout"
        out.records.append(rec)
    return out


def engine_kwargs_help() -> str:
    """One line for CLI help: the env_kwargs an engine world takes."""
    return ", ".join(WORLD_KWARGS)
