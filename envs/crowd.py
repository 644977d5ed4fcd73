"""Multi-agent worlds: any PettingZoo ``ParallelEnv`` as the crowd loop's world, in real time.

    from tickcall.envs.crowd import make_crowd
    world = make_crowd("tickcall/CrowdArena-v0", agents=16, seed=0)     # or "pettingzoo:MODULE:FUNCTION"
    world.start()                              # physics thread at the env's rate
    obs = world.observe_all()                  # {agent: EnvObservation(text, taken_at, episode)}, never waits
    world.apply_call("npc_3", Call("aim", {"direction": "NE"}))   # npc_3's set-point until replaced
    world.fallback("npc_4", "noop")            # hold | default | noop, per agent
    world.history("npc_3")                     # ['aim(direction="NE")@f1 done']
    world.close()

``PettingZooWorld`` implements ``tickcall.control_loop.world.CrowdWorld`` by shape (this room never
imports the loop) with the real-time semantics of the single-agent ``envs.realtime.RealTimeEnv``:

* **physics in its own thread** at ``physics_hz`` (default: the env's ``metadata["physics_hz"]``, else
  ``metadata["render_fps"]``, else ``1 / dt``, else 50 Hz) on absolute deadlines
  (``tickcall.timing.RateKeeper``); up to ``max_catchup`` overdue steps run back to back, older ones
  are skipped and counted;
* **set-points per agent**: each physics step gives every live agent the action applied to it last;
  ``apply_call`` and ``fallback`` only replace that action (they return at once). A rejected call
  keeps the previous action (``hold``); a new set-point that replaces one no step used yet is counted
  ``superseded``;
* **episodes**: an episode ends when the env has no live agent left (PettingZoo's ``agents`` is empty);
  episode ``i`` resets with ``seed + i``; after ``max_episodes`` the physics stops;
* **text and tools per agent** come from the single-agent machinery: each agent is bound with
  ``envs.binding.make_binding`` (tools from ``envs.spaces``, text from ``envs.obs_text``) applied to a
  gymnasium view of ``observation_space(agent)`` / ``action_space(agent)``; an env that offers
  ``tickcall_agent_env(agent)`` (the crowd arena: an ``ArenaEnv``) is bound through that env instead,
  so its agents get exactly the single-agent env's tools and text. Every agent must have the same
  spaces (one tool registration serves the crowd): a crowd with different spaces is refused with one line;
* **history per agent**: the last ``history_len`` calls applied to an agent, as the single-agent turn
  writes them (``models.prompt_text.status_line``): ``move(direction="E", speed="run")@f12 done``,
  ``fire()@f13 rejected: ...``; ids count per agent.

Ids (``make_parallel_env``): the built-in ``tickcall/CrowdArena-v0`` (``envs.crowd_arena``, ``agents`` =
its ``n_agents``) and ``pettingzoo:MODULE:FUNCTION`` for any env a module builds
(``pettingzoo:pettingzoo.sisl.multiwalker_v9:parallel_env``; ``FUNCTION`` defaults to ``parallel_env``).

Accounting: ``describe()`` counts physics steps (late, skipped, max lateness, step time), actions
(applied, ok, clipped, rejected, superseded) and fallbacks per kind, in total and per agent.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
from tickcall.envs.binding import EnvBinding, _entry_of, make_binding
from tickcall.envs.realtime import ApplyResult
from tickcall.envs.world import EnvObservation, _tool_name
from tickcall.models import prompt_text
from tickcall.models.calls import Call, render_call

from tickcall.timing import RateKeeper

PREFIX = "pettingzoo:"
CROWD_ENVS: dict[str, str] = {"tickcall/CrowdArena-v0": "tickcall.envs.crowd_arena:parallel_env"}
"""Built-in multi-agent env ids -> ``MODULE:FUNCTION`` that builds the ParallelEnv."""
FALLBACKS = ("hold", "default", "noop")


class CrowdEnvError(ValueError):
    """A multi-agent env that cannot become a crowd world (the message is one line: what, and how to fix)."""


def is_crowd_id(env_id: str) -> bool:
    """True for a built-in multi-agent id or a ``pettingzoo:`` id."""
    return env_id in CROWD_ENVS or env_id.startswith(PREFIX)


# --------------------------------------------------------------------------- building the env
def _constructor(env_id: str) -> Callable[..., Any]:
    if env_id in CROWD_ENVS:
        target = CROWD_ENVS[env_id]
    elif env_id.startswith(PREFIX):
        target = env_id[len(PREFIX) :]
    else:
        raise CrowdEnvError(
            f"{env_id!r} is not a multi-agent env: use {', '.join(CROWD_ENVS)} or "
            "pettingzoo:MODULE:FUNCTION (e.g. pettingzoo:pettingzoo.sisl.multiwalker_v9:parallel_env)"
        )
    module_name, _, func_name = target.partition(":")
    func_name = func_name or "parallel_env"
    if not module_name or not module_name.replace(".", "").replace("_", "").isalnum():
        raise CrowdEnvError(
            f"{env_id!r}: name a PettingZoo env as pettingzoo:MODULE:FUNCTION "
            "(e.g. pettingzoo:pettingzoo.sisl.multiwalker_v9:parallel_env)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # a missing module, or one of its dependencies
        family = (
            module_name.split(".")[1] if module_name.startswith("pettingzoo.") and "." in module_name else ""
        )
        hint = f"pip install 'pettingzoo[{family}]'" if family else "install the package that provides it"
        raise CrowdEnvError(f"{env_id}: cannot import {module_name} ({exc}); {hint}") from None
    except Exception as exc:  # a module that fails while importing
        raise CrowdEnvError(f"{env_id}: importing {module_name} failed: {_line(exc)}") from None
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise CrowdEnvError(
            f"{env_id}: {module_name} has no function {func_name!r} "
            "(PettingZoo modules name theirs parallel_env)"
        )
    return fn


def make_parallel_env(env_id: str, *, agents: int | None = None, **env_kwargs: Any) -> Any:
    """Build the ParallelEnv of ``env_id`` (see module docstring); ``agents``: how many, for an env
    whose constructor takes ``n_agents`` (the crowd arena); for any other env it must match the env's
    own count or be None. Raises ``CrowdEnvError`` (one line)."""
    fn = _constructor(env_id)
    takes_n = _takes(fn, "n_agents")
    if agents is not None and takes_n:
        env_kwargs = {**env_kwargs, "n_agents": int(agents)}
    try:
        env = fn(**env_kwargs)
    except (TypeError, ValueError) as exc:
        raise CrowdEnvError(f"{env_id}: {_line(exc, bare=True)}") from None
    except Exception as exc:
        raise CrowdEnvError(f"{env_id}: building the env failed: {_line(exc)}") from None
    if hasattr(env, "agent_iter") and not hasattr(env, "possible_agents"):
        raise CrowdEnvError(
            f"{env_id}: that is a turn-based (AEC) env; name its Parallel API constructor "
            "(MODULE:parallel_env)"
        )
    if hasattr(env, "agent_iter"):
        raise CrowdEnvError(
            f"{env_id}: that is a turn-based (AEC) env; a crowd needs PettingZoo's Parallel "
            "API: name MODULE:parallel_env (or wrap it with pettingzoo.utils.aec_to_parallel)"
        )
    missing = [
        m
        for m in ("possible_agents", "reset", "step", "observation_space", "action_space")
        if not hasattr(env, m)
    ]
    if missing:
        raise CrowdEnvError(
            f"{env_id}: {type(env).__name__} is not a PettingZoo ParallelEnv (it has no {', '.join(missing)})"
        )
    n = len(env.possible_agents)
    if agents is not None and not takes_n and int(agents) != n:
        env.close()
        raise CrowdEnvError(
            f"{env_id} has {n} agents and its constructor takes no n_agents: drop --agents "
            "(or set the env's own count in env_kwargs)"
        )
    return env


def _takes(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def _line(exc: BaseException, bare: bool = False) -> str:
    """The first line of an exception, after its type's name unless ``bare`` (a bad argument says enough)."""
    text = str(exc).strip().splitlines()
    if not text:
        return type(exc).__name__
    return text[0] if bare else f"{type(exc).__name__}: {text[0]}"


