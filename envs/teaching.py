"""Training sources from this room's envs: ``get_source(env_id, teacher=KIND)`` -> ``models.training.sources.EnvSource``.

Distillation (``models.training``) needs, per env, the tools, the observation text, a teacher and the
action a call stands for; it takes them as an ``EnvSource`` and imports nothing of ours. This module
builds them from ``envs.binding.make_binding`` and a teacher of any kind (``envs.teachers``:
scripted expert, Python callable, Stable-Baselines3 zip or agent trained on the spot), so the student sees exactly the
text (``models.prompt_text`` through the binding) and tools the runtime uses::

    from tickcall.envs.teaching import get_source
    src = get_source("CartPole-v1", text_labels=True)            # the scripted expert
    src = get_source("Acrobot-v1", teacher="ppo", work_dir="runs/w")   # PPO trained here
    inst = src.instance()            # env + obs_text + teacher + to_action + random_call (+ logits)

``prefer_builtin=True`` (CartPole only) gives a lighter source on a bare ``gymnasium.make`` env with
the same tool, text and expert (no binding; the tests use it for speed).
"""

from __future__ import annotations

from typing import Any

from tickcall.envs.binding import make_binding
from tickcall.envs.experts import RandomPolicy, cartpole_logits, cartpole_margin
from tickcall.envs.teachers import Teacher, load_teacher
from tickcall.models.calls import Call
from tickcall.models.prompt_text import render_observation
from tickcall.models.tools import normalize_tools
from tickcall.models.training.sources import EnvSource, Instance, text_values

__all__ = ["CARTPOLE_TOOLS", "cartpole_obs_text", "get_source", "text_values"]

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
    return render_observation({"x": x, "v": v, "a": a, "w": w}, precision=3)


def _builtin_cartpole(env_id: str = "CartPole-v1", text_labels: bool = False) -> EnvSource:
    import gymnasium as gym

    def seen(obs: Any) -> Any:
        return text_values(cartpole_obs_text(obs)) if text_labels else obs

    def teacher(obs: Any) -> Call:
        return Call("push", {"direction": "right" if cartpole_margin(seen(obs)) > 0 else "left"})

    def make() -> Instance:
        return Instance(
            env=gym.make(env_id), obs_text=cartpole_obs_text, teacher=teacher,
            to_action=lambda call: 1 if call.arguments.get("direction") == "right" else 0,
            random_call=lambda rng: Call("push", {"direction": "right" if rng.random() < 0.5 else "left"}),
            default_action=lambda: 0, teacher_logits=lambda obs: cartpole_logits(seen(obs)))

    return EnvSource(env_id=env_id, tools=normalize_tools(CARTPOLE_TOOLS), instance=make, physics_hz=50.0,
                     origin="builtin")


def _from_binding(env_id: str, text_labels: bool = False, teacher: Teacher | None = None) -> EnvSource:
    """A source from ``make_binding`` + a teacher (``envs.teachers``; None: a source without labels,
    for datasets that bring their own: student and random can still be scored on it).

    ``text_labels``: the teacher decides on the observation *as the text shows it* (numbers rounded
    to the text's precision) rather than on the raw values, so every label is a function of the
    student's input (CartPole's expert reads raw floats; beside its decision boundary the raw label
    is noise from the text's point of view). Only for envs whose text is the plain ``k=v`` list of
    the observation's entries; semantic envs (the Arena) already decide on what their text shows."""
    probe = make_binding(env_id)
    tools = normalize_tools(probe.tools)
    rate = probe.physics_hz  # the rate RealTimeEnv runs it at
    probe.env.close()

    def make() -> Instance:
        import numpy as np

        b = make_binding(env_id)
        rnd = RandomPolicy(b, seed=None)

        def random_call(rng: Any) -> Call:
            rnd.space.seed(int(rng.integers(2**31)))
            return rnd.act(None)

        def seen(obs: Any) -> Any:
            if not (text_labels and not b.semantic):
                return obs
            shown = np.asarray(text_values(b.obs_text(obs)), dtype=np.float32)
            if shown.shape != np.asarray(obs).shape:
                raise ValueError(f"{env_id}: the text shows {shown.size} numbers for an observation of "
                                 f"shape {np.asarray(obs).shape}; text_labels needs one per entry")
            return shown

        label = teacher.bind(b) if teacher is not None else None
        scores = label.logits if label is not None else None
        return Instance(env=b.env, obs_text=b.obs_text,
                        teacher=(lambda obs: label.act(seen(obs))) if label is not None else _no_teacher,
                        to_action=lambda call: b.call_to_action(call).action, random_call=random_call,
                        default_action=b.default_action,
                        teacher_logits=(lambda obs: scores(seen(obs))) if scores is not None else None)

    return EnvSource(env_id=env_id, tools=tools, instance=make, physics_hz=rate,
                     origin="envs" if teacher is None or teacher.kind == "expert" else teacher.kind,
                     teacher_spec=teacher.spec if teacher is not None else None,
                     teacher_info=dict(teacher.info) if teacher is not None else {})


def _no_teacher(obs: Any) -> Call:
    raise ValueError("this source has no teacher (its labels come from a dataset)")


def get_source(env_id: str, prefer_builtin: bool = False, text_labels: bool = False,
               teacher: Teacher | str | None = "expert", **teacher_kwargs: Any) -> EnvSource:
    """The ``EnvSource`` for ``env_id`` labelled by ``teacher``: a ``Teacher``, a kind for
    ``envs.teachers.load_teacher`` (``expert``, ``module:function``, ``sb3:FILE.zip``, ``ppo``...;
    ``teacher_kwargs`` go to it: ``budget``, ``work_dir``, ``log``) or None (no labels).

    ``prefer_builtin``: CartPole's light source, expert only (see the module docstring).
    ``text_labels``: label with the teacher applied to the values the text shows. Raises ValueError
    for a teacher that cannot be had (e.g. ``expert`` on an env without one)."""
    if prefer_builtin and env_id.startswith("CartPole") and teacher == "expert":
        return _builtin_cartpole(env_id, text_labels)
    if isinstance(teacher, str):
        teacher = load_teacher(teacher, env_id, **teacher_kwargs)
    return _from_binding(env_id, text_labels, teacher)
