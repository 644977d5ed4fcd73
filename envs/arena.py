"""``tickcall/Arena-v0``: a small 2D shooting arena controlled with function calls.

The agent stands in a 10 x 10 arena and must hit one target at a time. The target drifts (1 unit/s,
bouncing off the walls) and vanishes after ``target_life_s`` seconds; a new one appears at once.

Tools (the env's own semantic tools; arities 0, 1 and 2, enums and a number)::

    wait()                                    do nothing this step
    move(direction: N|NE|E|SE|S|SW|W|NW, speed: walk|run)   walk 1.5 units/s, run 4 units/s
    aim(direction: N|...|NW)                  turn the gun to one of 8 directions (instant)
    fire()                                    shoot along the aim; 0.25 s cooldown
    dash(direction: N|...|NW, distance: 1..3) jump ``distance`` units; 1 s cooldown

A shot hits when the target is within ``range`` (4 units) and its bearing lies in the aimed
direction's 45-degree sector. Reward: ``1 + time_left / target_life`` per hit (a quick hit is worth
up to 2), ``-0.5`` when a target expires unhit. An episode lasts ``max_steps`` physics steps of
``dt`` = 0.05 s (20 Hz; 300 steps = 15 s). Directions: N is +y, angles clockwise.

Observation (``Box`` float32, 8 values): ``x, y`` (agent), ``dx, dy`` (target minus agent),
``aim`` (0..7), ``cd`` (fire cooldown, steps), ``dcd`` (dash cooldown, steps), ``tl`` (target time
left, s). Its text (``obs_text``) is short and says what matters directly::

    tgt=E d=3.2 aim=NE cd=0 dcd=12 tl=2.4

Invariants: deterministic under ``reset(seed=...)``; the plain gymnasium ``step``/``reset`` API (the
action space is a ``Dict`` that mirrors the tools); no wall-clock anywhere (pacing is the wrapper's).
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from tickcall.models.calls import Call

DIRECTIONS: tuple[str, ...] = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")
TOOLS: tuple[str, ...] = ("wait", "move", "aim", "fire", "dash")
SPEEDS: tuple[str, ...] = ("walk", "run")
_UNIT = [(math.sin(i * math.pi / 4), math.cos(i * math.pi / 4)) for i in range(8)]


def sector(dx: float, dy: float) -> int:
    """Index (0..7, N=0, clockwise) of the 45-degree sector that contains the vector (dx, dy)."""
    ang = math.atan2(dx, dy)  # from +y, clockwise
    return int(round(ang / (math.pi / 4))) % 8


def _dir_schema(text: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(DIRECTIONS), "description": text}


ARENA_TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "wait", "description": "Do nothing this step.",
        "parameters": {"type": "object", "properties": {}, "required": []}}},
    {"type": "function", "function": {
        "name": "move", "description": "Step in a direction (walk 1.5 or run 4 units/s).",
        "parameters": {"type": "object", "properties": {
            "direction": _dir_schema("compass direction, N is up"),
            "speed": {"type": "string", "enum": list(SPEEDS), "description": "walk or run"}},
            "required": ["direction", "speed"]}}},
    {"type": "function", "function": {
        "name": "aim", "description": "Turn the gun to a compass direction.",
        "parameters": {"type": "object", "properties": {
            "direction": _dir_schema("compass direction to aim at")},
            "required": ["direction"]}}},
    {"type": "function", "function": {
        "name": "fire", "description": "Shoot along the aim (range 4, cooldown 0.25 s).",
        "parameters": {"type": "object", "properties": {}, "required": []}}},
    {"type": "function", "function": {
        "name": "dash", "description": "Jump a distance in a direction (cooldown 1 s).",
        "parameters": {"type": "object", "properties": {
            "direction": _dir_schema("compass direction to dash to"),
            "distance": {"type": "number", "minimum": 1, "maximum": 3, "description": "units"}},
            "required": ["direction", "distance"]}}},
]


class ArenaEnv(gym.Env):
    """The arena (see the module docstring). Keyword arguments override the defaults."""

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": 20}

    def __init__(self, render_mode: str | None = None, *, size: float = 10.0, dt: float = 0.05,
                 max_steps: int = 300, fire_range: float = 4.0, target_life_s: float = 3.0,
                 target_speed: float = 1.0, fire_cooldown: int = 5, dash_cooldown: int = 20) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}")
        self.render_mode = render_mode
        self.size, self.dt, self.max_steps = float(size), float(dt), int(max_steps)
        self.fire_range, self.target_life_s = float(fire_range), float(target_life_s)
        self.target_speed = float(target_speed)
        self.fire_cooldown, self.dash_cooldown = int(fire_cooldown), int(dash_cooldown)
        self.speeds = {"walk": 1.5, "run": 4.0}
        self.metadata = {**self.metadata, "render_fps": int(round(1 / self.dt))}
        self.action_space = spaces.Dict({
            "tool": spaces.Discrete(len(TOOLS)),
            "direction": spaces.Discrete(8),
            "speed": spaces.Discrete(len(SPEEDS)),
            "distance": spaces.Box(1.0, 3.0, shape=(1,), dtype=np.float32),
        })
        big = self.size
        life = self.target_life_s
        self.observation_space = spaces.Box(
            low=np.array([0, 0, -big, -big, 0, 0, 0, 0], dtype=np.float32),
            high=np.array([big, big, big, big, 7, self.fire_cooldown, self.dash_cooldown, life],
                          dtype=np.float32),
            dtype=np.float32,
        )
        self._window = None
        self._clock = None
        self._reset_state()

    # ---- state --------------------------------------------------------------------------------
    def _reset_state(self) -> None:
        self.pos = np.array([self.size / 2, self.size / 2])
        self.aim = 0
        self.cd = 0
        self.dcd = 0
        self.tpos = np.array([self.size / 2, self.size - 1.0])
        self.tvel = np.zeros(2)
        self.tleft = 0
        self.steps = 0
        self.stats = {"hits": 0, "expired": 0, "shots": 0}

    def _spawn_target(self) -> None:
        rng = self.np_random
        for _ in range(100):
            p = rng.uniform(0.5, self.size - 0.5, size=2)
            if np.hypot(*(p - self.pos)) >= 1.5:
                break
        ang = rng.uniform(0, 2 * math.pi)
        self.tpos = p
        self.tvel = self.target_speed * np.array([math.cos(ang), math.sin(ang)])
        self.tleft = int(round(self.target_life_s / self.dt))

    def _obs(self) -> np.ndarray:
        d = self.tpos - self.pos
        return np.array([self.pos[0], self.pos[1], d[0], d[1], self.aim, self.cd, self.dcd,
                         self.tleft * self.dt], dtype=np.float32)

    def _info(self) -> dict[str, Any]:
        return {**self.stats, "steps": self.steps}

    # ---- gymnasium API ------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._reset_state()
        self._spawn_target()
        if self.render_mode == "human":
            self.render()
        return self._obs(), self._info()

    def step(self, action: dict[str, Any]):
        tool = TOOLS[int(action["tool"])]
        direction = int(action["direction"])
        reward = 0.0
        fired = dashed = False
        if tool == "move":
            speed = self.speeds[SPEEDS[int(action["speed"])]]
            self._move(direction, speed * self.dt)
        elif tool == "aim":
            self.aim = direction
        elif tool == "fire" and self.cd == 0:
            self.cd, fired = self.fire_cooldown, True
            self.stats["shots"] += 1
            d = self.tpos - self.pos
            # the sector test uses the same rounding as the observation text (0.1 units)
            if math.hypot(*d) <= self.fire_range + 0.05 and sector(*d) == self.aim:
                reward += 1.0 + self.tleft * self.dt / self.target_life_s
                self.stats["hits"] += 1
                self._spawn_target()
        elif tool == "dash" and self.dcd == 0:
            dist = float(np.clip(np.asarray(action["distance"]).reshape(-1)[0], 1.0, 3.0))
            self._move(direction, dist)
            self.dcd, dashed = self.dash_cooldown, True
        # the world moves on
        if not fired:
            self.cd = max(0, self.cd - 1)
        if not dashed:
            self.dcd = max(0, self.dcd - 1)
        self._move_target()
        self.tleft -= 1
        if self.tleft <= 0:
            reward -= 0.5
            self.stats["expired"] += 1
            self._spawn_target()
        self.steps += 1
        truncated = self.steps >= self.max_steps
        if self.render_mode == "human":
            self.render()
        return self._obs(), float(reward), False, truncated, self._info()

    def _move(self, direction: int, dist: float) -> None:
        ux, uy = _UNIT[direction]
        self.pos = np.clip(self.pos + dist * np.array([ux, uy]), 0.0, self.size)

    def _move_target(self) -> None:
        p = self.tpos + self.tvel * self.dt
        for i in range(2):
            if p[i] < 0.5 or p[i] > self.size - 0.5:
                self.tvel[i] = -self.tvel[i]
                p[i] = np.clip(p[i], 0.5, self.size - 0.5)
        self.tpos = p

    def perturb(self, rng: Any, scale: float = 1.0) -> None:
        """Nudge the state (dataset diversity for training): jitter the agent and the target by about
        ``scale`` units and, with probability ``scale / 2``, point the gun somewhere random. The next
        ``step`` observes the nudged state. ``rng``: a numpy Generator."""
        self.pos = np.clip(self.pos + rng.normal(0.0, scale, size=2), 0.0, self.size)
        self.tpos = np.clip(self.tpos + rng.normal(0.0, 0.5 * scale, size=2), 0.5, self.size - 0.5)
        if rng.random() < 0.5 * scale:
            self.aim = int(rng.integers(0, 8))

    # ---- tickcall: semantic tools and text -----------------------------------------------------
    def tickcall_tools(self) -> list[dict[str, Any]]:
        """The env's own tools (OpenAI-style dicts), in prompt order."""
        return [dict(t) for t in ARENA_TOOLS]

    def action_from_call(self, call: Call) -> tuple[dict[str, Any], bool]:
        """(action, clipped) for a call already validated against ``tickcall_tools``.

        Raises ``ValueError`` for an unknown tool. ``distance`` outside 1..3 is clipped.
        """
        if call.name not in TOOLS:
            raise ValueError(f"unknown tool {call.name!r}; tools are {list(TOOLS)}")
        args = call.arguments
        dist = float(args.get("distance", 1.0))
        clipped = not 1.0 <= dist <= 3.0
        action = self.noop_action()
        action["tool"] = TOOLS.index(call.name)
        if "direction" in args:
            action["direction"] = DIRECTIONS.index(args["direction"])
        if "speed" in args:
            action["speed"] = SPEEDS.index(args["speed"])
        action["distance"] = np.array([min(max(dist, 1.0), 3.0)], dtype=np.float32)
        return action, clipped

    def call_from_action(self, action: dict[str, Any]) -> Call:
        """The call that an action means (fields the tool ignores are dropped)."""
        tool = TOOLS[int(action["tool"])]
        direction = DIRECTIONS[int(action["direction"])]
        if tool == "move":
            return Call("move", {"direction": direction, "speed": SPEEDS[int(action["speed"])]})
        if tool == "aim":
            return Call("aim", {"direction": direction})
        if tool == "dash":
            dist = float(np.asarray(action["distance"]).reshape(-1)[0])
            # whole distances are written as integers ("3", as the expert writes them)
            return Call("dash", {"direction": direction, "distance": int(dist) if dist.is_integer() else dist})
        return Call(tool, {})

    def noop_action(self) -> dict[str, Any]:
        return {"tool": 0, "direction": 0, "speed": 0, "distance": np.array([1.0], dtype=np.float32)}

    def obs_text(self, obs: np.ndarray) -> str:
        """``tgt=E d=3.2 aim=NE cd=0 dcd=12 tl=2.4`` (bearing and distance of the target)."""
        f = features(obs)
        return (f"tgt={f['tgt']} d={f['d']:.1f} aim={f['aim']} cd={f['cd']} dcd={f['dcd']} "
                f"tl={f['tl']:.1f}")

    # ---- rendering ----------------------------------------------------------------------------
    def render(self):
        if self.render_mode is None:
            return None
        frame = self._frame()
        if self.render_mode == "rgb_array":
            return frame
        self._show(frame)
        return None

    def _frame(self, px: int = 256) -> np.ndarray:
        img = np.full((px, px, 3), 24, dtype=np.uint8)
        scale = px / self.size
        yy, xx = np.mgrid[0:px, 0:px]
        wx, wy = (xx + 0.5) / scale, self.size - (yy + 0.5) / scale  # world coords (y up)

        def disc(c, r, color):
            img[(wx - c[0]) ** 2 + (wy - c[1]) ** 2 <= r * r] = color

        ring = np.abs(np.hypot(wx - self.pos[0], wy - self.pos[1]) - self.fire_range) < 0.04
        img[ring] = (60, 60, 90)
        ux, uy = _UNIT[self.aim]
        for t in np.linspace(0, 1.2, 30):
            disc(self.pos + t * np.array([ux, uy]), 0.08, (240, 200, 60))
        disc(self.tpos, 0.35, (220, 60, 60))
        disc(self.pos, 0.3, (80, 170, 250))
        return img

    def _show(self, frame: np.ndarray) -> None:
        try:
            import pygame
        except ImportError as exc:  # pragma: no cover - depends on the machine
            raise gym.error.DependencyNotInstalled("human rendering needs pygame: "
                                                   "pip install pygame") from exc
        if self._window is None:
            pygame.init()
            pygame.display.init()
            self._window = pygame.display.set_mode(frame.shape[:2][::-1])
            self._clock = pygame.time.Clock()
        surf = pygame.surfarray.make_surface(np.transpose(frame, (1, 0, 2)))
        self._window.blit(surf, (0, 0))
        pygame.event.pump()
        pygame.display.update()
        self._clock.tick(self.metadata["render_fps"])

    def close(self) -> None:
        if self._window is not None:
            import pygame

            pygame.display.quit()
            pygame.quit()
            self._window = None


def features(obs: Any) -> dict[str, Any]:
    """The quantities the text shows, rounded as shown: ``tgt`` (target bearing), ``d`` (distance,
    0.1 units), ``aim``, ``cd``/``dcd`` (cooldown steps), ``tl`` (target time left, 0.1 s).

    The expert decides from these alone, so a model that reads the text can learn it exactly.
    """
    o = np.asarray(obs, dtype=np.float64)
    dx, dy = float(o[2]), float(o[3])
    return {"tgt": DIRECTIONS[sector(dx, dy)], "d": round(math.hypot(dx, dy), 1),
            "aim": DIRECTIONS[int(round(o[4])) % 8], "cd": int(round(o[5])), "dcd": int(round(o[6])),
            "tl": round(float(o[7]), 1)}