# --------------------------------------------------------------------------- one agent as a gymnasium env
class AgentView(gym.Env):
    """One agent of a ParallelEnv seen as a gymnasium env: its spaces and the env's metadata (so a
    ``metadata["tickcall"]`` catalog entry names its tool and observation). Only for binding: it is
    never reset or stepped (the crowd steps the ParallelEnv)."""

    def __init__(self, penv: Any, agent: str) -> None:
        self.agent = agent
        self.observation_space = penv.observation_space(agent)
        self.action_space = penv.action_space(agent)
        self.metadata = dict(getattr(penv, "metadata", None) or {})

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # pragma: no cover - by design
        raise RuntimeError("an AgentView is not stepped on its own: step the ParallelEnv")

    def step(self, action: Any):  # pragma: no cover - by design
        raise RuntimeError("an AgentView is not stepped on its own: step the ParallelEnv")


def agent_env(penv: Any, agent: str) -> gym.Env:
    """The gymnasium env that stands for ``agent``: the env's own ``tickcall_agent_env(agent)`` when it
    offers one, else an ``AgentView`` of its spaces."""
    own = getattr(penv, "tickcall_agent_env", None)
    return own(agent) if callable(own) else AgentView(penv, agent)


def crowd_binding(penv: Any, env_id: str | None = None, **binding_kwargs: Any) -> EnvBinding:
    """One ``EnvBinding`` for every agent of ``penv`` (they must share their spaces). Raises
    ``CrowdEnvError`` for a crowd without agents or with different spaces, or spaces no tool expresses."""
    roster = list(penv.possible_agents)
    name = env_id or type(penv).__name__
    if not roster:
        raise CrowdEnvError(f"{name} has no agents (possible_agents is empty)")
    first = roster[0]
    obs0, act0 = penv.observation_space(first), penv.action_space(first)
    for a in roster[1:]:
        if penv.observation_space(a) != obs0 or penv.action_space(a) != act0:
            which = "observation" if penv.observation_space(a) != obs0 else "action"
            raise CrowdEnvError(
                f"{name}: agents {first} and {a} have different {which} spaces; a crowd "
                "serves every agent with one tool set, so agents with different spaces "
                "are not supported yet"
            )
    try:
        binding = make_binding(agent_env(penv, first), **binding_kwargs)
        binding.obs_text(obs0.sample())  # a space the text cannot show (an image) fails here, not per tick
    except Exception as exc:
        raise CrowdEnvError(
            f"{name}: its agents cannot be bound to a tool and a text: {_line(exc)}"
        ) from None
    binding.env_id = env_id
    return binding


