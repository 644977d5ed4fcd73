"""Actuators for the futures layer: callables ``(call: Call) -> result`` that apply a call to an env.

    from tickcall.envs.actuators import actuator_for
    act = actuator_for(rt)            # rt: envs.realtime.RealTimeEnv (real time or lock-step)
    act(Call("aim", {"direction": "N"}))   # -> ApplyResult; raises CallRejected for an illegal call
    act = actuator_for(binding)       # a plain EnvBinding: each call steps the env once (lock-step)

Both raise ``CallRejected`` (with the binding's reason) for a call the env cannot use, unless made
with ``raise_on_reject=False`` (then the fallback applies and the result says ``rejected``). Both are
thread-safe: the futures layer may call them from its lanes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from tickcall.envs.binding import EnvBinding
from tickcall.envs.realtime import ApplyResult, RealTimeEnv
from tickcall.models.calls import Call


class CallRejected(RuntimeError):
    """The env refused the call (unknown tool, bad argument, ...); ``reason`` says why."""

    def __init__(self, call: Any, reason: str) -> None:
        super().__init__(f"call rejected: {reason}")
        self.call, self.reason = call, reason


class RealTimeActuator:
    """Applies calls to a ``RealTimeEnv``; the action persists until the next call."""

    def __init__(self, rt: RealTimeEnv, *, raise_on_reject: bool = True) -> None:
        if rt.binding is None:
            raise ValueError("the RealTimeEnv needs an EnvBinding to accept calls")
        self.rt, self.raise_on_reject = rt, raise_on_reject

    def __call__(self, call: Call) -> ApplyResult:
        res = self.rt.apply(call)
        if not res.ok and self.raise_on_reject:
            raise CallRejected(call, res.reason)
        return res


@dataclass
class StepOutcome:
    """One lock-step: the call's status and what the env returned (auto-reset on episode end)."""

    status: str
    reason: str
    obs: Any
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]


class EnvStepActuator:
    """Each call converts through the binding and steps the env once (``hold`` steps, summing
    rewards). Resets automatically after an episode ends (the next call starts a new one)."""

    def __init__(self, binding: EnvBinding, *, hold: int = 1, raise_on_reject: bool = True,
                 seed: int | None = None) -> None:
        self.binding, self.hold, self.raise_on_reject = binding, max(1, int(hold)), raise_on_reject
        self._lock = threading.Lock()
        self._needs_reset = True
        self._seed = seed
        self.obs: Any = None

    def reset(self, seed: int | None = None) -> Any:
        with self._lock:
            self.obs, _ = self.binding.env.reset(seed=seed)
            self._needs_reset = False
            return self.obs

    def __call__(self, call: Call) -> StepOutcome:
        res = self.binding.call_to_action(call)
        if not res.ok and self.raise_on_reject:
            raise CallRejected(call, res.reason)
        with self._lock:
            if self._needs_reset:
                self.obs, _ = self.binding.env.reset(seed=self._seed)
                self._seed = None if self._seed is None else self._seed + 1
                self._needs_reset = False
            total, term, trunc, info = 0.0, False, False, {}
            for _ in range(self.hold):
                self.obs, r, term, trunc, info = self.binding.env.step(res.action)
                total += float(r)
                if term or trunc:
                    self._needs_reset = True
                    break
            return StepOutcome(res.status, res.reason, self.obs, total, bool(term), bool(trunc), dict(info))


def actuator_for(target: RealTimeEnv | EnvBinding, **kwargs: Any) -> RealTimeActuator | EnvStepActuator:
    """The actuator for a ``RealTimeEnv`` or a plain ``EnvBinding``."""
    if isinstance(target, RealTimeEnv):
        return RealTimeActuator(target, **kwargs)
    if isinstance(target, EnvBinding):
        return EnvStepActuator(target, **kwargs)
    raise TypeError(f"no actuator for {type(target).__name__}: give a RealTimeEnv or an EnvBinding")
