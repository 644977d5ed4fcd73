"""The world of a control loop for a game engine over the bridge, built here (the composition root).

``make_engine_world(spec)`` binds the bridge that ``spec.env`` (``engine:tcp://HOST:PORT``) names,
waits for the engine (``envs.engine_bridge_world.open_bridge``), builds the hands (an ``AsyncFC`` with
one ``latest``-wins lane named ``engine`` whose actuator sends each call to the engine and waits,
in the lane's worker thread, for its result) and passes them into the envs-side
``EngineWorld``. The envs room never imports the loop; only this module joins the two.

``make_engine_crowd_world(spec)`` is the same for an engine that runs a crowd of NPCs (protocol 1.1,
``engines/build/tickcall-reference-engine --agents N``): an ``envs.engine_bridge_crowd.EngineCrowdWorld``
(the control loop's ``CrowdWorld``), which sends each agent's call at once and needs no hands.
"""

from __future__ import annotations

from typing import Any, Protocol

from tickcall.control_loop.futures.core import AsyncFC
from tickcall.control_loop.futures.lanes import Lane
from tickcall.envs.engine_bridge import EngineBridge
from tickcall.envs.engine_bridge_crowd import EngineCrowdWorld, open_crowd_bridge
from tickcall.envs.engine_bridge_world import (
    EngineActuator,
    EngineWorld,
    EngineWorldError,
    TickObservations,
    open_bridge,
)
from tickcall.models.tools import ToolSpec

__all__ = ["EngineCrowdWorldSpec", "EngineWorldSpec", "make_engine_crowd_world", "make_engine_hands",
           "make_engine_world"]

LANE = "engine"
DEFAULT_LANE_TIMEOUT_S = 1.0


class EngineWorldSpec(Protocol):
    """What ``make_engine_world`` reads (``tickcall.world.WorldSpec`` has it). ``seed``,
    ``max_episodes`` and ``physics_hz`` belong to the engine, which runs its own episodes and frame
    loop, so they are not used here."""

    env: str                              # "engine:tcp://HOST:PORT"
    env_kwargs: dict[str, Any] | None     # envs.engine_bridge_world.WORLD_KWARGS
    history_chars: int                    # longest result text one history line shows


def make_engine_hands(bridge: EngineBridge, specs: list[ToolSpec],
                      lane_timeout_s: float = DEFAULT_LANE_TIMEOUT_S,
                      ticks: TickObservations | None = None) -> AsyncFC:
    """An ``AsyncFC`` with one ``latest``-wins lane (``engine``) for every tool of the engine: a newer
    call replaces a queued one; a call not completed within ``lane_timeout_s`` seconds times out.
    ``ticks``: shared with the world, so each call names its tick and the observation it answers (the
    lane passes the call's context, whose ``seq`` is the loop's tick)."""
    names = tuple(s.name for s in specs)
    order = {s.name: list(s.param_names) for s in specs}
    lane = Lane(LANE, tools=names, policy="latest", timeout_complete_s=lane_timeout_s, context=True)
    # the actuator waits a little longer than the lane, so the lane's timeout is the one reported
    actuator = EngineActuator(bridge, timeout_s=lane_timeout_s + 1.0, ticks=ticks)
    return AsyncFC([lane], {LANE: actuator}, param_order=order)


def make_engine_world(spec: EngineWorldSpec | str, **env_kwargs: Any) -> EngineWorld:
    """Bind the bridge ``spec`` names, wait up to ``wait_s`` (env_kwargs, default 60 s) for an engine
    and its first observation, and return its world with hands. ``spec``: a ``WorldSpec``-shaped
    object, or the ``engine:...`` string itself; ``env_kwargs`` override the spec's.
    Raises ``envs.engine_bridge_world.EngineWorldError`` when no engine came in time."""
    if isinstance(spec, str):
        env, history_chars, kwargs = spec, 40, dict(env_kwargs)
    else:
        env, history_chars = spec.env, spec.history_chars
        kwargs = {**(spec.env_kwargs or {}), **env_kwargs}
    lane_timeout_s = float(kwargs.get("lane_timeout_s", DEFAULT_LANE_TIMEOUT_S))
    bridge = open_bridge(env, kwargs)
    hands = None
    try:
        session = bridge.session
        if session is None:  # the engine left between its first observation and now
            raise EngineWorldError(f"the engine on {bridge.endpoint} left before its world was made")
        ticks = TickObservations()
        hands = make_engine_hands(bridge, session.tools, lane_timeout_s, ticks)
        return EngineWorld(bridge, env_id=env, history_chars=history_chars, hands=hands, ticks=ticks)
    except BaseException:
        if hands is not None:
            hands.shutdown(timeout_s=0.5)
        bridge.close()
        raise


class EngineCrowdWorldSpec(EngineWorldSpec, Protocol):
    """What ``make_engine_crowd_world`` reads: ``EngineWorldSpec`` plus ``agents`` (how many agents'
    first observations to wait for; None: the engine's hello roster)."""

    agents: int | None


def make_engine_crowd_world(spec: EngineCrowdWorldSpec | str, **env_kwargs: Any) -> EngineCrowdWorld:
    """Bind the bridge ``spec`` names, wait up to ``wait_s`` (env_kwargs, default 60 s) for a crowd
    engine (a hello with ``agents``) and the first observations of ``spec.agents`` of its agents, and
    return its crowd world. ``spec``: a ``WorldSpec``-shaped object, or the ``engine:...`` string
    itself (then ``agents`` may be passed in ``env_kwargs``); ``env_kwargs`` override the spec's
    (``history_keep``: calls remembered per agent, default 8). Raises
    ``envs.engine_bridge_world.EngineWorldError`` (one line) when no crowd engine came in time."""
    if isinstance(spec, str):
        kwargs = dict(env_kwargs)
        env, history_chars, agents = spec, 40, kwargs.pop("agents", None)
    else:
        env, history_chars, agents = spec.env, spec.history_chars, getattr(spec, "agents", None)
        kwargs = {**(spec.env_kwargs or {}), **env_kwargs}
    history_keep = int(kwargs.get("history_keep", 8))
    bridge = open_crowd_bridge(env, kwargs, agents=agents)
    try:
        return EngineCrowdWorld(bridge, env_id=env, history_chars=history_chars, history_keep=history_keep)
    except BaseException:
        bridge.close()
        raise
