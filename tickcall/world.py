"""Worlds for the control loop, built here (the composition root) from an env spec.

``make_world(spec)`` is the one place where env construction is decided:

* a gymnasium id (``"tickcall/Arena-v0"``, ``"CartPole-v1"``): ``envs.binding.make_binding`` +
  ``envs.realtime.RealTimeEnv`` (physics in its own thread at the env's rate, actions persist until
  replaced), with hands (``make_hands``: an ``AsyncFC`` whose one ``latest``-wins lane applies calls
  through ``envs.actuators.actuator_for``), as an ``envs.world.EnvWorld``;
* ``engine:tcp://HOST:PORT``: an external game engine over the bridge (``tickcall.bridge_world``).

The loop actor builds its world in its own process: pass it ``world_factory(spec)``.

Multi-agent worlds (the crowd loop's ``CrowdWorld``) are built by ``make_crowd_world(spec)`` (a picklable
factory: ``crowd_world_factory(spec)``) from a multi-agent id (``is_crowd_env``): the built-in
``tickcall/CrowdArena-v0`` (``spec.agents`` NPCs, each in its own Arena) or ``pettingzoo:MODULE:FUNCTION``
(any PettingZoo ParallelEnv), as an ``envs.crowd.PettingZooWorld`` (real-time physics thread, per-agent
set-points, fallbacks and history).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tickcall.control_loop.futures.core import AsyncFC
from tickcall.control_loop.futures.lanes import Lane
from tickcall.control_loop.world import CrowdWorld, World, WorldError, WorldFactory

__all__ = [
    "WorldError",
    "WorldSpec",
    "check_spec",
    "crowd_world_factory",
    "is_crowd_env",
    "make_crowd_world",
    "make_hands",
    "make_world",
    "world_factory",
]


@dataclass
class WorldSpec:
    """What ``make_world`` needs (JSON-able)."""

    env: str  # gymnasium id, "engine:tcp://HOST:PORT", or a multi-agent id (is_crowd_env)
    env_kwargs: dict[str, Any] | None = None
    seed: int | None = 0
    max_episodes: int | None = None  # the physics stops after this many episodes
    physics_hz: float | None = None  # None: the env's own rate (its metadata)
    history_chars: int = 40  # longest result text one history line shows
    agents: int | None = None  # number of agents, for a multi-agent env that takes one


def make_hands(rt: Any, binding: Any, clock: Callable[[], float] = time.monotonic) -> AsyncFC:
    """An ``AsyncFC`` with one ``latest``-wins lane named ``env`` that applies every tool's calls to the
    real-time env (set-point semantics: a newer call replaces a queued one; stale ticks are refused)."""
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
        from tickcall.bridge_world import make_engine_world

        return make_engine_world(spec)
    if is_crowd_env(spec.env):
        raise WorldError(
            f"{spec.env} is a multi-agent env: build it with make_crowd_world (tickcall run "
            "drives it with --agents N)"
        )
    import gymnasium as gym

    from tickcall.envs.binding import make_binding
    from tickcall.envs.realtime import RealTimeEnv
    from tickcall.envs.world import EnvWorld

    try:
        binding = make_binding(spec.env, **(spec.env_kwargs or {}))
    except gym.error.Error as exc:
        raise WorldError(f"cannot make env {spec.env!r}: {exc}") from None
    rt = RealTimeEnv(
        binding, physics_hz=spec.physics_hz, mode="realtime", seed=spec.seed, max_episodes=spec.max_episodes
    )
    return EnvWorld(binding, rt, make_hands(rt, binding), env_id=spec.env, history_chars=spec.history_chars)


def check_spec(spec: WorldSpec | str, *, agents: int | None = None) -> None:
    """Raise ``WorldError`` (one line) for a spec that cannot become a world, before any actor starts:
    an unknown or deprecated gymnasium id, an engine endpoint that is not ``tcp://``/``ipc://``, a
    multi-agent id whose module, env, agent count or spaces cannot make a crowd (the env is built and
    closed to find out), or ``agents`` > 1 for a single-agent env. ``agents`` overrides ``spec.agents``."""
    env = spec if isinstance(spec, str) else spec.env
    if agents is None and not isinstance(spec, str):
        agents = spec.agents
    if env.startswith("engine:"):
        endpoint = env[len("engine:") :]
        if not endpoint.startswith(("tcp://", "ipc://")):
            raise WorldError(f"{env}: an engine is named engine:tcp://HOST:PORT (or engine:ipc://PATH)")
        return
    if is_crowd_env(env):
        world = make_crowd_world(
            WorldSpec(env=env, agents=agents, env_kwargs=None if isinstance(spec, str) else spec.env_kwargs)
        )
        world.close()
        return
    import gymnasium as gym

    try:
        gym.spec(env)
    except gym.error.Error as exc:
        if env.startswith("tickcall/Crowd"):  # a misspelt multi-agent id: name the ones that exist
            from tickcall.envs.crowd import CROWD_ENVS

            raise WorldError(f"unknown multi-agent env {env!r}; built in: {', '.join(CROWD_ENVS)}") from None
        raise WorldError(f"cannot make env {env!r}: {exc}") from None
    if agents is not None and agents > 1:
        raise WorldError(
            f"{env} is a single-agent env; {agents} agents need a multi-agent env "
            "(tickcall/CrowdArena-v0, or pettingzoo:MODULE:FUNCTION)"
        )


def world_factory(spec: WorldSpec | str, **kwargs: Any) -> WorldFactory:
    """A picklable zero-argument factory of ``make_world(spec)``, for the loop actor."""
    if isinstance(spec, str):
        spec = WorldSpec(env=spec, **kwargs)
    return functools.partial(make_world, spec)


def is_crowd_env(env_id: str) -> bool:
    """True for a multi-agent env id: ``tickcall/CrowdArena-v0`` or ``pettingzoo:MODULE:FUNCTION``."""
    from tickcall.envs.crowd import is_crowd_id

    return is_crowd_id(env_id)


def make_crowd_world(spec: WorldSpec | str, **kwargs: Any) -> CrowdWorld:
    """Build the crowd world of a multi-agent spec (``envs.crowd.make_crowd``: a PettingZoo ParallelEnv in
    real time, ``spec.agents`` agents where the env takes a count). Does not start the physics. Raises
    ``WorldError`` (one line) for an id, env, agent count or spaces that cannot make a crowd."""
    if isinstance(spec, str):
        spec = WorldSpec(env=spec, **kwargs)
    from tickcall.envs.crowd import CrowdEnvError, make_crowd

    if not is_crowd_env(spec.env):
        raise WorldError(
            f"{spec.env} is not a multi-agent env: use tickcall/CrowdArena-v0 or "
            "pettingzoo:MODULE:FUNCTION (e.g. pettingzoo:pettingzoo.sisl.multiwalker_v9:parallel_env)"
        )
    try:
        return make_crowd(
            spec.env,
            agents=spec.agents,
            env_kwargs=spec.env_kwargs,
            seed=spec.seed,
            max_episodes=spec.max_episodes,
            physics_hz=spec.physics_hz,
            history_chars=spec.history_chars,
        )
    except CrowdEnvError as exc:
        raise WorldError(str(exc)) from None


def crowd_world_factory(spec: WorldSpec | str, **kwargs: Any) -> Callable[[], CrowdWorld]:
    """A picklable zero-argument factory of ``make_crowd_world(spec)``, for the crowd loop actor."""
    if isinstance(spec, str):
        spec = WorldSpec(env=spec, **kwargs)
    return functools.partial(make_crowd_world, spec)
