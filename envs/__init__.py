"""envs/: the world. Gymnasium adapters (tools from action spaces, observation text), built-in game
envs, real-time stepping, the game-engine bridge, scripted experts.

Built-in envs are registered with gymnasium when this package is imported (``import envs``; calling
``envs.register()`` again is harmless)::

    import gymnasium as gym
    import envs  # registers tickcall/Arena-v0
    env = gym.make("tickcall/Arena-v0")
    # or, without an explicit import: gym.make("envs:tickcall/Arena-v0")

Main entry points: ``envs.binding.make_binding(env_id_or_env)`` (tools, observation text, call ->
action), ``envs.realtime.RealTimeEnv`` (wall-clock stepping and lock-step), ``envs.experts.get_expert``
and ``envs.policies.ModelPolicy`` (policies emitting calls), ``envs.actuators`` (for the futures layer).
"""

from __future__ import annotations

BUILTIN_ENVS: dict[str, str] = {
    "tickcall/Arena-v0": "envs.arena:ArenaEnv",
}


def register() -> None:
    """Register the built-in envs with gymnasium (idempotent)."""
    import gymnasium as gym

    for env_id, entry_point in BUILTIN_ENVS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, disable_env_checker=False)


register()
