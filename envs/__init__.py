"""envs/: the world. Gymnasium adapters (tools from action spaces, observation text), built-in game
envs, real-time stepping, the game-engine bridge, scripted experts.

Built-in envs are registered with gymnasium through the ``gymnasium.envs`` entry point of the
installed distribution, so no import of ours is needed::

    import gymnasium as gym
    env = gym.make("tickcall/Arena-v0")

Importing this package registers them too (``register()`` is idempotent).

Main entry points: ``binding.make_binding(env_id_or_env)`` (tools, observation text, call -> action),
``realtime.RealTimeEnv`` (wall-clock stepping and lock-step), ``experts.get_expert`` and
``policies.ModelPolicy`` (policies emitting calls), ``actuators`` (for the futures layer).
"""

from __future__ import annotations

BUILTIN_ENVS: dict[str, str] = {
    "tickcall/Arena-v0": "tickcall.envs.arena:ArenaEnv",
}


def register() -> None:
    """Register the built-in envs with gymnasium (idempotent)."""
    import gymnasium as gym

    for env_id, entry_point in BUILTIN_ENVS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, disable_env_checker=False)


register()
