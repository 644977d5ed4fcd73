"""The world a control loop drives: an env made real-time, its tools, observation text, hands, fallbacks.

``make_world(env_spec)`` is the one place where env construction is decided:

* a gymnasium id (``"tickcall/Arena-v0"``, ``"CartPole-v1"``): ``envs.binding.make_binding`` +
  ``envs.realtime.RealTimeEnv`` (physics in its own thread at the env's rate, actions persist until
  replaced), with an ``AsyncFC`` whose one ``latest``-wins lane applies calls through
  ``envs.actuators.actuator_for``;
* ``engine:tcp://HOST:PORT``: an external game engine (``envs.engine_bridge``, the bridge helper's
  part) — added in ``_make_engine_world`` when that module offers a world.

Fallbacks (``World.fallback(kind)``, when no legal call arrived by a tick's deadline):

* ``hold``: nothing is applied; the env keeps the action in force (real-time envs hold it);
* ``default``: the binding's default action is applied (``EnvBinding.default_action()``);
* ``noop``: the env's declared no-op action is applied (Arena: ``wait``; catalog entries with a
  ``noop``); an env without one holds instead (CartPole has no neutral action).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tickcall.control_loop.loop import Observation


class WorldError(ValueError):
    """An env spec that cannot be turned into a world (unknown id, bridge unavailable...)."""


@dataclass
class WorldSpec:
    """What ``make_world`` needs; JSON-able so it can be sent to the loop actor."""

    env: str
    env_kwargs: dict[str, Any] | None = None
    seed: int | None = 0
    max_episodes: int | None = None
    physics_hz: float | None = None
    history_chars: int = 40


class World:
    """A real-time env with its binding and its hands (``AsyncFC``). ``start()`` starts the physics."""

    def __init__(self, binding: Any, rt: Any, hands: Any, *, env_id: str, noop: Any = None,
                 history_chars: int = 40) -> None:
        self.binding = binding
        self.rt = rt
        self.hands = hands
        self.env_id = env_id
        self._noop = noop
        self.history_chars = history_chars
        self.fallbacks: dict[str, int] = {}

    # ---- what the loop uses -----------------------------------------------------------------
    @property
    def tools(self) -> list[dict[str, Any]]:
        return list(self.binding.tools)

    def observe(self) -> Observation:
        """The newest observation, without waiting for the env."""
        snap = self.rt.latest()
        return Observation(text=self.binding.obs_text(snap.obs), taken_at=snap.t, episode=snap.episode)

    def fallback(self, kind: str) -> str:
        """Apply the fallback ``kind`` (see module docstring); returns what was done."""
        if kind == "default":
            self.rt.apply(self.binding.default_action())
            done = "default"
        elif kind == "noop" and self._noop is not None:
            self.rt.apply(self._noop_action())
            done = "noop"
        else:
            done = "hold"
        self.fallbacks[done] = self.fallbacks.get(done, 0) + 1
        return done

    def apply_call(self, call: Any) -> Any:
        """Apply a call directly (used only when the world has no hands)."""
        return self.rt.apply(call)

    def episodes_done(self) -> int:
        return len(self.rt.episodes)

    def episodes(self) -> list[dict[str, Any]]:
        """Finished episodes as ``{"return", "length"}`` (plus index/seed/terminated)."""
        return [{"return": e.episode_return, "length": e.length, "index": e.index, "seed": e.seed,
                 "terminated": e.terminated, "truncated": e.truncated} for e in list(self.rt.episodes)]

    def current_episode(self) -> dict[str, Any]:
        snap = self.rt.latest()
        return {"index": snap.episode, "return": snap.episode_return, "length": snap.step}

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> World:
        self.rt.start()
        return self

    def close(self) -> None:
        try:
            if self.hands is not None:
                self.hands.shutdown(timeout_s=0.5)
        finally:
            self.rt.close()

    def describe(self) -> dict[str, Any]:
        out = {"env": self.env_id, "tools": [t["function"]["name"] if "function" in t else t.get("name")
                                             for t in self.tools],
               "physics_hz": self.rt.physics_hz, "fallbacks": dict(self.fallbacks)}
        try:
            out["env_stats"] = {k: v for k, v in self.rt.summary().items() if k not in ("returns", "lengths")}
            out["binding"] = self.binding.describe()
        except Exception:  # description is best effort
            pass
        if self.hands is not None:
            try:
                m = self.hands.metrics()
                out["hands"] = {k: m[k] for k in ("accepted", "finished", "in_flight", "states",
                                                  "late_results", "balanced", "dispatch_us") if k in m}
            except Exception:
                pass
        return out

    def _noop_action(self) -> Any:
        import copy

        return copy.deepcopy(self._noop)


def _declared_noop(binding: Any) -> Any:
    """The env's own no-op action, or None when it declares none."""
    raw = binding.env.unwrapped
    if hasattr(raw, "noop_action"):
        return raw.noop_action()
    from tickcall.envs.catalog import entry_for

    if entry_for(binding.env_id).noop is not None:
        return binding.default_action()
    return None


def _make_engine_world(spec: WorldSpec) -> World:
    try:
        from tickcall.envs import engine_bridge
    except ImportError as exc:
        raise WorldError(f"{spec.env}: the engine bridge is not available ({exc})") from None
    factory = getattr(engine_bridge, "make_world", None) or getattr(engine_bridge, "make_engine_world", None)
    if factory is None:
        raise WorldError(f"{spec.env}: envs.engine_bridge offers no world for the control loop yet "
                         "(expected envs.engine_bridge.make_world(spec))")
    return factory(spec)


def make_hands(rt: Any, binding: Any, clock: Any = time.monotonic) -> Any:
    """An ``AsyncFC`` with one ``latest``-wins lane named ``env`` that applies every tool's calls to the
    real-time env (set-point semantics: a newer call replaces a queued one; stale ticks are refused)."""
    from tickcall.control_loop.futures.core import AsyncFC
    from tickcall.control_loop.futures.lanes import Lane
    from tickcall.envs.actuators import actuator_for

    names = [s.name for s in binding.specs]
    order = {s.name: list(s.param_names) for s in binding.specs}
    lane = Lane("env", tools=tuple(names), policy="latest", timeout_complete_s=1.0)
    return AsyncFC([lane], {"env": actuator_for(rt)}, clock=clock, param_order=order)


def make_world(spec: WorldSpec | str, **kwargs: Any) -> World:
    """Build the world for an env spec (see module docstring). Does not start the physics."""
    if isinstance(spec, str):
        spec = WorldSpec(env=spec, **kwargs)
    if spec.env.startswith("engine:"):
        return _make_engine_world(spec)
    import gymnasium as gym

    from tickcall.envs.binding import make_binding
    from tickcall.envs.realtime import RealTimeEnv

    try:
        binding = make_binding(spec.env, **(spec.env_kwargs or {}))
    except gym.error.Error as exc:
        raise WorldError(f"cannot make env {spec.env!r}: {exc}") from None
    rt = RealTimeEnv(binding, physics_hz=spec.physics_hz, mode="realtime", seed=spec.seed,
                     max_episodes=spec.max_episodes)
    hands = make_hands(rt, binding)
    return World(binding, rt, hands, env_id=spec.env, noop=_declared_noop(binding),
                 history_chars=spec.history_chars)
