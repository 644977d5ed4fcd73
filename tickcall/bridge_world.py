"""The world of a control loop for a game engine over the bridge, built here (the composition root).

``make_engine_world(spec)`` binds the bridge that ``spec.env`` (``engine:tcp://HOST:PORT``) names,
waits for the engine (``envs.engine_bridge_world.open_bridge``), builds the hands (an ``AsyncFC`` with
one ``latest``-wins lane named ``engine`` whose actuator sends each call to the engine and waits,
in the lane's worker thread, for its result) and passes them into the envs-side
``EngineWorld``. The envs room never imports the loop; only this module joins the two.
"""

from __future__ import annotations

from typing import Any, Protocol

from tickcall.control_loop.futures.core import AsyncFC
from tickcall.control_loop.futures.lanes import Lane
from tickcall.envs.engine_bridge import EngineBridge
from tickcall.envs.engine_bridge_world import (
    EngineActuator,
    EngineWorld,
    EngineWorldError,
    TickObservations,
    open_bridge,
)
from tickcall.models.tools import ToolSpec

__all__ = ["EngineWorldSpec", "make_engine_hands", "make_engine_world"]

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
