"""Multi-agent worlds: the crowd arena (a real PettingZoo ParallelEnv), PettingZooWorld in real time and
stepped by hand, a third-party PettingZoo env through a ``pettingzoo:`` id, and the shipped arena
student driving a crowd of NPCs in one batch. Nothing here is faked: real PettingZoo (its own API test),
real gymnasium arenas, the real shipped model."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from gymnasium import spaces
from pettingzoo import ParallelEnv
from pettingzoo.test import parallel_api_test
from polling import wait_for
from tickcall.control_loop.world import CrowdWorld, WorldError
from tickcall.envs.arena import ArenaEnv, sector
from tickcall.envs.binding import make_binding
from tickcall.envs.crowd import CROWD_ENVS, CrowdEnvError, PettingZooWorld, crowd_binding, crowd_rate
from tickcall.envs.crowd_arena import MAX_AGENTS, CrowdArenaEnv, agent_rng
from tickcall.models.calls import Call

from tickcall.world import (
    WorldSpec,
    check_spec,
    crowd_world_factory,
    is_crowd_env,
    make_crowd_world,
    make_world,
)

ARENA = "tickcall/CrowdArena-v0"
MULTIWALKER = "pettingzoo:pettingzoo.sisl.multiwalker_v9:parallel_env"


# --------------------------------------------------------------------------- the crowd arena as an env
@pytest.mark.parametrize("n", [1, 5])
def test_crowd_arena_passes_pettingzoos_parallel_api_test(n: int) -> None:
    env = CrowdArenaEnv(n_agents=n, max_steps=120)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PettingZoo warns (does not fail) for a live agent left out of a dict
        parallel_api_test(env, num_cycles=300)
    assert env.possible_agents == [f"npc_{i}" for i in range(n)]


def test_each_npc_plays_exactly_its_own_arena() -> None:
    """NPC i of a crowd reset with seed s plays the episode a single ArenaEnv plays with agent_rng(s, i),
    step for step under the same actions, across an episode boundary (the crowd's docstring's promise)."""
    n, max_steps = 4, 60
    crowd = CrowdArenaEnv(n_agents=n, max_steps=max_steps)
    singles = [ArenaEnv(max_steps=max_steps) for _ in range(n)]
    rng = np.random.default_rng(1)
    hits = 0
    for seed in (3, 11):
        obs, infos = crowd.reset(seed=seed)
        for i, arena in enumerate(singles):
            arena.np_random = agent_rng(seed, i)
            o, info = arena.reset()
            assert np.array_equal(o, obs[f"npc_{i}"]) and info == infos[f"npc_{i}"]
        while crowd.agents:
            # half the time aim at the target, a third fire, else anything: hits and respawns happen
            acts = {}
            for a in crowd.agents:
                act = crowd.action_space(a).sample()
                u = rng.random()
                if u < 0.5:
                    act["tool"], act["direction"] = 2, sector(float(obs[a][2]), float(obs[a][3]))
                elif u < 0.8:
                    act["tool"] = 3
                acts[a] = act
            obs, rew, term, trunc, infos = crowd.step(acts)
            for i, arena in enumerate(singles):
                a = f"npc_{i}"
                o, r, t, tr, info = arena.step(acts[a])
                assert np.array_equal(o, obs[a]), (seed, i, o, obs[a])
                assert (r, t, tr, info) == (rew[a], term[a], trunc[a], infos[a])
        hits += crowd.stats()["hits"]
        assert crowd.stats()["steps"] == max_steps
    assert hits > 0  # the comparison went through hits and respawns, not only drifting targets


def test_crowd_arena_spaces_tools_and_text_are_the_arenas() -> None:
    crowd = CrowdArenaEnv(n_agents=3)
    single = make_binding("tickcall/Arena-v0")
    world = make_crowd_world(ARENA, agents=3, seed=0)
    try:
        assert world.tools == single.tools
        for a in crowd.possible_agents:
            assert crowd.observation_space(a) == single.env.observation_space
            assert crowd.action_space(a) == single.env.action_space
        obs, _ = crowd.reset(seed=5)
        for o in obs.values():
            assert crowd.obs_text(o) == single.obs_text(o)
        texts = world.observe_all()
        raw = world.penv.state()
        for i, a in enumerate(world.agents):
            assert texts[a].text == single.obs_text(raw[i])
            assert texts[a].text.startswith("tgt=") and " aim=N " in texts[a].text
    finally:
        world.close()
        single.env.close()
    for bad in (0, MAX_AGENTS + 1, 2.5, True):
        with pytest.raises(ValueError, match="n_agents must be an integer from 1 to 256"):
            CrowdArenaEnv(n_agents=bad)


# --------------------------------------------------------------------------- the world: ids and errors
def test_crowd_ids_specs_and_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_crowd_env(ARENA) and is_crowd_env(MULTIWALKER)
    assert not is_crowd_env("tickcall/Arena-v0") and not is_crowd_env("engine:tcp://127.0.0.1:5555")
    assert WorldSpec(env=ARENA).agents is None
    check_spec(ARENA, agents=16)
    bad = {
        (ARENA, 0): "n_agents must be an integer from 1 to 256, not 0",
        ("pettingzoo:no_such_module_x:parallel_env", None): "cannot import no_such_module_x",
        ("pettingzoo:pettingzoo.classic.tictactoe_v3:env", None): "turn-based (AEC) env",
        ("pettingzoo:pettingzoo.classic.rps_v2:nothing", None): "has no function 'nothing'",
        ("pettingzoo:pettingzoo.classic.rps_v2", 5): "has 2 agents and its constructor takes no n_agents",
        ("CartPole-v1", 4): "single-agent env; 4 agents need a multi-agent env",
        (
            "tickcall/CrowdArena-v9",
            4,
        ): "unknown multi-agent env 'tickcall/CrowdArena-v9'; built in: tickcall/CrowdArena-v0",
    }
    for (env, agents), text in bad.items():
        with pytest.raises(WorldError) as exc:
            check_spec(WorldSpec(env=env, agents=agents))
        assert text in str(exc.value) and "\n" not in str(exc.value), str(exc.value)
    with pytest.raises(WorldError, match="is a multi-agent env: build it with make_crowd_world"):
        make_world(ARENA)
    with pytest.raises(WorldError, match="not a multi-agent env"):
        make_crowd_world("tickcall/Arena-v0")
    # agents with different spaces: one line through the world too (a real ParallelEnv, built by id)
    monkeypatch.setitem(CROWD_ENVS, "test/Mixed-v0", f"{__name__}:mixed_env")
    with pytest.raises(WorldError) as exc:
        make_crowd_world(WorldSpec(env="test/Mixed-v0"))
    msg = str(exc.value)
    assert "different action spaces" in msg and "not supported yet" in msg and "\n" not in msg
    with pytest.raises(CrowdEnvError, match="different action spaces"):
        crowd_binding(mixed_env())


class _Mixed(ParallelEnv):
    """Two agents whose action spaces differ (a crowd cannot serve them with one tool set yet)."""

    metadata = {"name": "mixed_v0", "render_fps": 10}

    def __init__(self) -> None:
        self.possible_agents = ["a", "b"]
        self.agents: list[str] = []
        self._obs = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._act = {"a": spaces.Discrete(2), "b": spaces.Discrete(3)}

    def observation_space(self, agent: str) -> spaces.Space:
        return self._obs

    def action_space(self, agent: str) -> spaces.Space:
        return self._act[agent]


def mixed_env() -> _Mixed:
    return _Mixed()


# --------------------------------------------------------------------------- the world: set-points by hand
def test_set_points_fallbacks_history_and_accounting_per_agent() -> None:
    """Stepped by hand (``advance``), so every number is exact: an agent's action persists until replaced,
    fallbacks act on one agent only, rejected calls hold, and every call and fallback is counted."""
    world = make_crowd_world(WorldSpec(env=ARENA, agents=3, seed=0))
    assert isinstance(world, CrowdWorld) and isinstance(world, PettingZooWorld)
    pos = world.penv.pos
    try:
        assert world.agents == ["npc_0", "npc_1", "npc_2"]
        start = pos.copy()
        r = world.apply_call("npc_0", Call("move", {"direction": "E", "speed": "run"}))
        assert r.ok and r.status == "ok" and r.episode == 0
        world.advance(3)  # run: 4 units/s x 0.05 s a step
        assert pos[0, 0] == pytest.approx(start[0, 0] + 0.6) and pos[0, 1] == pytest.approx(start[0, 1])
        assert np.array_equal(pos[1:], start[1:])  # the others wait (their default set-point)
        assert world.fallback("npc_0", "hold") == "hold"
        world.advance(1)
        assert pos[0, 0] == pytest.approx(start[0, 0] + 0.8)  # held: still running east
        assert world.fallback("npc_0", "noop") == "noop"  # the arena's declared no-op: wait
        world.advance(2)
        assert pos[0, 0] == pytest.approx(start[0, 0] + 0.8)
        world.apply_call("npc_0", {"name": "move", "arguments": {"direction": "N", "speed": "walk"}})
        assert world.fallback("npc_0", "default") == "default"  # replaces the move before any step used it
        world.advance(1)
        assert pos[0, 1] == pytest.approx(start[0, 1])
        # npc_1: a legal aim, then an illegal move that is rejected and holds the aim's action
        assert world.apply_call("npc_1", Call("aim", {"direction": "NE"})).status == "ok"
        bad = world.apply_call("npc_1", Call("move", {"direction": "UP", "speed": "run"}))
        assert bad.status == "rejected" and "UP" in bad.reason
        clipped = world.apply_call("npc_2", Call("dash", {"direction": "S", "distance": 9}))
        assert clipped.status == "clipped"
        world.advance(1)
        texts = world.observe_all()
        assert " aim=NE " in texts["npc_1"].text and " aim=N " in texts["npc_0"].text
        assert pos[2, 1] == pytest.approx(start[2, 1] - 3.0)  # dashed the clipped 3 units south
        assert np.array_equal(pos[1], start[1])
        assert world.history("npc_0") == [
            'move(direction="E", speed="run")@f1 done',
            'move(direction="N", speed="walk")@f2 done',
        ]
        h1 = world.history("npc_1")
        assert h1[0] == 'aim(direction="NE")@f1 done' and h1[1].startswith(
            'move(direction="UP", speed="run")@f2 rejected: '
        )
        assert world.history("npc_2") == ['dash(direction="S", distance=9)@f1 done']
        d = world.describe()
        assert d["agents"] == 3 and d["physics_steps"] == 8 and d["env_stats"]["steps"] == 8
        assert d["actions"] == {"applied": 5, "ok": 3, "clipped": 1, "rejected": 1, "superseded": 1}
        assert d["fallbacks"] == {"hold": 1, "default": 1, "noop": 1}
        a0 = d["per_agent"]["npc_0"]
        assert (a0["applied"], a0["hold"], a0["noop"], a0["default"], a0["superseded"]) == (2, 1, 1, 1, 1)
        assert d["per_agent"]["npc_1"]["superseded"] == 0  # a rejected call replaces nothing
        assert world.binding.counts == {"calls": 5, "ok": 3, "clipped": 1, "rejected": 1}
        with pytest.raises(KeyError, match="unknown agent 'npc_7'"):
            world.apply_call("npc_7", Call("wait", {}))
    finally:
        world.close()


# --------------------------------------------------------------------------- the world: real time
def test_physics_runs_on_its_own_clock_with_seeded_episodes() -> None:
    world = make_crowd_world(
        WorldSpec(env=ARENA, agents=3, seed=7, max_episodes=2, physics_hz=100.0, env_kwargs={"max_steps": 8})
    )
    assert world.physics_hz == 100.0 and crowd_rate(world.penv) == 20.0  # the arena's own rate: 20 Hz
    try:
        first = world.observe_all()
        assert sorted(first) == world.agents and {o.episode for o in first.values()} == {0}
        world.start()
        assert wait_for(lambda: world.done, 10.0, 0.01)
        eps = world.episodes()
        assert [e["index"] for e in eps] == [0, 1] and [e["seed"] for e in eps] == [7, 8]
        assert [e["length"] for e in eps] == [8, 8] and all(sorted(e["returns"]) == world.agents for e in eps)
        assert eps[1]["t_end"] > eps[1]["t_start"] >= eps[0]["t_end"]
        d = world.describe()
        assert d["physics_steps"] == 16 and d["episodes"] == 2 and world.episodes_done() == 2
        assert world.observe_all() == {}  # every NPC was truncated and no episode follows
    finally:
        world.close()
    # a set-point applied while the physics runs acts from the next steps, for that agent only
    world = make_crowd_world(WorldSpec(env=ARENA, agents=2, seed=0, physics_hz=50.0))
    try:
        world.start()
        t0 = world.observe_all()["npc_0"].taken_at
        world.apply_call("npc_0", Call("move", {"direction": "E", "speed": "walk"}))
        steps0 = world.describe()["physics_steps"]
        assert wait_for(lambda: world.describe()["physics_steps"] >= steps0 + 4, 10.0, 0.01)
        obs = world.observe_all()
        assert obs["npc_0"].taken_at > t0 and obs["npc_0"].taken_at == obs["npc_1"].taken_at
        world.stop()
        assert world.penv.pos[0, 0] > 5.0 and world.penv.pos[1, 0] == 5.0
        phys = world.describe()["physics"]
        assert "error" not in phys and phys["step_ms_mean"] > 0
    finally:
        world.close()


class _Boom(ParallelEnv):
    """Two agents; the third step raises (a third-party env with a bug)."""

    metadata = {"name": "boom_v0", "render_fps": 200}

    def __init__(self) -> None:
        self.possible_agents = ["a", "b"]
        self.agents: list[str] = []
        self._obs = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self._act = spaces.Discrete(2)
        self.steps = 0

    def observation_space(self, agent: str) -> spaces.Space:
        return self._obs

    def action_space(self, agent: str) -> spaces.Space:
        return self._act

    def reset(self, seed=None, options=None):
        self.agents = list(self.possible_agents)
        return {a: np.zeros(1, np.float32) for a in self.agents}, {a: {} for a in self.agents}

    def step(self, actions):
        self.steps += 1
        if self.steps == 3:
            raise RuntimeError("boom\nsecond line")
        obs = {a: np.full(1, 0.5 * actions[a], np.float32) for a in self.agents}
        zero = dict.fromkeys(self.agents, 0.0)
        no = dict.fromkeys(self.agents, False)
        return obs, zero, no, dict(no), {a: {} for a in self.agents}


def test_an_env_that_raises_stops_the_physics_and_says_why() -> None:
    env = _Boom()
    world = PettingZooWorld(env, crowd_binding(env, "boom"), env_id="boom", seed=0)
    try:
        assert world.physics_hz == 200.0
        world.apply_call("b", Call("act", {"action": 1}))
        world.start()
        assert wait_for(lambda: world.done, 10.0, 0.01)
        d = world.describe()
        assert d["physics"]["error"] == "RuntimeError: boom" and d["physics_steps"] == 2
        obs = world.observe_all()  # the last good observations stay readable
        assert obs["a"].text == "o0=+0.000" and obs["b"].text == "o0=+0.500"
    finally:
        world.close()


# --------------------------------------------------------------------------- a third-party PettingZoo env
def test_third_party_pettingzoo_envs_by_id() -> None:
    pytest.importorskip("Box2D")  # multiwalker's physics (a dev dependency, like gymnasium's Box2D envs)
    factory = crowd_world_factory(WorldSpec(env=MULTIWALKER, seed=0))
    world = pickle.loads(pickle.dumps(factory))()  # the loop actor gets the factory through Ray
    try:
        assert world.agents == ["walker_0", "walker_1", "walker_2"] and world.physics_hz == 50.0
        (tool,) = world.tools
        assert tool["function"]["name"] == "act"
        assert list(tool["function"]["parameters"]["properties"]) == ["a0", "a1", "a2", "a3"]
        assert (
            world.apply_call("walker_0", Call("act", {"a0": 0.5, "a1": -0.5, "a2": 0, "a3": 1})).status
            == "ok"
        )
        assert (
            world.apply_call("walker_1", Call("act", {"a0": 5, "a1": 0, "a2": 0, "a3": 0})).status
            == "clipped"
        )
        assert (
            world.apply_call("walker_2", Call("act", {"a0": "x", "a1": 0, "a2": 0, "a3": 0})).status
            == "rejected"
        )
        world.advance(3)
        obs = world.observe_all()
        assert sorted(obs) == world.agents
        assert all(len(o.text.split()) == 31 and o.text.startswith("o0=") for o in obs.values())
        world.start()  # and in real time on its own clock
        assert wait_for(lambda: world.describe()["physics_steps"] >= 10, 10.0, 0.01)
        world.stop()
        assert "error" not in world.describe()["physics"]
    finally:
        world.close()
    # rock-paper-scissors (no extra dependency; FUNCTION defaults to parallel_env): episodes end when
    # PettingZoo's agents list empties, and the next one resets with seed + 1
    rps = make_crowd_world(WorldSpec(env="pettingzoo:pettingzoo.classic.rps_v2", seed=4))
    try:
        assert rps.agents == ["player_0", "player_1"] and rps.physics_hz == 2.0
        assert rps.apply_call("player_0", rps.binding.action_to_call(1)).ok
        ended = rps.advance(15)  # rps_v2 plays 15 rounds
        assert ended == 1 and rps.episodes()[0]["length"] == 15 and rps.episodes()[0]["seed"] == 4
        assert sorted(rps.observe_all()) == rps.agents and rps.current_episode()["index"] == 1
    finally:
        rps.close()
    # a third-party env names its tool and observation once, in metadata["tickcall"] (a catalog entry)
    from pettingzoo.classic import rps_v2

    env = rps_v2.parallel_env()
    env.metadata = {
        **env.metadata,
        "tickcall": {
            "tool": "throw",
            "labels": ["rock", "paper", "scissors"],
            "obs": [{"name": "their_last"}],
        },
    }
    named = crowd_binding(env, "rps")
    assert [t["function"]["name"] for t in named.tools] == ["throw"] and named.obs_text(3) == "their_last=3"
    assert named.call_to_action(Call("throw", {"action": "paper"})).action == 1


# --------------------------------------------------------------------------- the shipped student, in one batch
def test_shipped_arena_student_drives_every_npc_in_one_batch() -> None:
    """The model ``tickcall run --env tickcall/Arena-v0`` uses, found as run finds it, decides for eight
    NPCs at once (one ``decide_batch`` per decision): every call is legal, every NPC's call is accepted
    by the world, and the NPCs score (a random policy scores below zero; see the docs)."""
    from tickcall.models.format import Turn
    from tickcall.models.loading import load_engine

    from tickcall.job import shipped_default_model

    path = shipped_default_model("tickcall/Arena-v0")
    engine = load_engine(path)
    world = make_crowd_world(
        WorldSpec(env=ARENA, agents=8, seed=0, max_episodes=1, env_kwargs={"max_steps": 100})
    )
    try:
        handle = engine.register(world.tools).handle
        batches = 0
        while not world.done:
            obs = world.observe_all()
            decisions = engine.decide_batch([(handle, Turn(query=o.text, history=[])) for o in obs.values()])
            batches += 1
            for agent, d in zip(obs, decisions, strict=True):
                assert d.legal and d.call is not None, (agent, d.reason)
                assert world.apply_call(agent, d.call).status == "ok"
            world.advance(2)  # 10 decisions a second at the arena's 20 Hz physics
        assert batches == 50
        (ep,) = world.episodes()
        assert all(r > 0 for r in ep["returns"].values()), ep["returns"]
        stats = world.describe()["env_stats"]
        assert stats["hits"] >= 8 and world.describe()["actions"]["rejected"] == 0
    finally:
        world.close()
