"""``tickcall/GoalArena-v0``: the arena with three coloured targets and a per-episode goal in words.

A sibling of ``tickcall/Arena-v0`` (``envs.arena``): same 10 x 10 field, physics (``dt`` 0.05 s,
300 steps = 15 s), gun, cooldowns and the same tools (``ARENA_TOOLS``: wait, move, aim, fire,
dash; one registration text for both envs). Three targets are alive at once, ``red``, ``green`` and
``blue``; each drifts at 1 unit/s, bounces off the walls, lives ``target_life_s`` (4 s, so chasing
one colour across the field is feasible) and respawns at once when hit or expired.

Goal (per episode; drawn in ``reset`` from ``np_random`` over the split's combinations, or given as
``reset(options={"goal": {"color": "blue", "avoid": "N", "forbid": "dash"}})``):

* ``color`` (red|green|blue): a hit on that colour gives ``1 + time_left / life`` (as the arena);
  a hit on another colour ``-1`` and counts ``wrong_hits``; the goal colour expiring unhit
  ``-0.5`` (``expired``). A shot hits the NEAREST target within range (4 units, + 0.05 for the
  text's rounding) whose bearing lies in the aimed 45-degree sector.
* ``avoid`` (None|N|E|S|W): the agent's region ``at`` is the compass sector (8) of its position seen
  from the centre, or ``C`` within 1.5 units of the centre. The zone is the avoided direction and its
  two neighbours (avoid N: NW, N, NE). Each physics step that ends in the zone: ``-0.05``, counted
  in ``zone_steps``.
* ``forbid`` (None|dash|run): a forbidden dash still executes, ``-1``, counted in
  ``forbidden_uses``; a forbidden run too, once per stretch of consecutive run steps (a held
  ``move(run)`` is one use whatever the decision rate holds it for).

``info`` carries ``hits``, ``wrong_hits``, ``expired``, ``zone_steps``, ``forbidden_uses``,
``shots``, ``steps`` at every step; at the episode's end (truncation) also ``goal_success``: hits
>= ``success_hits`` (K = 6), no wrong hit, no forbidden use, ``zone_steps`` <= 5% of the steps.
K = 6, measured over seeds 0..19 in lock-step (docs/goal-arena.md): the expert hits 11 to 43 goal
targets an episode at hold 1 and 8 to 38 at hold 2 (10 Hz), 100% success on both ids; random play
hits 0 to 4 and succeeds 0%. K sits well below the expert's worst episode so that a model deciding
late in the real-time loop can still succeed, and far above what aimless shooting gets.

Observation (``spaces.Dict``): ``state`` (Box float32, 11 values: agent ``x, y``; ``dx, dy`` of the
red, green and blue target relative to the agent; ``aim`` 0..7; ``cd`` and ``dcd`` in steps),
``goal`` (``MultiDiscrete([3, 5, 3])``: colour, avoid, forbid indices into ``COLORS``, ``AVOIDS``,
``FORBIDS``) and ``instruction`` (``spaces.Text``: the goal in words, ``envs.goal_phrasing``). Its
text is a pure function of the observation, the instruction then one state line (``state_text``)::

    Shoot only the blue targets and keep out of the north. Never dash.
    at=NW aim=NE cd=0 dcd=12; Red=E 4, Green=SW 6, Blue=N 2 blocked

Each target: its colour, capitalised (``Red``: never the instruction's token), its bearing (8-way),
its distance in whole units rounded up (capped at 9: ``4`` is within range) and ``blocked`` when
another target in the same sector is as near or nearer (a shot there would hit that one). The
targets' time left is not shown: the expert does not use it. With the goal's colour known, the
expert's call depends only on that colour's target and the fields before the ``;``
(``tests/test_goal_arena.py`` checks it on sampled states): a model reads one target, the one the
instruction names, instead of comparing all three.

Splits (constructor ``split``): ``train`` draws the 36 training combinations phrased with the train
templates; ``heldout`` (``tickcall/GoalArena-Heldout-v0``) the 9 held-out combinations phrased with
the held-out templates. A goal given in ``options`` is phrased in the env's split whatever its
combination; ``options["instruction"]`` replaces the sentence (e.g. a hand-written one).

Invariants: deterministic under ``reset(seed=...)``; no wall-clock; the expert
(``envs.experts.GoalArenaExpert``) decides from ``features(obs)`` alone, whose values are exactly
what the text shows.
"""

from __future__ import annotations

