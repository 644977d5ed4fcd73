"""What distillation needs from one env, as plain callables: ``EnvSource`` and its ``Instance``.

An :class:`EnvSource` bundles the tools, the physics rate and a factory of independent copies
(``source.instance()``: env + converters + teacher) for a rollout:

* ``tools``: the tool schemas offered to the model (the static prompt prefix);
* ``instance.obs_text(obs) -> str``: the per-tick observation text (the turn's query);
* ``instance.teacher(obs) -> Call``: the decision the student must copy;
* ``instance.to_action(call)``: the env action a call stands for;
* ``hold``: mean physics steps per decision. The real-time loop decides at ``decision_hz`` (16) while
  the env steps at its own rate (CartPole 50 Hz -> 3.125, Arena 20 Hz -> 1.25); rollouts round it
  stochastically per decision so training sees the jitter the wall clock gives.

``models`` imports nothing of ours: sources are built outside it (``tickcall.envs.teaching.get_source``
from the envs' bindings and experts) and handed to the pipeline (``SourceFactory``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tickcall.models.calls import Call
from tickcall.models.tools import ToolSpec

DECISION_HZ = 16.0


@dataclass
class Instance:
    """One env copy with its converters and teacher (teachers may read the env, e.g. LunarLander)."""

    env: Any
    obs_text: Callable[[Any], str]
    teacher: Callable[[Any], Call]
    to_action: Callable[[Call], Any]
    random_call: Callable[[Any], Call]
    default_action: Callable[[], Any]
    teacher_logits: Callable[[Any], dict[str, dict[str, float]]] | None = None  # scores behind teacher()

    def logits_of(self, obs: Any) -> dict[str, dict[str, float]] | None:
        """The teacher's ``{parameter: {value: logit}}`` for ``obs`` (None when it has no scores)."""
        return self.teacher_logits(obs) if self.teacher_logits is not None else None


@dataclass
class EnvSource:
    """One env prepared for distillation (see module docstring)."""

    env_id: str
    tools: list[ToolSpec]
    instance: Callable[[], Instance]
    physics_hz: float
    decision_hz: float = DECISION_HZ
    origin: str = "builtin"
    # A string that loads the same teacher again (``envs.teachers.load_teacher``; None: this source has
    # no teacher: its labels come from a dataset) and the teacher's provenance (training time, return).
    teacher_spec: str | None = "expert"
    teacher_info: dict[str, Any] = field(default_factory=dict)

    @property
    def has_teacher(self) -> bool:
        """True when ``instance().teacher`` labels states (False: a dataset-only source)."""
        return self.teacher_spec is not None

    @property
    def hold(self) -> float:
        """Mean physics steps per decision (>= 1)."""
        return max(1.0, self.physics_hz / self.decision_hz)

    def perturb(self, env: Any, rng: Any, scale: float) -> None:
        """Nudge the env's internal state so the teacher is seen recovering (no-op when unknown)."""
        import numpy as np

        inner = getattr(env, "unwrapped", env)
        fn = getattr(inner, "perturb", None)
        if callable(fn):
            fn(rng, scale)
            return
        if self.env_id.startswith("CartPole") and getattr(inner, "state", None) is not None:
            s = np.asarray(inner.state, dtype=np.float64)
            inner.state = s + rng.normal(0.0, 1.0, size=4) * scale * np.array([0.1, 0.2, 0.03, 0.2])
        elif self.env_id == "tickcall/Arena-v0" and hasattr(inner, "tpos"):
            # move the target somewhere else in the arena: the teacher re-aims and closes in
            inner.tpos = np.clip(inner.tpos + rng.normal(0.0, 2.5 * scale, size=2), 0.5, inner.size - 0.5)


#: ``(env_id, prefer_builtin, text_labels) -> EnvSource``: how the pipeline gets its sources.
SourceFactory = Callable[[str, bool, bool], EnvSource]


def text_values(text: str) -> list[float]:
    """The numbers of a ``k=v k=v`` observation text, in order (``x=+0.012 v=-0.340`` -> [0.012, -0.34])."""
    return [float(pair.split("=", 1)[1]) for pair in text.split()]
