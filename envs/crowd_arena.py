"""``tickcall/CrowdArena-v0``: N NPCs, each in its own ``tickcall/Arena-v0``, as one PettingZoo ParallelEnv.

The crowd is the simplest honest multi-agent world for serving many agents at once: agent ``npc_i``
plays its own private arena (its own position, gun, cooldowns and drifting target); the arenas are
independent and are stepped together, one ``step`` of this env stepping every arena once. Nothing an
NPC does changes another NPC's arena. What the crowd tests is the serving side (one observation and
one call per agent per tick, all decoded as one batch), not multi-agent strategy.

Agents: ``npc_0`` .. ``npc_{N-1}``, ``N = n_agents`` (1 to 256, default 8). Every agent is alive for
the whole episode; all are truncated together after ``max_steps`` physics steps (no agent terminates
early), so ``agents`` is empty after the last step until ``reset``.

Spaces, tools and text: exactly those of ``tickcall/Arena-v0`` (``envs.arena``) for every agent,
so a model trained on the arena drives each NPC:

* ``observation_space(agent)``: the arena's ``Box`` of 8 float32 values
  ``x, y, dx, dy, aim, cd, dcd, tl`` (positions in units, cooldowns in physics steps, ``tl`` in s);
* ``action_space(agent)``: the arena's ``Dict`` (``tool``, ``direction``, ``speed``, ``distance``);
* tools (``tickcall_tools``) ``wait``, ``move``, ``aim``, ``fire``, ``dash`` and the observation
  text (``obs_text``: ``tgt=E d=3.2 aim=NE cd=0 dcd=12 tl=2.4``) are the arena's own functions;
  ``tickcall_agent_env(agent)`` returns an ``ArenaEnv`` that stands for one agent (never stepped)
  so ``envs.binding.make_binding`` binds an NPC exactly as it binds the single-agent arena.

Dynamics: each arena follows ``ArenaEnv.step`` operation for operation (same order, same float64
arithmetic), vectorised with numpy over the agents; only target spawns and shots, which are rare and
draw from an agent's own random generator, run per agent. Rewards per agent are the arena's
(``1 + time_left / target_life`` per hit, ``-0.5`` per expired target). Physics: ``dt`` = 0.05 s
(``metadata["render_fps"]`` = 20 Hz); an episode is ``max_steps`` = 300 steps (15 s).

Seeding: ``reset(seed=s)`` gives agent ``i`` the generator
``numpy.random.Generator(numpy.random.PCG64(numpy.random.SeedSequence([s, i])))``, so NPC ``i`` of a
seeded crowd plays exactly the episode that a single ``ArenaEnv`` plays with that generator as its
``np_random`` (tested). ``reset()`` without a seed keeps the generators going (a fresh crowd draws
OS entropy). Deterministic under a seed; no wall clock anywhere (pacing is the world's).

Actions: ``step(actions)`` takes one arena action per live agent; an agent missing from ``actions``
does ``wait`` this step. ``info[agent]`` is the arena's (``hits``, ``expired``, ``shots``, ``steps``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pettingzoo import ParallelEnv
from tickcall.envs.arena import _UNIT, DIRECTIONS, SPEEDS, TOOLS, ArenaEnv, sector
from tickcall.models.calls import Call

MAX_AGENTS = 256
ENV_ID = "tickcall/CrowdArena-v0"
_UNIT_ARR = np.array(_UNIT, dtype=np.float64)  # (8, 2): (sin, cos) of each compass direction
_WAIT, _MOVE, _AIM, _FIRE, _DASH = (TOOLS.index(t) for t in ("wait", "move", "aim", "fire", "dash"))


def agent_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of agent ``index`` in a crowd reset with ``seed`` (see module docstring)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(index)])))


class CrowdArenaEnv(ParallelEnv):
    """N independent arenas stepped together (see the module docstring). Keyword arguments other than
    ``n_agents`` are ``ArenaEnv``'s (``size``, ``dt``, ``max_steps``, ``fire_range``, ...)."""

    metadata = {"name": "crowd_arena_v0", "render_modes": [], "render_fps": 20, "is_parallelizable": True}

    def __init__(self, n_agents: int = 8, render_mode: str | None = None, **arena_kwargs: Any) -> None:
        if isinstance(n_agents, bool) or not isinstance(n_agents, int) or not 1 <= n_agents <= MAX_AGENTS:
            raise ValueError(f"n_agents must be an integer from 1 to {MAX_AGENTS}, not {n_agents!r}")
        if render_mode is not None:
            raise ValueError("the crowd arena does not render (render_mode must be None)")
        self.render_mode = None
        self._template = ArenaEnv(**arena_kwargs)  # the one arena every agent's spaces and tools come from
        t = self._template
        self.size, self.dt, self.max_steps = t.size, t.dt, t.max_steps
        self.fire_range, self.target_life_s, self.target_speed = t.fire_range, t.target_life_s, t.target_speed
        self.fire_cooldown, self.dash_cooldown = t.fire_cooldown, t.dash_cooldown
        self._speed_arr = np.array([t.speeds[s] for s in SPEEDS], dtype=np.float64)
        self.metadata = {**self.metadata, "render_fps": t.metadata["render_fps"]}
        self.n = int(n_agents)
        self.possible_agents = [f"npc_{i}" for i in range(self.n)]
        self.agents: list[str] = []
        self._index = {a: i for i, a in enumerate(self.possible_agents)}
        self._rngs: list[np.random.Generator] | None = None
        self._alloc()

    # ---- spaces (the same objects every call, as PettingZoo asks: the template arena's) ---------
    def observation_space(self, agent: str) -> Any:
        self._check_agent(agent)
        return self._template.observation_space

    def action_space(self, agent: str) -> Any:
        self._check_agent(agent)
        return self._template.action_space

    def _check_agent(self, agent: str) -> None:
        if agent not in self._index:
            raise KeyError(f"unknown agent {agent!r}; agents are npc_0..npc_{self.n - 1}")

    # ---- state ---------------------------------------------------------------------------------
    def _alloc(self) -> None:
        n, half = self.n, self.size / 2
        self.pos = np.full((n, 2), half, dtype=np.float64)
        self.aim = np.zeros(n, dtype=np.int64)
        self.cd = np.zeros(n, dtype=np.int64)
        self.dcd = np.zeros(n, dtype=np.int64)
        self.tpos = np.tile(np.array([half, self.size - 1.0]), (n, 1))
        self.tvel = np.zeros((n, 2), dtype=np.float64)
        self.tleft = np.zeros(n, dtype=np.int64)
        self.steps = 0
        self.hits = np.zeros(n, dtype=np.int64)
        self.expired = np.zeros(n, dtype=np.int64)
        self.shots = np.zeros(n, dtype=np.int64)

    def _spawn(self, i: int) -> None:
        # ArenaEnv._spawn_target, draw for draw, from agent i's own generator
        rng = self._rngs[i]
        pos_i = self.pos[i]
        for _ in range(100):
            p = rng.uniform(0.5, self.size - 0.5, size=2)
            if np.hypot(*(p - pos_i)) >= 1.5:
                break
        ang = rng.uniform(0, 2 * math.pi)
        self.tpos[i] = p
        self.tvel[i] = self.target_speed * np.array([math.cos(ang), math.sin(ang)])
        self.tleft[i] = int(round(self.target_life_s / self.dt))

    def _obs_array(self) -> np.ndarray:
        out = np.empty((self.n, 8), dtype=np.float32)
        out[:, 0:2] = self.pos
        out[:, 2:4] = self.tpos - self.pos
        out[:, 4] = self.aim
        out[:, 5] = self.cd
        out[:, 6] = self.dcd
        out[:, 7] = self.tleft * self.dt
        return out

    def _infos(self) -> dict[str, dict[str, int]]:
        h, e, s, steps = self.hits.tolist(), self.expired.tolist(), self.shots.tolist(), self.steps
        return {
            a: {"hits": h[i], "expired": e[i], "shots": s[i], "steps": steps}
            for i, a in enumerate(self.possible_agents)
        }

    # ---- PettingZoo Parallel API ---------------------------------------------------------------
    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rngs = [agent_rng(seed, i) for i in range(self.n)]
        elif self._rngs is None:
            root = np.random.SeedSequence()
            self._rngs = [np.random.Generator(np.random.PCG64(s)) for s in root.spawn(self.n)]
        self._alloc()
        for i in range(self.n):
            self._spawn(i)
        self.agents = list(self.possible_agents)
        obs = self._obs_array()
        return {a: obs[i] for i, a in enumerate(self.agents)}, self._infos()

    def step(self, actions: dict[str, Any]):
        if not self.agents:
            raise RuntimeError("step() after the episode ended: call reset() first")
        n = self.n
        tool = np.full(n, _WAIT, dtype=np.int64)
        direction = np.zeros(n, dtype=np.int64)
        speed = np.zeros(n, dtype=np.int64)
        distance = np.ones(n, dtype=np.float64)
        index = self._index
        for agent, act in actions.items():
            i = index[agent]
            tool[i] = int(act["tool"])
            direction[i] = int(act["direction"])
            speed[i] = int(act["speed"])
            distance[i] = float(np.asarray(act["distance"]).reshape(-1)[0])
        reward = np.zeros(n, dtype=np.float64)
        fired = np.zeros(n, dtype=bool)
        dashed = np.zeros(n, dtype=bool)
        # move: walk or run for one step
        m = tool == _MOVE
        if m.any():
            self._move(m, direction[m], self._speed_arr[speed[m]] * self.dt)
        a = tool == _AIM
        self.aim[a] = direction[a]
        # fire: per shooter, as the arena computes it (math.hypot and the sector test on its floats)
        for i in np.flatnonzero((tool == _FIRE) & (self.cd == 0)).tolist():
            self.cd[i], fired[i] = self.fire_cooldown, True
            self.shots[i] += 1
            d = self.tpos[i] - self.pos[i]
            if math.hypot(*d) <= self.fire_range + 0.05 and sector(*d) == self.aim[i]:
                reward[i] += 1.0 + int(self.tleft[i]) * self.dt / self.target_life_s
                self.hits[i] += 1
                self._spawn(i)
        dm = (tool == _DASH) & (self.dcd == 0)
        if dm.any():
            self._move(dm, direction[dm], np.clip(distance[dm], 1.0, 3.0))
            self.dcd[dm] = self.dash_cooldown
            dashed |= dm
        # the world moves on
        self.cd = np.where(fired, self.cd, np.maximum(0, self.cd - 1))
        self.dcd = np.where(dashed, self.dcd, np.maximum(0, self.dcd - 1))
        self._move_targets()
        self.tleft -= 1
        for i in np.flatnonzero(self.tleft <= 0).tolist():
            reward[i] -= 0.5
            self.expired[i] += 1
            self._spawn(i)
        self.steps += 1
        truncated = self.steps >= self.max_steps
        obs_arr = self._obs_array()
        agents = self.agents
        rew = reward.tolist()
        obs = {ag: obs_arr[index[ag]] for ag in agents}
        rewards = {ag: rew[index[ag]] for ag in agents}
        terms = dict.fromkeys(agents, False)
        truncs = dict.fromkeys(agents, truncated)
        all_infos = self._infos()
        infos = {ag: all_infos[ag] for ag in agents}
        if truncated:
            self.agents = []
        return obs, rewards, terms, truncs, infos

    def _move(self, mask: np.ndarray, direction: np.ndarray, dist: np.ndarray) -> None:
        step = dist[:, None] * _UNIT_ARR[direction]
        self.pos[mask] = np.clip(self.pos[mask] + step, 0.0, self.size)

    def _move_targets(self) -> None:
        p = self.tpos + self.tvel * self.dt
        lo, hi = 0.5, self.size - 0.5
        out = (p < lo) | (p > hi)
        self.tvel[out] = -self.tvel[out]
        self.tpos = np.where(out, np.clip(p, lo, hi), p)

    def render(self) -> None:
        return None

    def close(self) -> None:
        self._template.close()

    def state(self) -> np.ndarray:
        """Every agent's observation stacked, shape ``(n_agents, 8)`` (the global state)."""
        return self._obs_array()

    # ---- tickcall: one agent's tools and text (the arena's own) --------------------------------
    def tickcall_agent_env(self, agent: str) -> ArenaEnv:
        """An ``ArenaEnv`` standing for ``agent`` (its spaces, tools, text, call <-> action); never stepped."""
        self._check_agent(agent)
        return self._template

    def tickcall_tools(self) -> list[dict[str, Any]]:
        return self._template.tickcall_tools()

    def obs_text(self, obs: np.ndarray) -> str:
        return self._template.obs_text(obs)

    def action_from_call(self, call: Call) -> tuple[dict[str, Any], bool]:
        return self._template.action_from_call(call)

    def noop_action(self) -> dict[str, Any]:
        return self._template.noop_action()

    def stats(self) -> dict[str, int]:
        """Crowd totals this episode: ``hits``, ``expired``, ``shots`` summed over the agents, ``steps``."""
        return {
            "hits": int(self.hits.sum()),
            "expired": int(self.expired.sum()),
            "shots": int(self.shots.sum()),
            "steps": self.steps,
        }


def parallel_env(n_agents: int = 8, **kwargs: Any) -> CrowdArenaEnv:
    """PettingZoo's constructor convention: the crowd arena as a ParallelEnv."""
    return CrowdArenaEnv(n_agents=n_agents, **kwargs)


__all__ = ["DIRECTIONS", "ENV_ID", "MAX_AGENTS", "CrowdArenaEnv", "agent_rng", "parallel_env"]
