"""tickcall/GoalArena-v0: goals, penalties, the expert's rule, the phrasing splits, the runtime paths."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
from tickcall.envs import goal_phrasing as gp
from tickcall.envs.arena import DIRECTIONS, SPEEDS, TOOLS
from tickcall.envs.binding import make_binding
from tickcall.envs.experts import GoalArenaExpert, RandomPolicy, get_expert
from tickcall.envs.goal_arena import COLORS, GoalArenaEnv, features, obs_text, region, zone_of
from tickcall.models.calls import Call

TRAIN_ID, HELDOUT_ID = "tickcall/GoalArena-v0", "tickcall/GoalArena-Heldout-v0"


def _act(tool: str, direction: str = "N", speed: str = "walk", distance: float = 1.0) -> dict:
    return {
        "tool": TOOLS.index(tool),
        "direction": DIRECTIONS.index(direction),
        "speed": SPEEDS.index(speed),
        "distance": np.array([distance], dtype=np.float32),
    }


def _staged(goal: dict, pos=(5.0, 5.0), targets: dict | None = None, aim: str = "N") -> GoalArenaEnv:
    """An env after reset with the agent and targets placed by hand (others parked far, long lives)."""
    env = GoalArenaEnv()
    env.reset(seed=0, options={"goal": goal})
    env.pos = np.array(pos, dtype=float)
    env.tvels[:] = 0.0
    env.tlefts[:] = 1000
    park = {"red": (0.5, 0.5), "green": (9.5, 0.5), "blue": (0.5, 9.5)}
    for k, c in enumerate(COLORS):
        env.tposs[k] = (targets or {}).get(c, park[c])
    env.aim = DIRECTIONS.index(aim)
    return env


# ---- env -------------------------------------------------------------------------------------------


def test_deterministic_under_seed():
    runs = []
    for _ in range(2):
        env = GoalArenaEnv()
        obs, _ = env.reset(seed=7)
        space = env.action_space
        space.seed(3)
        texts, rewards = [obs_text(obs)], []
        for _ in range(60):
            obs, r, *_ = env.step(space.sample())
            texts.append(obs_text(obs))
            rewards.append(r)
        runs.append((texts, rewards))
    assert runs[0] == runs[1]
    a, _ = GoalArenaEnv().reset(seed=1)
    b, _ = GoalArenaEnv().reset(seed=2)
    assert obs_text(a) != obs_text(b)


def test_goal_from_options_and_bad_goal():
    env = GoalArenaEnv()
    obs, _ = env.reset(seed=0, options={"goal": {"color": "blue", "avoid": "W", "forbid": "run"}})
    f = features(obs)
    assert (f["color"], f["avoid"], f["forbid"]) == ("blue", "W", "run")
    assert "blue" in obs["instruction"] and "west" in obs["instruction"].lower()
    obs, _ = env.reset(seed=0, options={"goal": {"color": "red"}, "instruction": "Red only."})
    assert obs["instruction"] == "Red only." and features(obs)["avoid"] is None
    for bad in ({"color": "pink"}, {"color": "red", "avoid": "NE"}, {"color": "red", "speed": 1}, "red"):
        with pytest.raises(ValueError, match="goal|color"):
            env.reset(seed=0, options={"goal": bad})


def test_hits_wrong_hits_and_nearest_target():
    env = _staged({"color": "red"}, targets={"red": (7.0, 5.0)}, aim="E")
    _, r, *_, info = env.step(_act("fire"))
    assert info["hits"] == 1 and r > 1.0
    env = _staged({"color": "red"}, targets={"red": (8.0, 5.0), "green": (7.0, 5.0)}, aim="E")
    _, r, *_, info = env.step(_act("fire"))  # green is nearer in the same sector: it takes the shot
    assert info["wrong_hits"] == 1 and info["hits"] == 0 and r == pytest.approx(-1.0)


def test_expiry_only_penalises_the_goal_colour():
    env = _staged({"color": "green"})
    env.tlefts[:] = [1, 1000, 1000]  # red expires: no penalty
    _, r, *_, info = env.step(_act("wait"))
    assert r == 0.0 and info["expired"] == 0
    env.tlefts[:] = [1000, 1, 1000]
    _, r, *_, info = env.step(_act("wait"))
    assert r == pytest.approx(-0.5) and info["expired"] == 1


def test_zone_steps():
    assert zone_of("N") == {"NW", "N", "NE"} and region(5.0, 5.0) == "C" and region(5.0, 9.0) == "N"
    env = _staged({"color": "red", "avoid": "N"}, pos=(5.0, 9.0))
    _, r, *_, info = env.step(_act("wait"))
    assert info["zone_steps"] == 1 and r == pytest.approx(-0.05)
    env = _staged({"color": "red", "avoid": "S"}, pos=(5.0, 9.0))
    _, r, *_, info = env.step(_act("wait"))
    assert info["zone_steps"] == 0 and r == 0.0


def test_forbidden_dash_and_run():
    env = _staged({"color": "red", "forbid": "dash"})
    _, r, *_, info = env.step(_act("dash", "E", distance=2))
    assert info["forbidden_uses"] == 1 and r == pytest.approx(-1.0) and env.pos[0] == pytest.approx(7.0)
    _, r, *_, info = env.step(_act("dash", "E", distance=2))  # on cooldown: nothing happens
    assert info["forbidden_uses"] == 1 and r == 0.0
    env = _staged({"color": "red", "forbid": "run"})
    for tool, speed, uses in (
        ("move", "run", 1),
        ("move", "run", 1),
        ("move", "walk", 1),
        ("move", "run", 2),
    ):
        _, _, *_, info = env.step(_act(tool, "E", speed))
        assert info["forbidden_uses"] == uses  # a stretch of run steps is one use
    env = _staged({"color": "red"})
    _, r, *_, info = env.step(_act("dash", "E", distance=2))
    assert info["forbidden_uses"] == 0 and r == 0.0


def test_goal_success_at_truncation():
    env = GoalArenaEnv(max_steps=5, success_hits=1)
    env.reset(seed=0, options={"goal": {"color": "red"}})
    env.pos[:] = 5.0
    env.tposs[0] = (7.0, 5.0)
    env.tvels[:] = 0
    env.aim = DIRECTIONS.index("E")
    _, _, _, trunc, info = env.step(_act("fire"))
    assert not trunc and "goal_success" not in info
    for _ in range(4):
        _, _, _, trunc, info = env.step(_act("wait"))
    assert trunc and info["goal_success"] is True


# ---- text ------------------------------------------------------------------------------------------


def test_obs_text_is_pure_and_shows_the_sentence():
    env = GoalArenaEnv()
    obs, _ = env.reset(seed=4)
    text = obs_text(obs)
    assert text == obs_text(obs) == env.obs_text(obs)
    first, second = text.split("\n")
    assert first == obs["instruction"]
    assert re.fullmatch(
        r"red=\w+ \d+\.\d green=\w+ \d+\.\d blue=\w+ \d+\.\d at=\w+ aim=\w+ cd=\d+ dcd=\d+", second
    )
    env.step(_act("move", "E", "run"))  # the env moving on does not change an old observation's text
    assert obs_text(obs) == text
    assert env.observation_space.contains(obs)


# ---- the expert ------------------------------------------------------------------------------------


def _obs(goal: dict, pos=(5.0, 5.0), targets: dict | None = None, aim="N", cd=0, dcd=0) -> dict:
    env = _staged(goal, pos, targets, aim)
    env.cd, env.dcd = cd, dcd
    return env._obs()


@pytest.mark.parametrize(
    ("goal", "pos", "targets", "aim", "cd", "dcd", "call"),
    [
        # in the avoided zone: out the opposite way (walk when running is forbidden)
        (
            {"color": "red", "avoid": "N"},
            (5, 9),
            {"red": (5, 7)},
            "S",
            0,
            0,
            Call("move", {"direction": "S", "speed": "run"}),
        ),
        (
            {"color": "red", "avoid": "E", "forbid": "run"},
            (9, 5),
            None,
            "N",
            0,
            0,
            Call("move", {"direction": "W", "speed": "walk"}),
        ),
        # aim at the goal colour first
        (
            {"color": "blue"},
            (5, 5),
            {"blue": (5, 2), "red": (5, 8)},
            "N",
            0,
            0,
            Call("aim", {"direction": "S"}),
        ),
        # out of range: dash by the gap; move when dash is on cooldown or forbidden; walk when run is forbidden
        (
            {"color": "red"},
            (1, 1),
            {"red": (1, 7.5)},
            "N",
            0,
            0,
            Call("dash", {"direction": "N", "distance": 3}),
        ),
        (
            {"color": "red"},
            (1, 1),
            {"red": (1, 5.5)},
            "N",
            0,
            0,
            Call("dash", {"direction": "N", "distance": 1}),
        ),
        (
            {"color": "red"},
            (1, 1),
            {"red": (1, 7.5)},
            "N",
            0,
            5,
            Call("move", {"direction": "N", "speed": "run"}),
        ),
        (
            {"color": "red", "forbid": "dash"},
            (1, 1),
            {"red": (1, 7.5)},
            "N",
            0,
            0,
            Call("move", {"direction": "N", "speed": "run"}),
        ),
        (
            {"color": "red", "forbid": "run"},
            (1, 1),
            {"red": (1, 7.5)},
            "N",
            0,
            5,
            Call("move", {"direction": "N", "speed": "walk"}),
        ),
        # beside the zone with the target inside it: slide along the border, or wait when straight in
        (
            {"color": "green", "avoid": "N"},
            (5, 5),
            {"green": (9.5, 9.5)},
            "NE",
            0,
            0,
            Call("move", {"direction": "E", "speed": "run"}),
        ),
        ({"color": "green", "avoid": "N"}, (5, 4), {"green": (5, 9.5)}, "N", 0, 0, Call("wait", {})),
        # in range: fire when ready, wait on cooldown or when another colour is nearer in the same sector
        ({"color": "red"}, (5, 5), {"red": (7, 5)}, "E", 0, 0, Call("fire", {})),
        ({"color": "red"}, (5, 5), {"red": (7, 5)}, "E", 3, 0, Call("wait", {})),
        ({"color": "red"}, (5, 5), {"red": (8, 5), "blue": (6.5, 5)}, "E", 0, 0, Call("wait", {})),
    ],
)
def test_expert_table(goal, pos, targets, aim, cd, dcd, call):
    assert GoalArenaExpert().act(_obs(goal, pos, targets, aim, cd, dcd)) == call


def test_expert_succeeds_and_random_fails():
    for env_id in (TRAIN_ID, HELDOUT_ID):
        for kind in ("expert", "random"):
            b = make_binding(env_id)
            pol = get_expert(env_id, b) if kind == "expert" else RandomPolicy(b, 0)
            for seed in range(3):
                obs, _ = b.env.reset(seed=seed)
                done = False
                while not done:
                    obs, _, term, trunc, info = b.env.step(b.to_action(pol.act(obs)))
                    done = term or trunc
                assert info["goal_success"] is (kind == "expert"), (env_id, kind, seed, info)


# ---- phrasing splits -------------------------------------------------------------------------------


def _fills(template: str) -> list[str]:
    """Every text a template can produce (placeholders filled with every value)."""
    out = []
    for c in gp.COLORS:
        for d in ("N", "E", "S", "W"):
            out.append(template.format(c=c, n=gp._NOUN[d], a=gp._ADJ[d]).lower())
    return sorted(set(out))


def test_split_sizes_and_combos():
    assert len(gp.COLOR_TEMPLATES["train"]) >= 12 and len(gp.COLOR_TEMPLATES["heldout"]) >= 6
    assert len(gp.AVOID_TEMPLATES["train"]) >= 6 and len(gp.AVOID_TEMPLATES["heldout"]) >= 3
    for v in gp.FORBID_TEMPLATES.values():
        assert len(v["train"]) >= 6 and len(v["heldout"]) >= 3
    assert len(gp.HELDOUT_COMBOS) == 9 and len(gp.TRAIN_COMBOS) == 36
    for i, values in enumerate((gp.COLORS, gp.AVOIDS, gp.FORBIDS)):  # every value still trains
        assert {t[i] for t in gp.TRAIN_COMBOS} == set(values)
    rng = np.random.default_rng(0)
    assert all(gp.combo(gp.draw_goal(rng, "train")) not in gp.HELDOUT_COMBOS for _ in range(2000))
    assert all(gp.combo(gp.draw_goal(rng, "heldout")) in gp.HELDOUT_COMBOS for _ in range(300))


def test_no_heldout_text_in_train_and_charset():
    heldout = [f for t in gp.all_template_texts("heldout") for f in _fills(t)]
    train_texts = set()
    rng = np.random.default_rng(1)
    space = GoalArenaEnv().observation_space["instruction"]
    for c, a, f in gp.ALL_COMBOS:
        for _ in range(40):
            s = gp.phrase({"color": c, "avoid": a, "forbid": f}, rng, "train")
            assert space.contains(s), s
            train_texts.add(s.lower())
            h = gp.phrase({"color": c, "avoid": a, "forbid": f}, rng, "heldout")
            assert space.contains(h), h
    assert not [(h, t) for t in train_texts for h in heldout if h in t]
    # the env's train split never shows a held-out combination
    env = GoalArenaEnv()
    for seed in range(200):
        obs, _ = env.reset(seed=seed)
        f = features(obs)
        assert (f["color"], f["avoid"], f["forbid"]) not in gp.HELDOUT_COMBOS
    with pytest.raises(ValueError, match="split"):
        GoalArenaEnv(split="test")


# ---- the runtime paths -----------------------------------------------------------------------------


def test_registration_and_binding():
    assert gym.make(HELDOUT_ID).unwrapped.split == "heldout"
    b = make_binding(TRAIN_ID)
    assert b.semantic and [t["function"]["name"] for t in b.tools] == list(TOOLS)
    obs, _ = b.env.reset(seed=0)
    assert b.obs_text(obs) == obs_text(obs)
    call = get_expert(TRAIN_ID, b).act(obs)
    r = b.call_to_action(call)
    assert r.status == "ok" and b.action_to_call(r.action) == call
    b.obs_text(b.env.observation_space.sample())  # the real-time probe renders a sampled observation


def test_random_backend_episode_reports_goal_success():
    from tickcall.envs.evaluate import evaluate, format_table

    rep = evaluate(HELDOUT_ID, "model", backend="random", episodes=1, seed=0, env_kwargs={"max_steps": 40})
    assert rep.episodes == 1 and rep.legal_rate == 1.0 and rep.goal_success == 0.0
    assert rep.to_dict()["goal_success"] == 0.0 and format_table([rep]).splitlines()[0].endswith("goal")
    head, _, row = format_table([rep]).splitlines()
    assert row.index(" model ") + 1 == head.index("policy")  # the env column fits the 29-character id
    other = evaluate("tickcall/Arena-v0", "expert", episodes=1, seed=0, env_kwargs={"max_steps": 20})
    assert "goal_success" not in other.to_dict() and "goal" not in format_table([other])
