"""Where training decisions come from: an env's tools, its observation text, and a teacher.

An :class:`EnvSource` bundles what distillation needs from one env id; ``source.instance()`` makes
one independent copy (env + converters + teacher) for a rollout:

* ``tools``: the tool schemas offered to the model (the static prompt prefix);
* ``instance.obs_text(obs) -> str``: the per-tick observation text (the turn's query);
* ``instance.teacher(obs) -> Call``: the decision the student must copy;
* ``instance.to_action(call)``: the env action a call stands for;
* ``hold``: mean physics steps per decision. The real-time loop decides at ``decision_hz`` (16) while
  the env steps at its own rate (CartPole 50 Hz -> 3.125, Arena 20 Hz -> 1.25); rollouts round it
  stochastically per decision so training sees the jitter the wall clock gives.

The envs package (``envs.binding.make_binding``, ``envs.experts.get_expert``) supplies bindings and
experts, so the student sees exactly the text and tools the runtime uses. A built-in CartPole-v1
source (tool ``push(direction)``, linear expert) stands in when that package is missing; the tests
may use it with ``prefer_builtin=True``. Imports of ``envs`` are lazy: ``models`` depends on nothing
of ours at import time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tickcall.models.calls import Call
from tickcall.models.tools import ToolSpec, normalize_tools

DECISION_HZ = 16.0

CARTPOLE_TOOLS = [{
    "type": "function",
    "function": {
        "name": "push",
        "description": "Push the cart to the left or to the right.",
        "parameters": {"type": "object", "properties": {
            "direction": {"type": "string", "enum": ["left", "right"]}}, "required": ["direction"]},
    },
}]


def cartpole_obs_text(obs: Any) -> str:
    """``x=+0.012 v=-0.340 a=+0.021 w=+0.551`` (cart position m, velocity m/s, angle rad, rad/s)."""
    x, v, a, w = (float(o) for o in obs)
    return f"x={x:+.3f} v={v:+.3f} a={a:+.3f} w={w:+.3f}"


def cartpole_margin(obs: Any) -> float:
    """0.05 x + 0.3 v + 3 a + 0.6 w: the built-in expert pushes right when it is positive."""
    x, v, a, w = (float(o) for o in obs)
    return 0.05 * x + 0.3 * v + 3.0 * a + 0.6 * w


def cartpole_expert(obs: Any) -> Call:
    """Linear state feedback: push right when 0.05 x + 0.3 v + 3 a + 0.6 w > 0."""
    return Call("push", {"direction": "right" if cartpole_margin(obs) > 0 else "left"})


def cartpole_logits(obs: Any) -> dict[str, dict[str, float]]:
    """The built-in expert's scores: ``{"direction": {"left": 0, "right": margin}}``."""
    return {"direction": {"left": 0.0, "right": cartpole_margin(obs)}}


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


def _env_rate(env: Any) -> float:
    fps = (getattr(env, "metadata", None) or {}).get("render_fps")
    if fps:
        return float(fps)
    dt = getattr(env.unwrapped, "dt", None) or getattr(env.unwrapped, "tau", None)
    return 1.0 / float(dt) if dt else 50.0


def _builtin_cartpole(env_id: str = "CartPole-v1", text_labels: bool = False) -> EnvSource:
    import gymnasium as gym

    def seen(obs: Any) -> Any:
        return text_values(cartpole_obs_text(obs)) if text_labels else obs

    def make() -> Instance:
        return Instance(
            env=gym.make(env_id), obs_text=cartpole_obs_text, teacher=lambda obs: cartpole_expert(seen(obs)),
            to_action=lambda call: 1 if call.arguments.get("direction") == "right" else 0,
            random_call=lambda rng: Call("push", {"direction": "right" if rng.random() < 0.5 else "left"}),
            default_action=lambda: 0, teacher_logits=lambda obs: cartpole_logits(seen(obs)))

    return EnvSource(env_id=env_id, tools=normalize_tools(CARTPOLE_TOOLS), instance=make, physics_hz=50.0,
                     origin="builtin")


def text_values(text: str) -> list[float]:
    """The numbers of a ``k=v k=v`` observation text, in order (``x=+0.012 v=-0.340`` -> [0.012, -0.34])."""
    return [float(pair.split("=", 1)[1]) for pair in text.split()]


def _from_envs_package(env_id: str, text_labels: bool = False) -> EnvSource | None:
    """A source from ``envs.binding`` + ``envs.experts`` (None when that package is missing).

    ``text_labels``: the teacher decides on the observation *as the text shows it* (numbers rounded
    to the text's precision) rather than on the raw values, so every label is a function of the
    student's input (CartPole's expert reads raw floats; beside its decision boundary the raw label
    is noise from the text's point of view). Only for envs whose text is the plain ``k=v`` list of
    the observation's entries; semantic envs (the Arena) already decide on what their text shows."""
    try:
        from tickcall.envs.binding import make_binding
        from tickcall.envs.experts import RandomPolicy, get_expert, get_expert_logits
    except ImportError:
        return None
    probe = make_binding(env_id)
    get_expert(env_id, probe)  # raises KeyError when the env has no expert
    tools = normalize_tools(probe.tools)
    rate = _env_rate(probe.env)
    probe.env.close()

    def make() -> Instance:
        b = make_binding(env_id)
        expert = get_expert(env_id, b)
        rnd = RandomPolicy(b, seed=None)

        def random_call(rng: Any) -> Call:
            rnd.space.seed(int(rng.integers(2**31)))
            return rnd.act(None)

        def to_action(call: Call) -> Any:
            return b.call_to_action(call).action

        def seen(obs: Any) -> Any:
            if not (text_labels and not b.semantic):
                return obs
            import numpy as np

            shown = np.asarray(text_values(b.obs_text(obs)), dtype=np.float32)
            if shown.shape != np.asarray(obs).shape:
                raise ValueError(f"{env_id}: the text shows {shown.size} numbers for an observation of "
                                 f"shape {np.asarray(obs).shape}; text_labels needs one per entry")
            return shown

        scores = get_expert_logits(env_id)
        return Instance(env=b.env, obs_text=b.obs_text, teacher=lambda obs: expert.act(seen(obs)),
                        to_action=to_action, random_call=random_call, default_action=b.default_action,
                        teacher_logits=(lambda obs: scores(seen(obs))) if scores is not None else None)

    return EnvSource(env_id=env_id, tools=tools, instance=make, physics_hz=rate, origin="envs")


def get_source(env_id: str, prefer_builtin: bool = False, text_labels: bool = False) -> EnvSource:
    """The :class:`EnvSource` for ``env_id``: the envs package's binding, else the built-in one.

    ``text_labels``: label with the teacher applied to the values the text shows (see
    ``_from_envs_package``; the built-in CartPole source does the same)."""
    if not (prefer_builtin and env_id.startswith("CartPole")):
        src = _from_envs_package(env_id, text_labels)
        if src is not None:
            return src
    if env_id.startswith("CartPole"):
        return _builtin_cartpole(env_id, text_labels)
    raise ValueError(f"no training source for {env_id!r}: the envs package has no binding/expert for it")
