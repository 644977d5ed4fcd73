"""Coverage rows: states sampled directly over the region an env's text can show, labelled by the teacher.

Expert rollouts visit some states a thousand times and others never (the Arena's dash at distance
3, CartPole states just beside the decision boundary), and a student is only as good as its worst
covered region. These samplers draw *observations* straight from the state space, render them with
the env's own ``obs_text`` (so they read exactly like real ones) and label them with the same teacher
the rollouts use:

* ``tickcall/Arena-v0``: the expert is a pure function of ``envs.arena.features(obs)`` (bearing
  ``tgt``, distance ``d`` in 0.1 units, ``aim``, cooldowns ``cd``/``dcd``); the sampler draws every
  bearing/aim pair (aim equal to the bearing half the time, so the non-aim calls are not starved),
  ``d`` densely across the thresholds 4.0 / 5.0 / 6.0 (every 0.1 step, each about equally often),
  cooldowns zero half the time, and any target time left.
* ``CartPole-v1``: (x, v, angle, angular velocity) from the region the 16 Hz loop visits and wider
  (recoveries), half of them placed near the expert's decision boundary (where a student errs).
* ``MountainCar-v0``: (x, v) a third at rest with x over the reset range [-0.6, -0.4] (the expert's
  first push depends on which side of -0.5 the car starts: a wrong one costs a whole swing), a
  third beside the decision boundary v = 0.005 (x + 0.5), a third anywhere in the state space.
* ``tickcall/GoalArena-v0`` (``ENV_SAMPLED``): the env draws them itself
  (``GoalArenaEnv.sample_observation``: a goal sentence of its split, the goal colour's target dense
  around the thresholds, another target in its sector a third of the time).

Invariant: a sampled observation is an observation of the env's observation space (a float32 vector;
the goal arena's dict), so ``obs_text`` and the teacher see exactly what they would see from the env.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from tickcall.models.training.collect import Record
from tickcall.models.training.sources import EnvSource

Sampler = Callable[[Any, int], list[Any]]


def arena_states(rng: Any, n: int) -> list[Any]:
    """``n`` Arena observations ``[x, y, dx, dy, aim, cd, dcd, tl]`` (see module docstring)."""
    import numpy as np

    out = []
    while len(out) < n:
        u = rng.random()
        if u < 0.45:  # the thresholds: every 0.1 step of 3.0..7.5 alike
            d = round(float(rng.integers(30, 76)) / 10 + rng.uniform(-0.04, 0.04), 3)
        elif u < 0.85:
            d = float(rng.uniform(0.2, 9.0))
        else:
            d = float(rng.uniform(9.0, 13.4))
        sec = int(rng.integers(0, 8))
        ang = (sec + rng.uniform(-0.45, 0.45)) * math.pi / 4  # from +y, clockwise, inside the sector
        dx, dy = d * math.sin(ang), d * math.cos(ang)
        if max(abs(dx), abs(dy)) > 9.5:  # the target (0.5..9.5) cannot be that far from the agent
            continue
        # an agent position (0..10) that puts the target inside its 0.5..9.5 box
        x = float(rng.uniform(max(0.0, 0.5 - dx), min(10.0, 9.5 - dx)))
        y = float(rng.uniform(max(0.0, 0.5 - dy), min(10.0, 9.5 - dy)))
        aim = sec if rng.random() < 0.5 else int(rng.integers(0, 8))
        cd = 0 if rng.random() < 0.5 else int(rng.integers(1, 6))
        dcd = 0 if rng.random() < 0.5 else int(rng.integers(1, 21))
        tl = int(rng.integers(1, 61)) * 0.05
        out.append(np.array([x, y, dx, dy, aim, cd, dcd, tl], dtype=np.float32))
    return out


def cartpole_states(rng: Any, n: int) -> list[Any]:
    """``n`` CartPole observations ``[x, v, angle, angular velocity]`` (see module docstring)."""
    import numpy as np

    out = []
    while len(out) < n:
        wide = rng.random() < 0.3
        x = rng.uniform(-2.4, 2.4) if wide else rng.normal(0, 0.6)
        v = rng.uniform(-2.5, 2.5) if wide else rng.normal(0, 0.7)
        w = rng.uniform(-3.0, 3.0) if wide else rng.normal(0, 0.8)
        if rng.random() < 0.5:  # near the boundary 0.05 x + 0.3 v + 3 a + 0.6 w = 0
            a = (rng.normal(0, 0.06) - 0.05 * x - 0.3 * v - 0.6 * w) / 3.0
        else:
            a = rng.uniform(-0.21, 0.21) if wide else rng.normal(0, 0.07)
        if abs(x) > 2.4 or abs(a) > 0.2095:  # outside: the episode would have ended
            continue
        out.append(np.array([x, v, a, w], dtype=np.float32))
    return out


def mountaincar_states(rng: Any, n: int) -> list[Any]:
    """``n`` MountainCar observations ``[x, v]`` (see module docstring)."""
    import numpy as np

    out = []
    for _ in range(n):
        kind = rng.integers(3)
        if kind == 0:  # at rest, where an episode starts
            x, v = rng.uniform(-0.6, -0.4), 0.0
        elif kind == 1:  # beside the boundary v = 0.005 (x + 0.5)
            x = rng.uniform(-1.2, 0.5)
            v = 0.005 * (x + 0.5) + rng.normal(0, 0.002)
        else:
            x, v = rng.uniform(-1.2, 0.5), rng.uniform(-0.07, 0.07)
        out.append(np.array([x, np.clip(v, -0.07, 0.07)], dtype=np.float32))
    return out


SAMPLERS: dict[str, Sampler] = {
    "tickcall/Arena-v0": arena_states,
    "CartPole-v1": cartpole_states,
    "MountainCar-v0": mountaincar_states,
}
# Envs that draw their own coverage states: ``env.unwrapped.sample_observation(rng) -> obs`` (the
# goal arena: an observation holds a goal sentence, which only the env's phrasing can write).
ENV_SAMPLED: tuple[str, ...] = ("tickcall/GoalArena-v0", "tickcall/GoalArena-Heldout-v0")


def has_sampler(env_id: str) -> bool:
    return env_id in SAMPLERS or env_id in ENV_SAMPLED


def coverage_records(source: EnvSource, n: int, rng_seed: int) -> list[Record]:
    """``n`` labelled records of states sampled over ``source``'s state space (no history items).

    Raises ``KeyError`` for an env without a sampler (see ``SAMPLERS``)."""
    import numpy as np

    if not has_sampler(source.env_id):
        known = ", ".join([*SAMPLERS, *ENV_SAMPLED])
        raise KeyError(f"no state sampler for {source.env_id!r}; samplers: {known}")
    rng = np.random.default_rng(rng_seed)
    inst = source.instance()
    try:
        if source.env_id in SAMPLERS:
            states = SAMPLERS[source.env_id](rng, n)
        else:
            env = getattr(inst.env, "unwrapped", inst.env)
            states = [env.sample_observation(rng) for _ in range(n)]
        return [Record(source.env_id, inst.obs_text(o), [], inst.teacher(o), inst.logits_of(o)) for o in states]
    finally:
        inst.env.close()