def declared_noop(binding: EnvBinding) -> Any:
    """The env's own no-op action (``noop_action()``, or a catalog entry's ``noop``), or None."""
    raw = binding.env.unwrapped
    if hasattr(raw, "noop_action"):
        return raw.noop_action()
    if _entry_of(binding.env, None).noop is not None:
        return binding.default_action()
    return None


def crowd_rate(penv: Any) -> float:
    """Physics steps per second of a ParallelEnv: ``metadata["physics_hz"]``, else ``render_fps``, else
    ``1 / dt`` of the env, else 50."""
    meta = getattr(penv, "metadata", None) or {}
    for key in ("physics_hz", "render_fps"):
        v = meta.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
            return float(v)
    dt = getattr(getattr(penv, "unwrapped", penv), "dt", None)
    if isinstance(dt, int | float) and dt > 0:
        return 1.0 / float(dt)
    return 50.0


# --------------------------------------------------------------------------- the world
@dataclass
class _AgentState:
    action: Any
    used: bool = True  # the action was used by a physics step since it was set
    calls: int = 0  # call ids per agent (f1, f2, ...)
    history: deque = field(default_factory=deque)
    counts: dict[str, int] = field(
        default_factory=lambda: {
            "applied": 0,
            "ok": 0,
            "clipped": 0,
            "rejected": 0,
            "superseded": 0,
            "hold": 0,
            "default": 0,
            "noop": 0,
        }
    )


