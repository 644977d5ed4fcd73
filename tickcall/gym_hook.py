"""Registers tickcall's gymnasium envs the moment gymnasium is imported, with no import of ours.

Gymnasium 1.x dropped the ``gymnasium.envs`` entry-point plugins of 0.26-0.29, so
``gym.make("tickcall/Arena-v0")`` in a fresh interpreter needs a start-up hook: the ``tickcall-gym.pth``
file that the distribution installs beside the package runs ``install()``. ``install`` only adds a finder
to ``sys.meta_path`` (microseconds; gymnasium is not imported); when something imports gymnasium, the
finder lets it load, then registers ``tickcall/*`` ids with string entry points (no env code is
imported until an env is made). Any failure here is swallowed: a start-up hook must never break Python.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any

# id -> entry point; the one list (tickcall.envs.BUILTIN_ENVS reads it)
BUILTIN_ENVS: dict[str, str] = {
    "tickcall/Arena-v0": "tickcall.envs.arena:ArenaEnv",
    "tickcall/GoalArena-v0": "tickcall.envs.goal_arena:GoalArenaEnv",
    "tickcall/GoalArena-Heldout-v0": "tickcall.envs.goal_arena:GoalArenaEnv",
}
# keyword arguments per id (the held-out id is the same env on the held-out split)
BUILTIN_KWARGS: dict[str, dict[str, Any]] = {"tickcall/GoalArena-Heldout-v0": {"split": "heldout"}}


def register_builtin_envs() -> None:
    """Register the built-in envs with gymnasium (idempotent)."""
    import gymnasium as gym

    for env_id, entry_point in BUILTIN_ENVS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, disable_env_checker=False,
                         kwargs=dict(BUILTIN_KWARGS.get(env_id, {})))


class _AfterGymnasium(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps gymnasium's loader so registration runs right after it loads."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != "gymnasium":
            return None
        sys.meta_path.remove(self)  # once, and no recursion through the lookup below
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            exec_module(module)
            with contextlib.suppress(Exception):  # never break an import of gymnasium
                register_builtin_envs()

        loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Register now if gymnasium is loaded, else when it is (called from ``tickcall-gym.pth``)."""
    with contextlib.suppress(Exception):
        if "gymnasium" in sys.modules:
            register_builtin_envs()
        elif not any(isinstance(f, _AfterGymnasium) for f in sys.meta_path):
            sys.meta_path.insert(0, _AfterGymnasium())
