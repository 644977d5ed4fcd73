"""Names that make generic action/observation spaces readable, for well-known gymnasium envs.

An entry only names things (tool, parameters, action labels, observation keys) and sets the text
precision; everything else comes from the space itself. An env that is not listed still works: it
gets the tool ``act`` and observation keys ``o0``, ``o1``, ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EnvEntry:
    """How a gymnasium env is offered to a model.

    ``noop`` is the fallback action when a call is rejected (None: the space's lowest/zero action).
    """

    tool: str = "act"
    description: str = ""
    param_names: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None
    obs_names: tuple[str, ...] | None = None
    precision: int = 3
    noop: Any = None


CATALOG: dict[str, EnvEntry] = {
    "CartPole-v1": EnvEntry(
        tool="push", description="Push the cart to the left or to the right.",
        param_names=("direction",), labels=("left", "right"),
        obs_names=("x", "v", "a", "w"), precision=3),
    "MountainCar-v0": EnvEntry(
        tool="push", description="Accelerate the car left, not at all, or right.",
        param_names=("direction",), labels=("left", "none", "right"),
        obs_names=("x", "v"), precision=3, noop=1),
    "MountainCarContinuous-v0": EnvEntry(
        tool="thrust", description="Engine force, -1 (full left) to +1 (full right).",
        param_names=("force",), obs_names=("x", "v"), precision=3, noop=0.0),
    "Pendulum-v1": EnvEntry(
        tool="torque", description="Torque on the pendulum joint, -2 to +2.",
        param_names=("value",), obs_names=("cos", "sin", "w"), precision=3, noop=0.0),
    "Acrobot-v1": EnvEntry(
        tool="torque", description="Torque on the middle joint: negative, none or positive.",
        param_names=("direction",), labels=("neg", "none", "pos"),
        obs_names=("c1", "s1", "c2", "s2", "w1", "w2"), precision=3, noop=1),
    "LunarLander-v3": EnvEntry(
        tool="engine", description="Fire one engine for this step (or none).",
        param_names=("fire",), labels=("none", "left", "main", "right"),
        obs_names=("x", "y", "vx", "vy", "a", "w", "l", "r"), precision=2, noop=0),
    "LunarLanderContinuous-v3": EnvEntry(
        tool="engines", description="Main engine (-1..1, on above 0) and side engines (-1 left .. 1 right).",
        param_names=("main", "lateral"), obs_names=("x", "y", "vx", "vy", "a", "w", "l", "r"),
        precision=2, noop=0.0),
    "BipedalWalker-v3": EnvEntry(
        tool="motors", description="Torques of the four joints, -1 to 1.",
        param_names=("hip1", "knee1", "hip2", "knee2"), precision=2, noop=0.0),
}


def entry_for(env_id: str | None) -> EnvEntry:
    """The catalog entry of an env id (versions must match), or the generic default."""
    return CATALOG.get(env_id or "", EnvEntry())