import math
import string
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from tickcall.envs.arena import _UNIT, ARENA_TOOLS, DIRECTIONS, SPEEDS, TOOLS, ArenaEnv, sector
from tickcall.envs.goal_phrasing import AVOIDS, COLORS, FORBIDS, SPLITS, draw_goal, phrase

TEXT_CHARSET = string.ascii_letters + string.digits + " .,;:'-"
MAX_INSTRUCTION = 240
CENTER_RADIUS = 1.5  # within this of the centre the region is "C"
DIST_CAP = 9  # distances shown (and read by the expert) are capped here: one digit


def region(x: float, y: float, size: float = 10.0) -> str:
    """``C`` within ``CENTER_RADIUS`` units of the centre, else the compass sector seen from it."""
    dx, dy = x - size / 2, y - size / 2
    if math.hypot(dx, dy) < CENTER_RADIUS:
        return "C"
    return DIRECTIONS[sector(dx, dy)]


def zone_of(avoid: str | None) -> frozenset[str]:
    """The avoided sectors: the direction and its two neighbours (N: NW, N, NE); empty for None."""
    if avoid is None:
        return frozenset()
    i = DIRECTIONS.index(avoid)
    return frozenset(DIRECTIONS[(i + k) % 8] for k in (-1, 0, 1))


def goal_from_obs(obs: Any) -> dict[str, Any]:
    """The structured goal of an observation (``obs["goal"]`` indices -> values)."""
    g = np.asarray(obs["goal"]).reshape(-1)
    return {"color": COLORS[int(g[0])], "avoid": AVOIDS[int(g[1])], "forbid": FORBIDS[int(g[2])]}


def check_goal(goal: Any) -> dict[str, Any]:
    """A goal dict checked and completed (missing avoid/forbid: None). ValueError naming the field."""
    if not isinstance(goal, dict) or "color" not in goal:
        raise ValueError(f"a goal is a dict with color (and optional avoid, forbid), not {goal!r}")
    bad = set(goal) - {"color", "avoid", "forbid"}
    if bad:
        raise ValueError(f"unknown goal keys {sorted(bad)}; use color, avoid, forbid")
    out = {"color": goal["color"], "avoid": goal.get("avoid"), "forbid": goal.get("forbid")}
    for key, allowed in (("color", COLORS), ("avoid", AVOIDS), ("forbid", FORBIDS)):
        if out[key] not in allowed:
            raise ValueError(f"goal {key}={out[key]!r} is not one of {list(allowed)}")
    return out


