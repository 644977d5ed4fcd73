"""What the control loop needs from a world, as protocols: the env side implements them by shape.

The loop never builds a world: the composition root (``tickcall.world.make_world``) does, from a
gymnasium env (``tickcall.envs.world.EnvWorld``) or a game engine over the bridge, and hands the loop
actor a zero-argument factory. This room therefore imports nothing of ``envs``.

Invariants a world keeps:

* ``observe()`` never waits for the env: it returns the newest observation, or raises when there is
  none fresh enough (the loop records the tick and applies its fallback);
* ``fallback(kind)`` applies ``hold``, ``default`` or ``noop`` and returns what it did (a world without
  a declared no-op holds);
* ``hands`` is the AsyncFC that applies calls without blocking the tick, or None (then
  ``apply_call`` applies a call directly).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable


class WorldError(ValueError):
    """An env spec that cannot be turned into a world (unknown id, bridge unavailable...)."""


@runtime_checkable
class Observation(Protocol):
    """What a world hands the loop each tick."""

    text: str         # the observation part of the turn, as the model reads it
    taken_at: float   # when the env produced it (time.monotonic seconds)
    episode: int      # index of the episode it belongs to


@runtime_checkable
class World(Protocol):
    """A world the loop drives: its tools, its newest observation, fallbacks, hands, lifecycle.

    Optional: ``observed(tick, obs)``, called by the loop right after a tick took ``obs``, for a world
    whose calls must name the tick and observation they answer (the engine bridge's ``EngineWorld``).
    """

    hands: Any            # AsyncFC (dispatch(call) -> future), or None
    history_chars: int    # longest result text a history line shows

    @property
    def tools(self) -> list[dict[str, Any]]: ...

    def observe(self) -> Observation: ...

    def fallback(self, kind: str) -> str: ...

    def apply_call(self, call: Any) -> Any: ...

    def episodes_done(self) -> int: ...

    def episodes(self) -> list[dict[str, Any]]: ...

    def current_episode(self) -> dict[str, Any]: ...

    def start(self) -> World: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


@runtime_checkable
class CrowdWorld(Protocol):
    """A world of several agents that act at once (PettingZoo's Parallel API, an engine's NPC crowd).

    One loop ticks every agent (``control_loop.crowd``): each tick it takes ``observe_all()``, sends one
    decide per agent (all decoded as one batch by the service) and applies each agent's call with
    ``apply_call(agent, call)``. Invariants: ``observe_all`` never waits for the env and returns the
    newest observation of every agent alive now (agents may come and go between episodes, as in
    PettingZoo); ``apply_call`` and ``fallback`` return at once (set-point semantics: the agent's action
    stays in force until replaced); every agent uses the same ``tools`` (one registration).

    Optional hooks the loop calls when a world has them: ``observed_all(tick, observations)`` right
    after a tick took its observations (a world whose calls name the loop's tick: the engine bridge),
    and ``unobserved(observations) -> [agent]``, the agents present without a fresh observation this
    tick (each gets an ``error`` agent-tick and its fallback, so nothing present goes unaccounted).
    """

    history_chars: int    # longest result text a history line shows

    @property
    def tools(self) -> list[dict[str, Any]]: ...

    @property
    def agents(self) -> list[str]: ...

    def observe_all(self) -> dict[str, Observation]: ...

    def history(self, agent: str) -> list[str]: ...

    def fallback(self, agent: str, kind: str) -> str: ...

    def apply_call(self, agent: str, call: Any) -> Any: ...

    def episodes_done(self) -> int: ...

    def episodes(self) -> list[dict[str, Any]]: ...

    def current_episode(self) -> dict[str, Any]: ...

    def start(self) -> CrowdWorld: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


WorldFactory = Callable[[], World]
"""A zero-argument callable that builds a world where it is called (inside the loop actor)."""
