"""``RealTimeEnv``: the world advances on the wall clock whether or not the agent acts.

It is a ``gymnasium.Wrapper`` (as rtgym's real-time env is a gymnasium env), used two ways.

The loop's way (a physics thread; the agent reads and writes whenever it likes)::

    from tickcall.envs.binding import make_binding
    from tickcall.envs.realtime import RealTimeEnv
    rt = RealTimeEnv(make_binding("tickcall/Arena-v0"), seed=0)      # physics at the env's rate
    with rt:                                    # starts the physics thread; stops it on exit
        snap = rt.latest()                      # newest obs, its time, episode info; never waits
        rt.apply(call)                          # a Call (converted by the binding) or a raw action
        ...
    rt.episodes                                 # finished episodes: return, length, seeds, times

Gymnasium's way (rtgym's real-time semantics: one ``step`` per time step of ``1 / step_hz`` s)::

    import gymnasium as gym
    rt = RealTimeEnv(gym.make("CartPole-v1"), step_hz=16)   # physics at 50 Hz, steps at 16 Hz
    obs, info = rt.reset(seed=0)                # the time step clock starts now
    while True:
        action = policy(obs)                    # computing takes wall time: the world moves meanwhile
        obs, reward, terminated, truncated, info = rt.step(action)
        # step sent the action (it persists until the next step), waited for the end of the time
        # step on the wall clock and returned the observation at the start of the next one;
        # reward sums the physics steps of that time step; info["realtime"] says how it went
        if terminated or truncated:
            obs, info = rt.reset()
    rt.close()

``info["realtime"]`` after ``step`` (a dict): ``status``/``reason`` (the action's fate: ok, clipped,
rejected), ``physics_steps`` (run since the previous ``step``/``reset`` returned), ``elapsed_s`` (seconds
on the env's clock since then; simulated seconds in lock-step), ``late`` (``step`` was called after its
time step had already ended: the agent overran; the step then returns at once), ``lateness_ms`` (how
long after the end of its time step the step returned), ``skipped`` (whole time steps that passed with
no ``step`` call). Counted in ``stats``: ``step_calls``, ``late_step_calls``, ``skipped_time_steps``,
``resets`` (calls of ``reset``) and ``abandoned_steps`` (physics steps of episodes ``reset`` cut short).

Modes:

* ``"realtime"``: physics steps happen at ``physics_hz`` on absolute deadlines
  (``tickcall.timing.RateKeeper``: ``t0 + k / physics_hz``, never ``sleep(period)``). Each step
  uses the action applied last: **an action persists until replaced**, so a late decision costs
  score. With the physics thread running (``start()``/``with``), a step that falls behind catches up
  (up to ``max_catchup`` steps at once) and then skips ahead, counting both. After a ``reset``
  with no thread running, ``step`` and ``apply`` run the physics steps that came due on the clock
  themselves, each with the action that was in force at its due time (the same world; lateness is
  then not measured), which makes a real-time episode a function of the clock: tests pass a
  simulated ``clock`` and ``sleep``. ``stop`` stops the world until the next ``reset``.
* ``"lockstep"``: no thread; each ``apply``/``step`` runs ``hold_steps`` physics steps at once, so an
  evaluation is deterministic under a seed (gymnasium's ``check_env`` passes). ``hold_steps =
  physics_hz / decision_rate`` emulates a decision rate (CartPole at 50 Hz with ``hold_steps=3`` is
  about 16 Hz). Snapshot times are the simulated time (``steps / physics_hz``).

Episodes reset automatically when they end (the world does not wait for ``reset``); episode starts
take seeds ``seed, seed + 1, ...`` when a seed is given (so episode ``i`` of a run without ``reset``
calls uses ``seed + i``); ``reset(seed=s)`` restarts the current episode with ``s`` and the starts
after it continue with ``s + 1, ...``; ``reset()`` restarts an episode the world started (the first,
or the one after an end) with that episode's own seed, so episode ``i`` still plays ``seed + i``. With ``max_episodes`` the world stops stepping after that many episodes (``done``
becomes True; ``reset`` then refuses). A manual ``reset`` applies the default action (rtgym does the
same); an automatic one keeps the action in force, as a world that moves on would.

Accounting: every apply (and step) is counted (``applied``), with ``superseded`` the actions replaced
before any physics step used them and ``rejected`` the calls the binding refused; every physics step
is counted with its lateness, and belongs to a finished episode, an abandoned one or the current one:
``sum(lengths) + abandoned_steps + latest().step == physics_steps``. The GIL: the physics thread shares
the interpreter with the caller, so keep ``env.step`` cheap (the Arena costs ~20 us a step); heavy
simulators belong in another process (see FIELD-NOTES), e.g. behind the engine bridge.

The names ``env`` (the wrapped gymnasium env), ``close`` and ``spec`` keep gymnasium's meaning; the
loop's own API (``start``/``stop``/``latest``/``apply``/``done``/``episodes``/``stats``) is unchanged.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, SupportsFloat

import gymnasium as gym
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


class RealTimeEnv(gym.Wrapper[Any, Any, Any, Any], gym.utils.RecordConstructorArgs):
    """Wall-clock (or lock-step) stepping of a gymnasium env, as a ``gymnasium.Wrapper``; see the
    module docstring.

    Args:
        env: an ``EnvBinding`` (then ``apply`` takes calls; the wrapped env is ``binding.env``) or a
            plain ``gymnasium.Env``.
        physics_hz: physics steps per second (default: ``1 / env.dt`` of the raw env, else its
            ``metadata["render_fps"]``, else 50).
        mode: ``"realtime"`` or ``"lockstep"``.
        seed: seed of the first episode start; later starts take ``seed + 1, ...`` (None: unseeded).
        max_episodes: stop after this many episodes (None: run until ``stop``).
        hold_steps: physics steps per ``apply``/``step`` in lock-step mode.
        on_reject: ``"hold"`` keeps the previous action when a call is rejected; ``"default"``
            switches to the binding's default action.
        max_catchup: in real time, at most this many overdue steps run back to back before the
            physics thread's clock skips ahead (the skipped steps are counted).
        step_hz: time steps per second of ``step`` in real time (default ``physics_hz / hold_steps``,
            so a time step lasts as long as a lock-step ``step``).
        clock: the time source (seconds; ``time.monotonic``).
        sleep: how ``step`` waits for the end of its time step (seconds; ``time.sleep``); a test
            passes a simulated clock's ``sleep`` with that clock.
    """

    def __init__(
        self,
        env: EnvBinding | gym.Env,
        physics_hz: float | None = None,
        *,
        mode: str = "realtime",
        seed: int | None = None,
        max_episodes: int | None = None,
        hold_steps: int = 1,
        on_reject: str = "hold",
        max_catchup: int = 5,
        step_hz: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if mode not in ("realtime", "lockstep"):
            raise ValueError(f"mode must be 'realtime' or 'lockstep', not {mode!r}")
        if on_reject not in ("hold", "default"):
            raise ValueError(f"on_reject must be 'hold' or 'default', not {on_reject!r}")
        if hold_steps < 1:
            raise ValueError("hold_steps must be >= 1")
        binding = env if isinstance(env, EnvBinding) else None
        inner = env.env if isinstance(env, EnvBinding) else env
        if not isinstance(inner, gym.Env):
            raise TypeError(f"RealTimeEnv wraps a gymnasium.Env or an EnvBinding, not {type(env).__name__}")
        # gymnasium's spec names this wrapper with these arguments, so gym.make(rt.spec) rebuilds it
        # (over the plain env; the clock and sleep are the defaults there)
        gym.utils.RecordConstructorArgs.__init__(
            self,
            physics_hz=physics_hz,
            mode=mode,
            seed=seed,
            max_episodes=max_episodes,
            hold_steps=hold_steps,
            on_reject=on_reject,
            max_catchup=max_catchup,
            step_hz=step_hz,
        )
        gym.Wrapper.__init__(self, inner)
        self.binding = binding
        self.physics_hz = float(physics_hz or _env_rate(self.env))
        if self.physics_hz <= 0:
            raise ValueError("physics_hz must be positive")
        self.dt = 1.0 / self.physics_hz
        self.step_hz = float(step_hz) if step_hz is not None else self.physics_hz / hold_steps
        if self.step_hz <= 0:
            raise ValueError("step_hz must be positive")
        self.mode, self.seed, self.max_episodes = mode, seed, max_episodes
        self.hold_steps, self.on_reject, self.max_catchup = hold_steps, on_reject, max_catchup
        self.clock, self.sleep = clock, sleep
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._new_episode = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self.episodes: list[EpisodeRecord] = []
        self.stats: dict[str, Any] = {
            "applied": 0,
            "superseded": 0,
            "rejected": 0,
            "clipped": 0,
            "physics_steps": 0,
            "late_steps": 0,
            "skipped_steps": 0,
            "max_lateness_ms": 0.0,
            "step_calls": 0,
            "late_step_calls": 0,
            "skipped_time_steps": 0,
            "resets": 0,
            "abandoned_steps": 0,
        }
        self._action = self._default_action()
        self._action_used = True
        self._episode = 0
        self._sim_steps = 0
        self._next_seed = seed
        # the gymnasium view (reset/step): which episode it follows, what it has earned since it last
        # returned, the end of that episode when it came (final obs, info, terminated, truncated)
        self._gym_ready = False
        self._gym_ep = 0
        self._gym_reward = 0.0
        self._gym_final: tuple[Any, dict[str, Any], bool, bool] | None = None
        self._gym_mark = (0, 0.0)  # (physics_steps, time) when reset/step last returned
        self._keeper: RateKeeper | None = None  # the time steps of ``step`` in real time
        self._inline_t0: float | None = None  # real time without the thread: physics step k due at t0 + k*dt
        self._inline_k = 0
        self._reset_episode()

    # ---- the loop's API -----------------------------------------------------------------------
    def start(self) -> RealTimeEnv:
        """Start the physics thread (real-time mode; a no-op in lock-step)."""
        if self.mode == "realtime" and self._thread is None:
            with self._lock:  # the clock starts now: re-stamp the first observation of the episode
                if self._ep_len == 0:
                    self._ep_start = self._now()
                    self._snap = Snapshot(**{**self._snap.__dict__, "t": self._ep_start})
                self._inline_t0 = None  # the thread steps the world from now on
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="tickcall-physics", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the physics thread (idempotent); the env stays open and the world stands still (the
        last state stays readable) until a ``reset`` starts it again."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def close(self) -> None:
        """Stop the physics thread and close the wrapped env (gymnasium's ``close``; idempotent)."""
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
        if self.mode == "realtime":
            self._catch_up(self.clock())  # after a reset without the thread: the world first moves on
        if self.binding is not None and (isinstance(x, Call | Mapping) or x is None):
            res: ActionResult = self.binding.call_to_action(x)
            out = self._put(res.status, res.reason, res.action)
        else:
            out = self._put("ok", "", x)
        if self.mode == "lockstep":
            self._hold()
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
            return {
                "mode": self.mode,
                "physics_hz": self.physics_hz,
                "episodes": len(rets),
                "returns": rets,
                "lengths": [e.length for e in self.episodes],
                **self.stats,
            }

    # ---- gymnasium's API ----------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Restart the current episode now (its physics steps so far count as ``abandoned_steps``)
        and start the time steps of ``step``. ``seed``: this start's seed (later starts take
        ``seed + 1, ...``); None: the episode's own seed when the world started it (the constructor,
        or the automatic reset after the previous episode ended; so episode ``i`` keeps ``seed + i``),
        the next seed when a ``reset`` started it. ``options`` go to the wrapped env's ``reset``. The
        action in force becomes the default action. ``info["realtime"]``: ``episode`` (index), ``seed``."""
        with self._lock:
            if self._finished.is_set():
                raise RuntimeError(
                    f"the {self.max_episodes} episodes of max_episodes have finished: make a new "
                    "RealTimeEnv (or leave max_episodes unset) to play on"
                )
            if seed is not None:
                self._next_seed = seed
            elif not self._ep_by_reset:  # the world started this episode: start it again, same seed
                self._next_seed = self._ep_seed
            self.stats["resets"] += 1
            self.stats["abandoned_steps"] += self._ep_len
            self._action, self._action_used = self._default_action(), True
            self._reset_episode(options)
            self._ep_by_reset = True
            now = self._now()
            self._gym_begin(now)
            self._gym_ready = True
            if self.mode == "realtime":
                if self._thread is None:
                    self._inline_t0, self._inline_k = now, 0
                self._keeper = RateKeeper(self.step_hz, clock=self.clock, sleep=self.sleep)
                self._keeper.start(now + 1.0 / self.step_hz)  # the first time step ends then
            snap = self._snap
            return snap.obs, {**snap.info, "realtime": {"episode": snap.episode, "seed": self._ep_seed}}

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Send ``action`` (it persists until the next ``step``), wait for the end of the time step
        and return gymnasium's ``(obs, reward, terminated, truncated, info)`` at the start of the next.

        Real time: the time step ends at ``reset time + k / step_hz`` on the clock; a step called
        after its time step ended returns at once (``info["realtime"]["late"]``). Lock-step: the step
        runs ``hold_steps`` physics steps. ``reward`` sums the physics steps since the previous
        return; when the episode ended meanwhile, ``obs``/``info`` are its last and ``terminated`` or
        ``truncated`` is True (the world has already started the next episode: call ``reset``).
        ``action``: a raw action of ``action_space`` (or a ``Call`` when the env is a binding)."""
        if not self._gym_ready:
            raise gym.error.ResetNeeded("call reset() before step(): the time steps start at reset")
        if self._finished.is_set() and self._gym_ep >= len(self.episodes):
            raise RuntimeError(
                f"the {self.max_episodes} episodes of max_episodes have finished: there is no step left"
            )
        if isinstance(action, Call) and self.binding is not None:
            res = self.binding.call_to_action(action)
            status, reason, raw = res.status, res.reason, res.action
        else:
            status, reason, raw = "ok", "", action
        late, lateness_ms, skipped = False, 0.0, 0
        if self.mode == "lockstep":
            self._put(status, reason, raw)
            self._hold()
        else:
            assert self._keeper is not None
            called = self.clock()
            self._catch_up(called)  # the steps due before the action arrived used the previous one
            self._put(status, reason, raw)
            deadline = self._keeper.next_time()
            slot = self._keeper.wait()  # absolute deadlines; time steps missed are skipped, counted
            self._catch_up(self.clock())
            late, skipped = called > deadline, slot.skipped
            lateness_ms = max(0.0, (slot.started - deadline) * 1e3)
        with self._lock:
            self.stats["step_calls"] += 1
            self.stats["late_step_calls"] += int(late)
            self.stats["skipped_time_steps"] += skipped
            now = self._now()
            if self._gym_final is not None:
                obs, info, terminated, truncated = self._gym_final
            else:
                obs, info, terminated, truncated = self._snap.obs, dict(self._snap.info), False, False
            reward = self._gym_reward
            info["realtime"] = {
                "status": status,
                "reason": reason,
                "physics_steps": self.stats["physics_steps"] - self._gym_mark[0],
                "elapsed_s": now - self._gym_mark[1],
                "late": late,
                "lateness_ms": lateness_ms,
                "skipped": skipped,
            }
            self._gym_begin(now)
        return obs, reward, terminated, truncated, info

    def render(self) -> Any:
        """The wrapped env's frame (taken under the physics lock)."""
        with self._lock:
            return self.env.render()

    # ---- internals ----------------------------------------------------------------------------
    def _default_action(self) -> Any:
        if self.binding is not None:
            return self.binding.default_action()
        from tickcall.envs.binding import default_for_space

        return default_for_space(self.env.action_space)

    def _now(self) -> float:
        return self._sim_steps * self.dt if self.mode == "lockstep" else self.clock()

    def _put(self, status: str, reason: str, action: Any) -> ApplyResult:
        """Count an apply and make ``action`` the one in force (a rejection may keep the old one)."""
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
            return ApplyResult(status, reason, self.stats["physics_steps"], self._episode)

    def _hold(self) -> None:
        """Lock-step: ``hold_steps`` physics steps with the action in force (fewer when an episode ends)."""
        if not self.done:
            for _ in range(self.hold_steps):
                if self._step_once() or self.done:
                    break

    def _catch_up(self, now: float) -> None:
        """Real time without the physics thread: run the physics steps due by ``now``, each stamped
        with its due time (the 1 ns slack keeps ``3 * (1/50)`` due at ``0.06``)."""
        with self._lock:
            if self.mode != "realtime" or self._thread is not None or self._inline_t0 is None:
                return
            while not self._finished.is_set():
                due = self._inline_t0 + (self._inline_k + 1) * self.dt
                if due > now + 1e-9:
                    break
                self._inline_k += 1
                self._step_once(t=due)

    def _gym_begin(self, now: float) -> None:
        """The gymnasium view follows the current episode from ``now`` on."""
        self._gym_ep, self._gym_reward, self._gym_final = self._episode, 0.0, None
        self._gym_mark = (self.stats["physics_steps"], now)

    def _reset_episode(self, options: dict[str, Any] | None = None, t: float | None = None) -> None:
        seed = self._next_seed
        if self._next_seed is not None:
            self._next_seed += 1
        obs, info = self.env.reset(seed=seed, options=options)
        self._ep_seed, self._ep_return, self._ep_len, self._ep_actions = seed, 0.0, 0, 0
        self._ep_by_reset = False  # reset() sets it when it started this episode
        self._ep_start = self._now() if t is None else t
        self._snap = Snapshot(
            obs=obs,
            t=self._ep_start,
            step=0,
            total_steps=self.stats["physics_steps"],
            episode=self._episode,
            episode_return=0.0,
            info=dict(info),
        )

    def _step_once(self, t: float | None = None) -> bool:
        """One physics step with the current action (``t``: its time, default now). Returns True
        when an episode ended."""
        with self._lock:
            if self._finished.is_set():
                return False
            obs, reward, terminated, truncated, info = self.env.step(self._action)
            self._action_used = True
            self._sim_steps += 1
            self.stats["physics_steps"] += 1
            self._ep_return += float(reward)
            self._ep_len += 1
            if self._episode == self._gym_ep and self._gym_final is None:
                self._gym_reward += float(reward)
            now = self._now() if t is None else t
            ended = bool(terminated or truncated)
            self._snap = Snapshot(
                obs=obs,
                t=now,
                step=self._ep_len,
                total_steps=self.stats["physics_steps"],
                episode=self._episode,
                episode_return=self._ep_return,
                info=dict(info),
                done=ended,
            )
            if not ended:
                return False
            if self._episode == self._gym_ep and self._gym_final is None:
                self._gym_final = (obs, dict(info), bool(terminated), bool(truncated))
            self.episodes.append(
                EpisodeRecord(
                    index=self._episode,
                    seed=self._ep_seed,
                    episode_return=self._ep_return,
                    length=self._ep_len,
                    terminated=bool(terminated),
                    truncated=bool(truncated),
                    t_start=self._ep_start,
                    t_end=now,
                    actions_applied=self._ep_actions,
                    info=dict(info),
                )
            )
            self._episode += 1
            if self.max_episodes is not None and len(self.episodes) >= self.max_episodes:
                self._finished.set()
            else:
                self._reset_episode(t=t)
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