class GoalArenaEnv(ArenaEnv):
    """The goal arena (see the module docstring). Keyword arguments override the defaults.

    Reuses ``ArenaEnv``'s tools, action space, converters and rendering helpers; the target, the
    observation and the reward are its own."""

    def __init__(
        self,
        render_mode: str | None = None,
        *,
        split: str = "train",
        target_life_s: float = 4.0,
        success_hits: int = 6,
        zone_budget: float = 0.05,
        **kwargs: Any,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
        self.split = split
        self.success_hits, self.zone_budget = int(success_hits), float(zone_budget)
        super().__init__(render_mode, target_life_s=target_life_s, **kwargs)
        big = self.size
        self.observation_space = spaces.Dict(
            {
                "state": spaces.Box(
                    low=np.array([0, 0] + [-big] * 6 + [0, 0, 0], dtype=np.float32),
                    high=np.array(
                        [big, big] + [big] * 6 + [7, self.fire_cooldown, self.dash_cooldown], dtype=np.float32
                    ),
                    dtype=np.float32,
                ),
                "goal": spaces.MultiDiscrete([len(COLORS), len(AVOIDS), len(FORBIDS)]),
                "instruction": spaces.Text(MAX_INSTRUCTION, min_length=1, charset=TEXT_CHARSET),
            }
        )

    # ---- state --------------------------------------------------------------------------------
    def _reset_state(self) -> None:
        super()._reset_state()
        self.tposs = np.full((3, 2), self.size / 2)
        self.tvels = np.zeros((3, 2))
        self.tlefts = np.zeros(3, dtype=int)
        self.goal = {"color": "red", "avoid": None, "forbid": None}
        self.instruction = "Shoot only the red targets."
        self._ran = False
        self.stats = {
            "hits": 0,
            "wrong_hits": 0,
            "expired": 0,
            "zone_steps": 0,
            "forbidden_uses": 0,
            "shots": 0,
        }

    def _spawn(self, k: int) -> None:
        rng = self.np_random
        for _ in range(100):
            p = rng.uniform(0.5, self.size - 0.5, size=2)
            if np.hypot(*(p - self.pos)) >= 1.5:
                break
        ang = rng.uniform(0, 2 * math.pi)
        self.tposs[k] = p
        self.tvels[k] = self.target_speed * np.array([math.cos(ang), math.sin(ang)])
        self.tlefts[k] = int(round(self.target_life_s / self.dt))

    def _obs(self) -> dict[str, Any]:
        d = (self.tposs - self.pos).reshape(-1)
        state = np.array([self.pos[0], self.pos[1], *d, self.aim, self.cd, self.dcd], dtype=np.float32)
        g = np.array(
            [
                COLORS.index(self.goal["color"]),
                AVOIDS.index(self.goal["avoid"]),
                FORBIDS.index(self.goal["forbid"]),
            ],
            dtype=np.int64,
        )
        return {"state": state, "goal": g, "instruction": self.instruction}

    def _info(self) -> dict[str, Any]:
        return {**self.stats, "steps": self.steps}

    # ---- gymnasium API ------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        gym.Env.reset(self, seed=seed)
        self._reset_state()
        options = options or {}
        if "goal" in options:
            self.goal = check_goal(options["goal"])
        else:
            self.goal = draw_goal(self.np_random, self.split)
        text = options.get("instruction") or phrase(self.goal, self.np_random, self.split)
        if not isinstance(text, str) or not self.observation_space["instruction"].contains(text):
            raise ValueError(
                f"instruction must be 1..{MAX_INSTRUCTION} characters of letters, digits, "
                f"spaces and .,;:'- ; got {text!r}"
            )
        self.instruction = text
        for k in range(3):
            self._spawn(k)
            # stagger the lives so the three targets do not all expire on the same step
            self.tlefts[k] -= int(self.np_random.integers(0, self.tlefts[k] // 2))
        if self.render_mode == "human":
            self.render()
        return self._obs(), self._info()

    def step(self, action: dict[str, Any]):
        tool = TOOLS[int(action["tool"])]
        direction = int(action["direction"])
        goal_k = COLORS.index(self.goal["color"])
        reward = 0.0
        fired = dashed = ran = False
        if tool == "move":
            speed_name = SPEEDS[int(action["speed"])]
            ran = speed_name == "run"
            self._move(direction, self.speeds[speed_name] * self.dt)
            if ran and self.goal["forbid"] == "run" and not self._ran:
                reward -= 1.0
                self.stats["forbidden_uses"] += 1
        elif tool == "aim":
            self.aim = direction
        elif tool == "fire" and self.cd == 0:
            self.cd, fired = self.fire_cooldown, True
            self.stats["shots"] += 1
            k = self._shot_target()
            if k is not None:
                if k == goal_k:
                    reward += 1.0 + self.tlefts[k] * self.dt / self.target_life_s
                    self.stats["hits"] += 1
                else:
                    reward -= 1.0
                    self.stats["wrong_hits"] += 1
                self._spawn(k)
        elif tool == "dash" and self.dcd == 0:
            dist = float(np.clip(np.asarray(action["distance"]).reshape(-1)[0], 1.0, 3.0))
            self._move(direction, dist)
            self.dcd, dashed = self.dash_cooldown, True
            if self.goal["forbid"] == "dash":
                reward -= 1.0
                self.stats["forbidden_uses"] += 1
        self._ran = ran
        if not fired:
            self.cd = max(0, self.cd - 1)
        if not dashed:
            self.dcd = max(0, self.dcd - 1)
        self._move_targets()
        self.tlefts -= 1
        for k in range(3):
            if self.tlefts[k] <= 0:
                if k == goal_k:
                    reward -= 0.5
                    self.stats["expired"] += 1
                self._spawn(k)
        if region(*self.pos, self.size) in zone_of(self.goal["avoid"]):
            reward -= 0.05
            self.stats["zone_steps"] += 1
        self.steps += 1
        truncated = self.steps >= self.max_steps
        info = self._info()
        if truncated:
            info["goal_success"] = self.goal_success()
        if self.render_mode == "human":
            self.render()
        return self._obs(), float(reward), False, truncated, info

    def goal_success(self) -> bool:
        """Hits >= K, no wrong hit, no forbidden use, zone steps within the budget (of steps so far)."""
        s = self.stats
        return bool(
            s["hits"] >= self.success_hits
            and s["wrong_hits"] == 0
            and s["forbidden_uses"] == 0
            and s["zone_steps"] <= self.zone_budget * max(1, self.steps)
        )

    def _shot_target(self) -> int | None:
        """The nearest target within range whose bearing is in the aimed sector, or None."""
        best, best_d = None, math.inf
        for k in range(3):
            d = self.tposs[k] - self.pos
            dist = math.hypot(*d)
            if dist <= self.fire_range + 0.05 and sector(*d) == self.aim and dist < best_d:
                best, best_d = k, dist
        return best

    def _move_targets(self) -> None:
        p = self.tposs + self.tvels * self.dt
        lo, hi = 0.5, self.size - 0.5
        bounce = (p < lo) | (p > hi)
        self.tvels[bounce] = -self.tvels[bounce]
        self.tposs = np.clip(p, lo, hi)

    def perturb(self, rng: Any, scale: float = 1.0) -> None:
        """Nudge the state (dataset diversity): jitter the agent (about ``scale`` units) and the
        targets (``scale`` / 2), and with probability ``scale / 2`` point the gun somewhere random."""
        self.pos = np.clip(self.pos + rng.normal(0.0, scale, size=2), 0.0, self.size)
        self.tposs = np.clip(self.tposs + rng.normal(0.0, 0.5 * scale, size=(3, 2)), 0.5, self.size - 0.5)
        if rng.random() < 0.5 * scale:
            self.aim = int(rng.integers(0, 8))

    def sample_observation(self, rng: Any) -> dict[str, Any]:
        """A state drawn over what the text can show, balanced over the expert's cases (coverage rows
        for training, ``models.training.coverage``): a goal and its sentence from this split (a
        ``reset`` seeded from ``rng``), the agent anywhere (inside the avoided zone less often), the goal
        colour's target at any bearing with its distance dense around the thresholds 4 / 5 / 6, the
        aim on it half the time, another target in the same sector a third of the time (``blocked``
        either way), cooldowns zero half the time. Leaves the env in that state; returns its obs."""
        self.reset(seed=int(rng.integers(2**31)))
        goal_k = COLORS.index(self.goal["color"])
        lo, hi = 0.5, self.size - 0.5
        zone = zone_of(self.goal["avoid"])
        while True:
            self.pos = rng.uniform(0.0, self.size, size=2)
            if region(*self.pos, self.size) in zone and rng.random() < 0.7:
                continue  # inside the zone less often than its area (the expert only walks out)
            u = rng.random()
            d = (
                float(rng.integers(30, 76)) / 10 + rng.uniform(-0.04, 0.04)
                if u < 0.5
                else rng.uniform(0.3, 9.0)
            )
            sec = int(rng.integers(0, 8))
            ang = (sec + rng.uniform(-0.45, 0.45)) * math.pi / 4  # from +y, clockwise, inside the sector
            p = self.pos + d * np.array([math.sin(ang), math.cos(ang)])
            if np.all((p >= lo) & (p <= hi)):
                break
        self.tposs[goal_k] = p
        for k in range(3):
            if k == goal_k:
                continue
            if rng.random() < 0.33:  # along the goal target's line, nearer or farther
                q = self.pos + (p - self.pos) * rng.uniform(0.3, 1.4)
                q = q + rng.normal(0.0, 0.15, size=2)
            else:
                q = rng.uniform(lo, hi, size=2)
            self.tposs[k] = np.clip(q, lo, hi)
        self.aim = sector(*(p - self.pos)) if rng.random() < 0.5 else int(rng.integers(0, 8))
        self.cd = 0 if rng.random() < 0.5 else int(rng.integers(1, self.fire_cooldown + 1))
        self.dcd = 0 if rng.random() < 0.5 else int(rng.integers(1, self.dash_cooldown + 1))
        return self._obs()

    # ---- tickcall: semantic tools and text -----------------------------------------------------
    def tickcall_tools(self) -> list[dict[str, Any]]:
        """The arena's tools (``ARENA_TOOLS``), unchanged: one registration text for both envs."""
        return [dict(t) for t in ARENA_TOOLS]

    def obs_text(self, obs: Any) -> str:
        """The instruction, then ``at=NW aim=NE cd=0 dcd=12; Red=E 4, Green=SW 6, Blue=N 2``."""
        return obs_text(obs)

    # ---- rendering ----------------------------------------------------------------------------
    def _frame(self, px: int = 256) -> np.ndarray:
        img = np.full((px, px, 3), 24, dtype=np.uint8)
        scale = px / self.size
        yy, xx = np.mgrid[0:px, 0:px]
        wx, wy = (xx + 0.5) / scale, self.size - (yy + 0.5) / scale

        def disc(c, r, color):
            img[(wx - c[0]) ** 2 + (wy - c[1]) ** 2 <= r * r] = color

        zone = zone_of(self.goal["avoid"])
        if zone:
            cx, cy = wx - self.size / 2, wy - self.size / 2
            secs = np.round(np.arctan2(cx, cy) / (math.pi / 4)).astype(int) % 8
            inside = np.isin(secs, [DIRECTIONS.index(z) for z in zone]) & (np.hypot(cx, cy) >= CENTER_RADIUS)
            img[inside] = (48, 30, 30)
        ux, uy = _UNIT[self.aim]
        for t in np.linspace(0, 1.2, 30):
            disc(self.pos + t * np.array([ux, uy]), 0.08, (240, 200, 60))
        colors = {"red": (220, 60, 60), "green": (60, 200, 80), "blue": (70, 110, 240)}
        for k, name in enumerate(COLORS):
            disc(self.tposs[k], 0.35, colors[name])
        disc(self.pos, 0.3, (230, 230, 230))
        return img


def features(obs: Any) -> dict[str, Any]:
    """What the text shows, as shown, plus the structured goal.

    Keys: ``color``/``avoid``/``forbid`` (the goal); per colour ``<colour>`` (bearing), ``<colour>_d``
    (distance in whole units, rounded up from the 0.1-unit value and capped at ``DIST_CAP``: ``4``
    means within 4 units, in range; the expert's thresholds, 4 / 5 / 6 units, are whole numbers, so
    it decides exactly as on the 0.1-unit value) and ``<colour>_blocked`` (another target in the same
    sector is as near or nearer, on the 0.1-unit values, so a shot along that sector would hit the
    other one: a fact of the state, whatever the goal); ``at`` (the agent's region); ``aim``;
    ``cd``/``dcd`` (cooldown steps). The expert decides from these alone. ``at`` assumes the default
    10-unit field (the observation does not carry ``size``); an env built with another ``size``
    still penalises its own zone, so keep the default for anything a model learns from."""
    s = np.asarray(obs["state"], dtype=np.float64)
    f: dict[str, Any] = goal_from_obs(obs)
    tenths = {}
    for k, name in enumerate(COLORS):
        dx, dy = float(s[2 + 2 * k]), float(s[3 + 2 * k])
        f[name] = DIRECTIONS[sector(dx, dy)]
        tenths[name] = round(math.hypot(dx, dy), 1)
        f[f"{name}_d"] = min(math.ceil(tenths[name] - 1e-9), DIST_CAP)
    for name in COLORS:
        f[f"{name}_blocked"] = any(f[o] == f[name] and tenths[o] <= tenths[name] for o in COLORS if o != name)
    f["at"] = region(float(s[0]), float(s[1]))
    f["aim"] = DIRECTIONS[int(round(s[8])) % 8]
    f["cd"], f["dcd"] = int(round(s[9])), int(round(s[10]))
    return f


#: How the state line names each colour: capitalised, so never the same token as the instruction's
#: lower-case colour word (see ``state_text``).
LABELS: dict[str, str] = {c: c.capitalize() for c in COLORS}


def state_text(f: dict[str, Any]) -> str:
    """The state line of ``features``: ``at=NW aim=NE cd=0 dcd=12; Red=E 4, Green=SW 6, Blue=N 2 blocked``.

    Why this layout (it is what lets a small model learn the goal; docs/goal-arena.md): a direction
    follows ``=``, so it is the very token a call's direction argument is written with (``aim=NE``,
    a target at ``=NE``, ``aim(direction=NE)``): copying is reading. Each target is its label
    (``LABELS``), bearing, distance in whole units rounded up (one digit: ``4`` is in range), and
    ``blocked`` when another target shadows it. The labels are capitalised: the instruction's colour
    word (lower case) is then the only colour word of its kind in the turn."""
    targets = ", ".join(
        f"{LABELS[c]}={f[c]} {f[c + '_d']}{' blocked' if f[c + '_blocked'] else ''}" for c in COLORS
    )
    return f"at={f['at']} aim={f['aim']} cd={f['cd']} dcd={f['dcd']}; {targets}"


def obs_text(obs: Any) -> str:
    """The observation's text (a pure function of ``obs``): the instruction, a newline, the state."""
    return f"{obs['instruction']}\n{state_text(features(obs))}"