@dataclass(frozen=True)
class _Snapshot:
    obs: dict[str, Any]  # the live agents' newest observations
    t: float  # when they were produced (clock seconds)
    step: int  # physics steps in this episode
    total_steps: int
    episode: int
    returns: dict[str, float]  # per agent, this episode so far


class PettingZooWorld:
    """A PettingZoo ParallelEnv as a real-time crowd world (see the module docstring).

    Args:
        penv: the ParallelEnv (every agent with the same spaces).
        binding: ``crowd_binding(penv)`` (tools, text, call -> action for every agent).
        env_id: the id it was made from (for ``describe``).
        seed: episode ``i`` resets with ``seed + i`` (None: unseeded).
        max_episodes: stop the physics after this many episodes (None: until ``stop``).
        physics_hz: physics steps per second (None: ``crowd_rate(penv)``).
        history_chars: longest result text a history line shows.
        history_len: calls kept per agent for ``history(agent)``.
        max_catchup: overdue physics steps run back to back before the clock skips ahead.
        clock: time source in seconds (``time.monotonic``).
    """

    def __init__(
        self,
        penv: Any,
        binding: EnvBinding,
        *,
        env_id: str,
        seed: int | None = 0,
        max_episodes: int | None = None,
        physics_hz: float | None = None,
        history_chars: int = 40,
        history_len: int = 8,
        max_catchup: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.penv, self.binding, self.env_id = penv, binding, env_id
        self.seed, self.max_episodes = seed, max_episodes
        self.physics_hz = float(physics_hz or crowd_rate(penv))
        if self.physics_hz <= 0:
            raise ValueError("physics_hz must be positive")
        self.dt = 1.0 / self.physics_hz
        self.history_chars, self.history_len, self.max_catchup = history_chars, history_len, max_catchup
        self.clock = clock
        self._roster = list(penv.possible_agents)
        self._noop = declared_noop(binding)
        # call -> verdict, for semantic envs only (see _convert): a third-party env may change an action
        # it is given, so each of its calls gets its own
        self._cache: dict[tuple, tuple[str, str, Any, str | None]] | None = {} if binding.semantic else None
        self._param_order = {s.name: tuple(s.param_names) for s in binding.specs}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None
        self._agents = {
            a: _AgentState(binding.default_action(), history=deque(maxlen=max(0, history_len)))
            for a in self._roster
        }
        self._episodes: list[dict[str, Any]] = []
        self._episode = 0
        self._total_steps = 0
        self._physics = {
            "steps": 0,
            "late_steps": 0,
            "skipped_steps": 0,
            "max_lateness_ms": 0.0,
            "step_ms_total": 0.0,
            "step_ms_max": 0.0,
        }
        self._text_cache: tuple[tuple[int, int] | None, dict[str, str]] = (None, {})
        self._reset_episode()

    # ---- what the crowd loop uses ---------------------------------------------------------------
    @property
    def tools(self) -> list[dict[str, Any]]:
        return list(self.binding.tools)

    @property
    def agents(self) -> list[str]:
        """The roster (PettingZoo's ``possible_agents``); ``observe_all`` holds the agents alive now."""
        return list(self._roster)

    def observe_all(self) -> dict[str, EnvObservation]:
        """The newest observation of every live agent, without waiting for the env. Texts are rendered
        once per physics step (the first call after the step pays for them)."""
        with self._lock:
            snap = self._snap
        key = (snap.episode, snap.step)
        cached = self._text_cache  # one reference read: (key, texts) always belong together
        if cached[0] == key:
            texts = cached[1]
        else:
            fmt = self.binding.obs_text
            texts = {a: fmt(o) for a, o in snap.obs.items()}
            self._text_cache = (key, texts)
        return {a: EnvObservation(text=texts[a], taken_at=snap.t, episode=snap.episode) for a in snap.obs}

    def history(self, agent: str) -> list[str]:
        """The agent's recent calls, oldest first (``aim(direction="NE")@f3 done``)."""
        st = self._agents.get(agent)
        if st is None:
            return []
        with self._lock:
            items = list(st.history)
        return [
            prompt_text.status_line(
                prompt_text.CallStatus(
                    call=text,
                    id=fid,
                    state="rejected" if status == "rejected" else "done",
                    error=reason if status == "rejected" else None,
                ),
                self.history_chars,
            )
            for text, fid, status, reason in items
        ]

    def fallback(self, agent: str, kind: str) -> str:
        """Apply ``kind`` to ``agent``: ``hold`` (keep its action), ``default`` (the binding's default
        action), ``noop`` (the env's declared no-op; holds when it declares none). Returns what was done."""
        st = self._agent(agent)
        if kind == "default":
            action, done = self.binding.default_action(), "default"
        elif kind == "noop" and self._noop is not None:
            action, done = copy.deepcopy(self._noop), "noop"
        else:
            action, done = None, "hold"
        with self._lock:
            if action is not None:
                self._set(st, action)
            st.counts[done] += 1
        return done

    def apply_call(self, agent: str, call: Any) -> ApplyResult:
        """Make ``call`` the agent's set-point from the next physics step on; returns at once with the
        binding's verdict (``ok``/``clipped``/``rejected`` and why). A rejected call holds the previous action."""
        st = self._agent(agent)
        status, reason, action, text = self._convert(call)
        with self._lock:
            st.counts["applied"] += 1
            st.counts[status] += 1
            if status != "rejected":
                self._set(st, action)
            if text is not None and st.history.maxlen:
                st.calls += 1
                st.history.append((text, f"f{st.calls}", status, reason))
            return ApplyResult(status, reason, self._total_steps, self._episode)

    def _convert(self, call: Any) -> tuple[str, str, Any, str | None]:
        """(status, reason, action, rendered call or None) through the binding. For a semantic env (the
        crowd arena: its ``action_from_call`` builds a fresh action and its step only reads actions) the
        verdict of a call already seen is reused, the same action object shared by the agents that sent
        it: a crowd repeats a few calls (``fire()``, ``aim(direction="NE")``), and converting each one
        anew is most of a 256-agent tick's world time. Counts are the binding's either way."""
        key = _call_key(call) if self._cache is not None else None
        hit = self._cache.get(key) if key is not None else None
        if hit is not None:
            b = self.binding
            with b._lock:  # the binding's own counters, as call_to_action keeps them
                b.counts["calls"] += 1
                b.counts[hit[0]] += 1
                if hit[1]:
                    b.reasons[hit[1][:120]] += 1
            return hit
        res = self.binding.call_to_action(call)
        text = None
        if res.call is not None:
            text = render_call(res.call, self._param_order.get(res.call.name) or None)
        out = (res.status, res.reason, res.action, text)
        if key is not None and len(self._cache) < _CACHE_SIZE:
            self._cache[key] = out
        return out

    def episodes_done(self) -> int:
        return len(self._episodes)

    def episodes(self) -> list[dict[str, Any]]:
        """Finished episodes: ``return`` (mean over the episode's agents of each agent's return, so a crowd
        of arenas reads like one arena), ``total_return``, ``returns`` (per agent), ``length`` (physics
        steps), ``index``, ``seed``, ``agents``."""
        with self._lock:
            return [dict(e) for e in self._episodes]

    def current_episode(self) -> dict[str, Any]:
        with self._lock:
            snap = self._snap
        rets = snap.returns
        return {
            "index": snap.episode,
            "return": sum(rets.values()) / len(rets) if rets else 0.0,
            "length": snap.step,
            "agents": len(snap.obs),
        }

    @property
    def done(self) -> bool:
        """True once ``max_episodes`` episodes have finished."""
        return self._finished.is_set()

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> PettingZooWorld:
        """Start the physics thread (the episode's clock restarts now)."""
        if self._thread is None:
            with self._lock:
                if self._snap.step == 0:
                    self._ep_start = self.clock()
                    self._snap = _Snapshot(**{**self._snap.__dict__, "t": self._ep_start})
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="tickcall-crowd-physics", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the physics (idempotent); the last state stays readable for the report."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(Exception):  # closing a third-party env is best effort
            self.penv.close()

    def advance(self, steps: int = 1) -> int:
        """Run ``steps`` physics steps now, in the caller's thread (lock-step drivers and tests; not
        while the physics thread runs). Returns the episodes that ended."""
        if self._thread is not None:
            raise RuntimeError("advance() steps the physics by hand: stop() the physics thread first")
        return sum(self._step_once() for _ in range(steps))

    def describe(self) -> dict[str, Any]:
        with self._lock:
            phys = dict(self._physics)
            per_agent = {a: dict(st.counts) for a, st in self._agents.items()}
        steps = phys.pop("steps")
        phys["step_ms_mean"] = round(phys.pop("step_ms_total") / steps, 4) if steps else 0.0
        totals: dict[str, int] = {}
        for counts in per_agent.values():
            for k, v in counts.items():
                totals[k] = totals.get(k, 0) + v
        out: dict[str, Any] = {
            "env": self.env_id,
            "agents": len(self._roster),
            "tools": [_tool_name(t) for t in self.tools],
            "physics_hz": self.physics_hz,
            "physics_steps": steps,
            "physics": phys,
            "episodes": len(self._episodes),
            "actions": {k: totals.get(k, 0) for k in ("applied", "ok", "clipped", "rejected", "superseded")},
            "fallbacks": {k: totals.get(k, 0) for k in FALLBACKS},
            "per_agent": per_agent,
        }
        try:
            out["binding"] = self.binding.describe()
            if hasattr(self.penv, "stats"):
                out["env_stats"] = dict(self.penv.stats())
        except Exception:  # the description is best effort: a report is still written without it
            pass
        return out

    # ---- internals -------------------------------------------------------------------------------
    def _agent(self, agent: str) -> _AgentState:
        st = self._agents.get(agent)
        if st is None:
            raise KeyError(f"unknown agent {agent!r} in {self.env_id} (agents: {_roster_text(self._roster)})")
        return st

    def _set(self, st: _AgentState, action: Any) -> None:
        if not st.used:
            st.counts["superseded"] += 1
        st.action, st.used = action, False

    def _reset_episode(self) -> None:
        seed = None if self.seed is None else self.seed + self._episode
        obs, _ = self.penv.reset(seed=seed)
        live = list(self.penv.agents)
        self._ep_seed = seed
        self._ep_start = self.clock()
        self._snap = _Snapshot(
            obs={a: obs[a] for a in live if a in obs},
            t=self._ep_start,
            step=0,
            total_steps=self._total_steps,
            episode=self._episode,
            returns=dict.fromkeys(live, 0.0),
        )

    def _step_once(self) -> bool:
        """One physics step of every live agent with its set-point. Returns True when the episode ended."""
        with self._lock:
            if self._finished.is_set():
                return False
            live = list(self.penv.agents)
            actions = {}
            for a in live:
                st = self._agents[a]
                actions[a] = st.action
                st.used = True
            t0 = time.perf_counter()
            obs, rewards, _terms, _truncs, _infos = self.penv.step(actions)
            step_ms = (time.perf_counter() - t0) * 1e3
            self._physics["steps"] += 1
            self._physics["step_ms_total"] += step_ms
            self._physics["step_ms_max"] = max(self._physics["step_ms_max"], step_ms)
            self._total_steps += 1
            returns = dict(self._snap.returns)
            for a, r in rewards.items():
                returns[a] = returns.get(a, 0.0) + float(r)
            now = self.clock()
            still = list(self.penv.agents)
            self._snap = _Snapshot(
                obs={a: obs[a] for a in still if a in obs},
                t=now,
                step=self._snap.step + 1,
                total_steps=self._total_steps,
                episode=self._episode,
                returns=returns,
            )
            if still:
                return False
            total = sum(returns.values())
            self._episodes.append(
                {
                    "index": self._episode,
                    "seed": self._ep_seed,
                    "length": self._snap.step,
                    "return": total / len(returns) if returns else 0.0,
                    "total_return": total,
                    "returns": returns,
                    "agents": len(returns),
                    "t_start": self._ep_start,
                    "t_end": now,
                }
            )
            self._episode += 1
            if self.max_episodes is not None and len(self._episodes) >= self.max_episodes:
                self._finished.set()
            else:
                self._reset_episode()
            return True

    def _run(self) -> None:
        # the first step comes one period after start, like a world that moves on its own
        rk = RateKeeper(self.physics_hz, clock=self.clock, max_catchup=int(self.max_catchup))
        rk.start(self.clock() + self.dt)
        while not self._finished.is_set():
            slot = rk.wait_or_stop(self._stop)
            if slot is None:
                break
            with self._lock:
                if slot.started - slot.scheduled > self.dt / 2:
                    self._physics["late_steps"] += 1
                self._physics["max_lateness_ms"] = max(self._physics["max_lateness_ms"], slot.lateness_ms)
                self._physics["skipped_steps"] += slot.skipped
            try:
                self._step_once()
            except Exception as exc:  # a third-party env that raises stops the physics, said in describe()
                with self._lock:
                    self._physics["error"] = _line(exc)
                self._finished.set()


_CACHE_SIZE = 4096  # distinct calls remembered per world (the arena has a few hundred)
_KEY_TYPES = (str, int, float, bool, type(None))


def _call_key(call: Any) -> tuple | None:
    """A hashable key for a ``Call`` whose arguments are plain scalars (types included: ``1`` and
    ``True`` validate differently); None for anything else (converted each time)."""
    if not isinstance(call, Call):
        return None
    items = []
    for k, v in call.arguments.items():
        if type(v) not in _KEY_TYPES:
            return None
        items.append((k, type(v), v))
    return (call.name, tuple(items))


def _roster_text(roster: list[str]) -> str:
    return ", ".join(roster) if len(roster) <= 4 else f"{roster[0]}..{roster[-1]} ({len(roster)})"


def make_crowd(
    env_id: str,
    *,
    agents: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    seed: int | None = 0,
    max_episodes: int | None = None,
    physics_hz: float | None = None,
    history_chars: int = 40,
    history_len: int = 8,
) -> PettingZooWorld:
    """Build the crowd world of a multi-agent id (see module docstring); does not start the physics.
    Raises ``CrowdEnvError`` (one line) for an id, env or spaces that cannot become a crowd."""
    penv = make_parallel_env(env_id, agents=agents, **(env_kwargs or {}))
    try:
        binding = crowd_binding(penv, env_id)
        return PettingZooWorld(
            penv,
            binding,
            env_id=env_id,
            seed=seed,
            max_episodes=max_episodes,
            physics_hz=physics_hz,
            history_chars=history_chars,
            history_len=history_len,
        )
    except CrowdEnvError:
        penv.close()
        raise
    except Exception as exc:
        penv.close()
        raise CrowdEnvError(f"{env_id}: {_line(exc)}") from None


__all__ = [
    "CROWD_ENVS",
    "AgentView",
    "CrowdEnvError",
    "PettingZooWorld",
    "agent_env",
    "crowd_binding",
    "crowd_rate",
    "is_crowd_id",
    "make_crowd",
    "make_parallel_env",
]
