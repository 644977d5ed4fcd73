"""A gymnasium env as the control loop's world: real-time stepping, its tools, observation text, fallbacks.

``EnvWorld`` implements the ``tickcall.control_loop.world.World`` protocol by shape (this room never
imports the loop): ``tools``, ``observe()``, ``fallback(kind)``, ``apply_call(call)``, the episode
accessors, ``start()``/``stop()``/``close()`` and ``describe()``. Its ``hands`` (the AsyncFC that applies
calls) are built by the composition root (``tickcall.world.make_world``) and handed in.

Fallbacks (``fallback(kind)``, when no legal call arrived by a tick's deadline):

* ``hold``: nothing is applied; the env keeps the action in force (real-time envs hold it);
* ``default``: the binding's default action is applied (``EnvBinding.default_action()``);
* ``noop``: the env's declared no-op action is applied (Arena: ``wait``; catalog entries with a
  ``noop``); an env without one holds instead (CartPole has no neutral action).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from tickcall.envs.binding import EnvBinding
from tickcall.envs.catalog import entry_for
from tickcall.envs.realtime import RealTimeEnv


@dataclass(frozen=True)
class EnvObservation:
    """One observation as the loop reads it: turn text, when it was taken (monotonic s), episode index."""

    text: str
    taken_at: float
    episode: int = 0


class EnvWorld:
    """A real-time env with its binding and its hands. ``start()`` starts the physics thread."""

    def __init__(self, binding: EnvBinding, rt: RealTimeEnv, hands: Any = None, *, env_id: str,
                 history_chars: int = 40) -> None:
        self.binding = binding
        self.rt = rt
        self.hands = hands
        self.env_id = env_id
        self.history_chars = history_chars
        self.fallbacks: dict[str, int] = {}
        self._noop = declared_noop(binding)

    # ---- what the loop uses -----------------------------------------------------------------
    @property
    def tools(self) -> list[dict[str, Any]]:
        return list(self.binding.tools)

    def observe(self) -> EnvObservation:
        """The newest observation, without waiting for the env."""
        snap = self.rt.latest()
        return EnvObservation(text=self.binding.obs_text(snap.obs), taken_at=snap.t, episode=snap.episode)

    def fallback(self, kind: str) -> str:
        """Apply the fallback ``kind`` (see module docstring); returns what was done."""
        if kind == "default":
            self.rt.apply(self.binding.default_action())
            done = "default"
        elif kind == "noop" and self._noop is not None:
            self.rt.apply(copy.deepcopy(self._noop))
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
    def start(self) -> EnvWorld:
        self.rt.start()
        return self

    def stop(self) -> None:
        """Stop the physics (the last state stays readable for the report)."""
        self.rt.stop()

    def close(self) -> None:
        try:
            if self.hands is not None:
                self.hands.shutdown(timeout_s=0.5)
        finally:
            self.rt.close()

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"env": self.env_id, "tools": [_tool_name(t) for t in self.tools],
                               "physics_hz": self.rt.physics_hz, "fallbacks": dict(self.fallbacks)}
        try:
            out["env_stats"] = {k: v for k, v in self.rt.summary().items() if k not in ("returns", "lengths")}
            out["binding"] = self.binding.describe()
        except Exception:  # the description is best effort: a report is still written without it
            pass
        if self.hands is not None:
            try:
                m = self.hands.metrics()
                out["hands"] = {k: m[k] for k in ("accepted", "finished", "in_flight", "states",
                                                  "late_results", "balanced", "dispatch_us") if k in m}
            except Exception:
                pass
        return out


def _tool_name(tool: dict[str, Any]) -> str | None:
    return tool["function"]["name"] if "function" in tool else tool.get("name")


def declared_noop(binding: EnvBinding) -> Any:
    """The env's own no-op action, or None when it declares none."""
    raw = binding.env.unwrapped
    if hasattr(raw, "noop_action"):
        return raw.noop_action()
    if entry_for(binding.env_id).noop is not None:
        return binding.default_action()
    return None
