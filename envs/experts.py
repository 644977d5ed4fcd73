"""Scripted experts and a random baseline, as policies that emit the calls a model would emit.

    from tickcall.envs.experts import get_expert, RandomPolicy
    expert = get_expert("CartPole-v1")         # also Pendulum-v1, MountainCarContinuous-v0,
    call = expert.act(obs)                     # LunarLander-v3, tickcall/Arena-v0
    # Call(name='push', arguments={'direction': 'right'})

A policy has ``act(obs) -> Call | None`` and ``reset()`` (called at each episode start). Experts
decide from the observation alone (no hidden env state), so a student model that reads the
observation text can learn them; each one returns exactly the call that ``binding.action_to_call``
writes for its action, so expert calls are always legal.

Known scores, lock-step, seeds 0..9 (see docs/benchmarks.md for the recorded runs):
CartPole-v1 500, MountainCarContinuous-v0 ~ +93, Pendulum-v1 ~ -150, LunarLander-v3 ~ +200 to +280
(gymnasium's own heuristic; some seeds crash), Arena-v0 (see the benchmark).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from tickcall.envs.binding import EnvBinding, make_binding
from tickcall.models.calls import Call


class Policy(Protocol):
    """What the evaluator, the dataset builder and the loop need from a policy."""

    def act(self, obs: Any) -> Call | None: ...

    def reset(self) -> None: ...


class ActionPolicy:
    """A policy from a function ``obs -> action``; the call is ``binding.action_to_call(action)``."""

    def __init__(self, binding: EnvBinding, fn: Callable[[Any], Any], name: str = "expert") -> None:
        self.binding, self.fn, self.name = binding, fn, name

    def act(self, obs: Any) -> Call:
        return self.binding.action_to_call(self.fn(obs))

    def reset(self) -> None:
        pass


class RandomPolicy:
    """Uniformly random *legal* calls: a random action of the space written as its call.

    For the Arena this is a uniformly random tool with random arguments. Seeded: the same seed gives
    the same sequence of calls."""

    name = "random"

    def __init__(self, binding: EnvBinding, seed: int | None = 0) -> None:
        self.binding = binding
        self.space = copy.deepcopy(binding.env.action_space)
        self.space.seed(seed)

    def act(self, obs: Any) -> Call:
        return self.binding.action_to_call(self.space.sample())

    def reset(self) -> None:
        pass


# --------------------------------------------------------------------------- the experts


def cartpole_margin(obs: Any) -> float:
    """The linear state feedback 0.05 x + 0.3 v + 3 a + 0.6 w on (x m, v m/s, angle rad, rad/s)."""
    x, v, a, w = (float(t) for t in obs)
    return 0.05 * x + 0.3 * v + 3.0 * a + 0.6 * w


def cartpole_action(obs: Any) -> int:
    """Linear state feedback on (x, v, angle, angular velocity): push right (1) when positive."""
    return int(cartpole_margin(obs) > 0)


def cartpole_logits(obs: Any) -> dict[str, dict[str, float]]:
    """The expert's scores per value of ``push(direction)``: ``right`` wins exactly when it pushes right.

    The margin's size says how sure the expert is (0.4 is a typical |margin| while balancing); a
    student distilled on these scores (``data.soft_tau``) learns the margin, not only its sign."""
    m = cartpole_margin(obs)
    return {"direction": {"left": 0.0, "right": m}}


def mountaincar_cont_action(obs: Any) -> np.ndarray:
    """Pump energy: full force in the direction of motion (right when at rest)."""
    v = float(obs[1])
    return np.array([1.0 if v >= 0 else -1.0], dtype=np.float32)


def mountaincar_action(obs: Any) -> int:
    """Pump energy: push (0 left, 2 right) in the direction of motion, biased by the position.

    Push right when ``v >= 0.005 (x + 0.5)`` (x in position units, v per step): from rest right of
    -0.5 the car first swings back left, which gains the energy to climb sooner. With each decision
    held 2 physics steps (16 Hz on a 30 Hz env) its mean return is -107.6 over seeds 300-399 (-113.9
    over 10000-10019), against -120.7 for plain velocity-following on seeds 100-159 (gymnasium's
    ``reward_threshold`` is -110). A switch point of -0.47 did about as well (-106.9) but a student
    reading the text did not learn to tell -0.48 from -0.46 at rest; -0.5 is read off the first decimal."""
    return 2 if mountaincar_margin(obs) >= 0 else 0


def mountaincar_margin(obs: Any) -> float:
    """``v - 0.005 (x + 0.5)``: positive pushes right (see ``mountaincar_action``)."""
    return float(obs[1]) - 0.005 * (float(obs[0]) + 0.5)


def pendulum_action(obs: Any) -> np.ndarray:
    """Energy-shaping swing-up, then a PD controller near the top (torque limit 2)."""
    c, s, w = (float(t) for t in obs)
    theta = math.atan2(s, c)  # 0 = upright
    if c > 0.85:
        u = -(10.0 * theta + 2.0 * w)
    else:
        # pump energy until the swing would reach the top (energy 0 = at rest upright), then damp
        energy = w * w / 3.0 + 10.0 * (c - 1.0)
        u = 2.0 * float(np.sign(w)) if energy < 0 else -0.5 * w
    # one decimal: a short, learnable argument ("torque(value=-1.3)")
    return np.array([round(float(np.clip(u, -2.0, 2.0)), 1)], dtype=np.float32)


def lunar_lander_action(env: Any) -> Callable[[Any], int]:
    from gymnasium.envs.box2d.lunar_lander import heuristic

    raw = env.unwrapped
    return lambda obs: int(heuristic(raw, np.asarray(obs)))


def lunar_lander_todo(obs: Any) -> tuple[np.float32, np.float32]:
    """The two quantities gymnasium's heuristic lander decides on: ``(angle_todo, hover_todo)``.

    Tilt toward the pad (target angle 0.5 x + vx, within +-0.4 rad) and hover at 0.55 |x|, both as
    corrections damped by the rates; with a leg down only the fall is slowed (angle_todo 0). Its
    discrete choice: ``main`` when hover_todo > max(|angle_todo|, 0.05), else ``right`` below -0.05
    angle_todo, ``left`` above +0.05, else ``none`` (``lunar_lander_logits`` orders them the same way)."""
    # float32 as the heuristic computes on the env's float32 observation, so a correction exactly at
    # a threshold falls on the same side in both
    x, y, vx, vy, a, w, left_leg, right_leg = np.asarray(obs, dtype=np.float32)
    if left_leg or right_leg:
        return np.float32(0.0), -vy * np.float32(0.5)
    angle_targ = np.clip(x * np.float32(0.5) + vx, np.float32(-0.4), np.float32(0.4))
    angle_todo = (angle_targ - a) * np.float32(0.5) - w
    hover_todo = (np.float32(0.55) * abs(x) - y) * np.float32(0.5) - vy * np.float32(0.5)
    return angle_todo, hover_todo


def lunar_lander_logits(obs: Any) -> dict[str, dict[str, float]]:
    """The heuristic's scores per value of ``engine(fire)``: the argmax is exactly its choice.

    10 x how far each condition is past its threshold: ``main`` the hover margin over
    max(|angle_todo|, 0.05); a side engine its angle margin past 0.05, capped below zero while
    ``main`` wins; ``none`` 0. A correction of 0.05 past a threshold is a logit of 0.5."""
    angle_todo, hover_todo = lunar_lander_todo(obs)
    step = np.float32(0.05)
    main = hover_todo - max(abs(angle_todo), step)
    cap = -main if main > 0 else np.float32(np.inf)  # below zero while main wins, free when it does not
    left = min(angle_todo - step, cap)
    right = min(-angle_todo - step, cap)
    scores = {"none": 0.0, "left": float(left), "main": float(main), "right": float(right)}
    return {"fire": {value: 10.0 * score for value, score in scores.items()}}


class ArenaExpert:
    """Aim at the target's sector, close in (dash when far and ready, else run), fire when ready.

    Decides from ``envs.arena.features(obs)``, the same rounded values the text shows::

        tgt != aim                -> aim(direction=tgt)
        d > range and dcd == 0    -> dash(direction=tgt, distance=1|2|3 by how far out of range)
        d > range                 -> move(direction=tgt, speed="run")
        cd == 0                   -> fire()
        otherwise                 -> wait()
    """

    name = "expert"

    def __init__(self, fire_range: float = 4.0) -> None:
        self.fire_range = fire_range

    def act(self, obs: Any) -> Call:
        from tickcall.envs.arena import features

        f = features(obs)
        if f["tgt"] != f["aim"]:
            return Call("aim", {"direction": f["tgt"]})
        gap = f["d"] - self.fire_range
        if gap > 0:
            if f["dcd"] == 0:
                dist = 3 if gap > 2 else 2 if gap > 1 else 1
                return Call("dash", {"direction": f["tgt"], "distance": dist})
            return Call("move", {"direction": f["tgt"], "speed": "run"})
        if f["cd"] == 0:
            return Call("fire", {})
        return Call("wait", {})

    def reset(self) -> None:
        pass


EXPERTS = ("CartPole-v1", "MountainCar-v0", "MountainCarContinuous-v0", "Pendulum-v1", "LunarLander-v3",
           "tickcall/Arena-v0", "tickcall/GoalArena-v0", "tickcall/GoalArena-Heldout-v0")


def get_expert(env_id: str, binding: EnvBinding | None = None) -> Policy:
    """The scripted expert of an env (``EXPERTS`` lists them). Raises KeyError for others."""
    if env_id not in EXPERTS:
        raise KeyError(f"no expert for {env_id!r}; experts exist for {', '.join(EXPERTS)}")
    if env_id == "tickcall/Arena-v0":
        fire_range = binding.env.unwrapped.fire_range if binding is not None else 4.0
        return ArenaExpert(fire_range)
    if env_id.startswith("tickcall/GoalArena"):
        fire_range = binding.env.unwrapped.fire_range if binding is not None else 4.0
        return GoalArenaExpert(fire_range)
    binding = binding or make_binding(env_id)
    if env_id == "CartPole-v1":
        return ActionPolicy(binding, cartpole_action)
    if env_id == "MountainCar-v0":
        return ActionPolicy(binding, mountaincar_action)
    if env_id == "MountainCarContinuous-v0":
        return ActionPolicy(binding, mountaincar_cont_action)
    if env_id == "Pendulum-v1":
        return ActionPolicy(binding, pendulum_action)
    return ActionPolicy(binding, lunar_lander_action(binding.env))


ExpertLogits = Callable[[Any], dict[str, dict[str, float]]]  # obs -> {parameter: {value: logit}}
EXPERT_LOGITS: dict[str, ExpertLogits] = {"CartPole-v1": cartpole_logits, "LunarLander-v3": lunar_lander_logits}


def get_expert_logits(env_id: str) -> ExpertLogits | None:
    """``obs -> {parameter: {value: logit}}`` for an expert that scores its choices, else None."""
    return EXPERT_LOGITS.get(env_id)


def get_policy(kind: str, env_id: str, binding: EnvBinding, seed: int | None = 0) -> Policy:
    """``expert`` or ``random`` (models: ``envs.policies.ModelPolicy``)."""
    if kind == "expert":
        return get_expert(env_id, binding)
    if kind == "random":
        return RandomPolicy(binding, seed)
    raise ValueError(f"unknown policy kind {kind!r}: expert or random")


class GoalArenaExpert:
    """The GoalArena's expert (``tickcall/GoalArena-v0``): the arena expert on the goal's colour, kept
    out of the avoided zone and off the forbidden tool.

    Decides from ``envs.goal_arena.features(obs)``: the structured goal and the rounded values the
    text shows, of the goal-colour target only (``b``/``d``/``blocked``: its bearing, distance and
    ``blocked`` flag) plus ``at``, ``aim``, ``cd``, ``dcd``::

        at in the avoided zone            -> move(opposite of avoid, run; walk if run is forbidden)
        b != aim                          -> aim(b)
        d > range:
          avoid set, b in the zone's directions and at borders the zone (C or the two sectors
          orthogonal to avoid)            -> slide: move(b without the avoided component, run|walk);
                                             b == avoid: wait()
          dcd == 0 and dash allowed       -> dash(b, 1|2|3 by how far out of range)
          otherwise                       -> move(b, run; walk if run is forbidden)
        blocked (another target as near or nearer in sector b) -> wait()   (the shot would hit it)
        cd == 0                           -> fire()
        otherwise                         -> wait()
    """

    name = "expert"

    def __init__(self, fire_range: float = 4.0) -> None:
        self.fire_range = fire_range

    def act(self, obs: Any) -> Call:
        from tickcall.envs.arena import DIRECTIONS
        from tickcall.envs.goal_arena import features, zone_of

        f = features(obs)
        avoid, forbid = f["avoid"], f["forbid"]
        speed = "walk" if forbid == "run" else "run"
        zone = zone_of(avoid)
        if f["at"] in zone:
            return Call("move", {"direction": DIRECTIONS[(DIRECTIONS.index(avoid) + 4) % 8], "speed": speed})
        b, d = f[f["color"]], f[f["color"] + "_d"]
        if b != f["aim"]:
            return Call("aim", {"direction": b})
        gap = d - self.fire_range
        if gap > 0:
            if avoid is not None and b in zone and f["at"] in _borders(avoid):
                slid = _slide(b, avoid)
                if slid is None:
                    return Call("wait", {})
                return Call("move", {"direction": slid, "speed": speed})
            if f["dcd"] == 0 and forbid != "dash":
                dist = 3 if gap > 2 else 2 if gap > 1 else 1
                return Call("dash", {"direction": b, "distance": dist})
            return Call("move", {"direction": b, "speed": speed})
        if f[f["color"] + "_blocked"]:  # another target as near or nearer in sector b
            return Call("wait", {})
        if f["cd"] == 0:
            return Call("fire", {})
        return Call("wait", {})

    def reset(self) -> None:
        pass


def _borders(avoid: str) -> frozenset[str]:
    """The regions beside the zone of ``avoid`` (N|E|S|W): the centre and the two orthogonal sectors."""
    from tickcall.envs.arena import DIRECTIONS

    i = DIRECTIONS.index(avoid)
    return frozenset({"C", DIRECTIONS[(i + 2) % 8], DIRECTIONS[(i + 6) % 8]})


def _slide(b: str, avoid: str) -> str | None:
    """``b`` without its ``avoid`` component (avoid N: NE -> E, NW -> W, N -> None)."""
    from tickcall.envs.arena import DIRECTIONS

    i, a = DIRECTIONS.index(b), DIRECTIONS.index(avoid)
    if i == a:
        return None
    return DIRECTIONS[(a + 2) % 8] if (i - a) % 8 == 1 else DIRECTIONS[(a + 6) % 8]
