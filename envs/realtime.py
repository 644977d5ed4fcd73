"""``RealTimeEnv``: the world advances on the wall clock whether or not the agent acts.

    from tickcall.envs.binding import make_binding
    from tickcall.envs.realtime import RealTimeEnv
    rt = RealTimeEnv(make_binding("tickcall/Arena-v0"), seed=0)      # physics at the env's rate
    with rt:                                    # starts the physics thread; stops it on exit
        snap = rt.latest()                      # newest obs, its time, episode info; never waits
        rt.apply(call)                          # a Call (converted by the binding) or a raw action
        ...
    rt.episodes                                 # finished episodes: return, length, seeds, times

Modes:

* ``"realtime"``: a background thread steps the env at ``physics_hz`` on absolute deadlines
  (``tickcall.timing.RateKeeper``: ``t0 + k / physics_hz``, never ``sleep(period)``). Each step
  uses the action applied last: **an action persists until replaced**, so a late decision costs
  score. When the thread falls behind it catches up (up to ``max_catchup`` steps at once) and then
  skips ahead, counting both.
* ``"lockstep"``: no thread; each ``apply`` runs ``hold_steps`` physics steps at once, so an
  evaluation is deterministic under a seed. ``hold_steps = physics_hz / decision_rate`` emulates a
  decision rate (CartPole at 50 Hz with ``hold_steps=3`` is about 16 Hz). Snapshot times are the
  simulated time (``steps / physics_hz``).

Episodes reset automatically; episode ``i`` resets with ``seed + i`` when a seed is given. With
``max_episodes`` the world stops stepping after that many episodes (``done`` becomes True).

Accounting: every apply is counted (``applied``), with ``superseded`` the actions replaced before any
physics step used them and ``rejected`` the calls the binding refused; every physics step is counted
with its lateness. The GIL: the physics thread shares the interpreter with the caller, so keep
``env.step`` cheap (the Arena costs ~20 us a step); heavy simulators belong in another process (see
FIELD-NOTES), e.g. behind the engine bridge.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tickcall.envs.binding import ActionResult, EnvBinding
from tickcall.models.calls import Call

from tickcall.timing import RateKeeper


@dataclass(frozen=True)
class Snapshot:
    """The newest observation. ``t`` is when it was produced (``time.monotonic`` seconds in real time,
    simulated seconds in lock-step); ``step`` counts physics steps in this episode."""

    obs: Any
    t: float
    step: int
    total_steps: int
    episode: int
    episode_return: float
    info: dict[str, Any]
    done: bool = False


@dataclass
class EpisodeRecord:
    """One finished episode (times in seconds on the snapshot clock)."""

    index: int
    seed: int | None
    episode_return: float
    length: int
    terminated: bool
    truncated: bool
    t_start: float
    t_end: float
    actions_applied: int
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["info"] = {k: v for k, v in self.info.items() if isinstance(v, int | float | str | bool)}
        return d


@dataclass
class ApplyResult:
    """What ``apply`` did: ``status`` ok/clipped/rejected (from the binding; raw actions are ok),
    ``total_steps`` the physics step count when it was applied (the action acts from the next one)."""

    status: str
    reason: str
    total_steps: int
    episode: int

    @property
    def ok(self) -> bool:
        return self.status != "rejected"


class RealTimeEnv:
    """Wall-clock (or lock-step) stepping of a gymnasium env; see the module docstring.

    Args:
        target: an ``EnvBinding`` (then ``apply`` takes calls) or a plain ``gymnasium.Env``.
        physics_hz: physics steps per second (default: the env's ``metadata["render_fps"]``,
            else ``1 / env.dt``, else 50).
        mode: ``"realtime"`` or ``"lockstep"``.
        seed: base seed; episode ``i`` resets with ``seed + i`` (None: unseeded).
        max_episodes: stop after this many episodes (None: run until ``stop``).
        hold_steps: physics steps per ``apply`` in lock-step mode.
        on_reject: ``"hold"`` keeps the previous action when a call is rejected; ``"default"``
            switches to the binding's default action.
        max_catchup: in real time, at most this many overdue steps run back to back before the
            clock skips ahead (the skipped steps are counted).
        clock: the time source (seconds; ``time.monotonic``).
    """

    def __init__(self, target: EnvBinding | Any, physics_hz: float | None = None, *,
                 mode: str = "realtime", seed: int | None = None, max_episodes: int | None = None,
                 hold_steps: int = 1, on_reject: str = "hold", max_catchup: int = 5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if mode not in ("realtime", "lockstep"):
            raise ValueError(f"mode must be 'realtime' or 'lockstep', not {mode!r}")
        if on_reject not in ("hold", "default"):
            raise ValueError(f"on_reject must be 'hold' or 'default', not {on_reject!r}")
        if hold_steps < 1:
            raise ValueError("hold_steps must be >= 1")
        self.binding = target if isinstance(target, EnvBinding) else None
        self.env = target.env if isinstance(target, EnvBinding) else target
        self.physics_hz = float(physics_hz or _env_rate(self.env))
        if self.physics_hz <= 0:
            raise ValueError("physics_hz must be positive")
        self.dt = 1.0 / self.physics_hz
        self.mode, self.seed, self.max_episodes = mode, seed, max_episodes
        self.hold_steps, self.on_reject, self.max_catchup = hold_steps, on_reject, max_catchup
        self.clock = clock
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._new_episode = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self.episodes: list[EpisodeRecord] = []
        self.stats: dict[str, Any] = {"applied": 0, "superseded": 0, "rejected": 0, "clipped": 0,
                                      "physics_steps": 0, "late_steps": 0, "skipped_steps": 0,
                                      "max_lateness_ms": 0.0}
        self._action = self._default_action()
        self._action_used = True
        self._episode = 0
        self._reset_episode()

    # ---- public API ---------------------------------------------------------------------------
    def start(self) -> RealTimeEnv:
        """Start the physics thread (real-time mode; a no-op in lock-step)."""
        if self.mode == "realtime" and self._thread is None:
            with self._lock:  # the clock starts now: re-stamp the first observation of the episode
                if self._ep_len == 0:
                    self._ep_start = self._now()
                    self._snap = Snapshot(**{**self._snap.__dict__, "t": self._ep_start})
            self._thread = threading.Thread(target=self._run, name="tickcall-physics", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the physics thread (idempotent); the env stays open."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self.env.close()

    def __enter__(self) -> RealTimeEnv:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def done(self) -> bool:
        """True once ``max_episodes`` episodes have finished."""
        return self._finished.is_set()

    def latest(self) -> Snapshot:
        """The newest observation, without waiting (a copy: safe to keep)."""
        with self._lock:
            return self._snap

    def apply(self, x: Call | Mapping[str, Any] | Any) -> ApplyResult:
        """Set the action that persists from the next physics step on.

        ``x`` is a ``Call`` (or ``{"name", "arguments"}``) when the target is a binding, else a raw
        action (not checked here: the env checks it). In lock-step, also runs ``hold_steps`` steps.
        """
        if self.binding is not None and (isinstance(x, Call | Mapping) or x is None):
            res: ActionResult = self.binding.call_to_action(x)
            status, reason, action = res.status, res.reason, res.action
        else:
            status, reason, action = "ok", "", x
        with self._lock:
            self.stats["applied"] += 1
            if status == "rejected":
                self.stats["rejected"] += 1
                if self.on_reject == "hold":
                    action = None
            elif status == "clipped":
                self.stats["clipped"] += 1
            if action is not None:
                if not self._action_used:
                    self.stats["superseded"] += 1
                self._action = action
                self._action_used = False
            self._ep_actions += 1
            out = ApplyResult(status, reason, self.stats["physics_steps"], self._episode)
        if self.mode == "lockstep" and not self.done:
            for _ in range(self.hold_steps):
                if self._step_once() or self.done:
                    break
        return out

    def current_action(self) -> Any:
        with self._lock:
            return copy.deepcopy(self._action)

    def wait_episodes(self, n: int, timeout: float | None = None) -> bool:
        """Block until at least ``n`` episodes have finished (True) or the timeout passes (False)."""
        deadline = None if timeout is None else self.clock() + timeout
        with self._new_episode:
            while len(self.episodes) < n:
                remaining = None if deadline is None else deadline - self.clock()
                if remaining is not None and remaining <= 0:
                    return False
                self._new_episode.wait(timeout=0.05 if remaining is None else min(remaining, 0.05))
        return True

    def summary(self) -> dict[str, Any]:
        """Returns, lengths and counters (JSON-friendly)."""
        with self._lock:
            rets = [e.episode_return for e in self.episodes]
            return {"mode": self.mode, "physics_hz": self.physics_hz, "episodes": len(rets),
                    "returns": rets, "lengths": [e.length for e in self.episodes], **self.stats}

    # ---- internals ----------------------------------------------------------------------------
    def _default_action(self) -> Any:
        if self.binding is not None:
            return self.binding.default_action()
        from tickcall.envs.binding import default_for_space

        return default_for_space(self.env.action_space)

    def _now(self) -> float:
        return self._sim_steps * self.dt if self.mode == "lockstep" else self.clock()

    def _reset_episode(self) -> None:
        seed = None if self.seed is None else self.seed + self._episode
        self._sim_steps = getattr(self, "_sim_steps", 0)
        obs, info = self.env.reset(seed=seed)
        self._ep_seed, self._ep_return, self._ep_len, self._ep_actions = seed, 0.0, 0, 0
        self._ep_start = self._now()
        self._snap = Snapshot(obs=obs, t=self._ep_start, step=0, total_steps=self.stats["physics_steps"],
                              episode=self._episode, episode_return=0.0, info=dict(info))

    def _step_once(self) -> bool:
        """One physics step with the current action. Returns True when an episode ended."""
        with self._lock:
            if self._finished.is_set():
                return False
            obs, reward, terminated, truncated, info = self.env.step(self._action)
            self._action_used = True
            self._sim_steps += 1
            self.stats["physics_steps"] += 1
            self._ep_return += float(reward)
            self._ep_len += 1
            now = self._now()
            ended = bool(terminated or truncated)
            self._snap = Snapshot(obs=obs, t=now, step=self._ep_len, total_steps=self.stats["physics_steps"],
                                  episode=self._episode, episode_return=self._ep_return, info=dict(info),
                                  done=ended)
            if not ended:
                return False
            self.episodes.append(EpisodeRecord(
                index=self._episode, seed=self._ep_seed, episode_return=self._ep_return,
                length=self._ep_len, terminated=bool(terminated), truncated=bool(truncated),
                t_start=self._ep_start, t_end=now, actions_applied=self._ep_actions, info=dict(info)))
            self._episode += 1
            if self.max_episodes is not None and len(self.episodes) >= self.max_episodes:
                self._finished.set()
            else:
                self._reset_episode()
            self._new_episode.notify_all()
            return True

    def _run(self) -> None:
        # Step k is due at t0 + (k + 1) * dt: the first step comes one period after start, like a
        # real world that moves on its own. Up to ``max_catchup`` overdue steps run back to back (a
        # simulation must not silently lose time); older ones are skipped and counted.
        rk = RateKeeper(self.physics_hz, clock=self.clock, max_catchup=int(self.max_catchup))
        rk.start(self.clock() + self.dt)
        while not self._finished.is_set():
            slot = rk.wait_or_stop(self._stop)
            if slot is None:
                break
            lateness_s = slot.started - slot.scheduled
            with self._lock:
                if lateness_s > self.dt / 2:
                    self.stats["late_steps"] += 1
                self.stats["max_lateness_ms"] = max(self.stats["max_lateness_ms"], slot.lateness_ms)
                self.stats["skipped_steps"] += slot.skipped
            self._step_once()


def _env_rate(env: Any) -> float:
    """Physics rate of an env: ``1/dt`` (or ``1/tau``) of the raw env, else its ``render_fps``, else 50."""
    raw = env.unwrapped
    dt = getattr(raw, "dt", None) or getattr(raw, "tau", None)
    if isinstance(dt, int | float) and dt > 0:
        return 1.0 / float(dt)
    fps = (getattr(env, "metadata", None) or {}).get("render_fps")
    return float(fps) if fps else 50.0
