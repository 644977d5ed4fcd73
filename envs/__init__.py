"""envs/: the world. Gymnasium adapters (tools from action spaces, observation text), built-in game
envs, real-time stepping, the game-engine bridge, scripted experts.

Built-in envs are registered with gymnasium as soon as gymnasium is imported (``tickcall.gym_hook``,
run by the ``tickcall-gym.pth`` start-up file the distribution installs), so no import of ours is needed::

    import gymnasium as gym
    env = gym.make("tickcall/Arena-v0")

Importing this package registers them too (``register()`` is idempotent).

Main entry points: ``binding.make_binding(env_id_or_env)`` (tools, observation text, call -> action),
``realtime.RealTimeEnv`` (wall-clock stepping and lock-step), ``experts.get_expert`` and
``policies.ModelPolicy`` (policies emitting calls), ``actuators`` (for the futures layer).
"""

from __future__ import annotations

from tickcall.gym_hook import BUILTIN_ENVS, register_builtin_envs

__all__ = ["BUILTIN_ENVS", "register"]


def register() -> None:
    """Register the built-in envs with gymnasium (idempotent)."""
    register_builtin_envs()


register()
