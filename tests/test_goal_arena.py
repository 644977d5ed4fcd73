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
from tickcall.envs.goal_arena import COLORS, LABELS, GoalArenaEnv, features, obs_text, region, zone_of
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
    d = "(N|NE|E|SE|S|SW|W|NW)"
    assert re.fullmatch(
        rf"at=(C|{d[1:-1]}) aim={d} cd=\d+ dcd=\d+; "
        rf"Red={d} \d( blocked)?, Green={d} \d( blocked)?, Blue={d} \d( blocked)?",
        second,
    )
    env.step(_act("move", "E", "run"))  # the env moving on does not change an old observation's text
    assert obs_text(obs) == text
    assert env.observation_space.contains(obs)


def test_state_line_layout_blocked_and_cap():
    # red due E at 3, blue due E nearer (so red is blocked, blue is not), green far NE (capped at 9)
    env = _staged(
        {"color": "red"},
        pos=(0.5, 0.5),
        targets={"red": (3.5, 0.5), "blue": (2.5, 0.5), "green": (9.5, 9.5)},
        aim="E",
    )
    env.cd, env.dcd = 3, 12
    state = obs_text(env._obs()).split("\n")[1]
    assert state == "at=SW aim=E cd=3 dcd=12; Red=E 3 blocked, Green=NE 9, Blue=E 2"
    f = features(env._obs())
    assert (f["red_blocked"], f["blue_blocked"], f["green_d"]) == (True, False, 9)
    # whole units rounded up from the 0.1-unit value: 4.0 is 4 (in range, as the shot rule says), 4.1 is 5
    for dx, shown in ((4.04, 4), (4.06, 5), (0.01, 0)):
        env.tposs[0] = (0.5 + dx, 0.5)
        assert features(env._obs())["red_d"] == shown


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


def _goal_slot_and_common(text: str, color: str) -> tuple[str, str]:
    """(the goal colour's target as the text writes it, the fields before the ``;``)."""
    common, targets = text.split("\n")[1].split("; ")
    (slot,) = [t for t in targets.split(", ") if t.split("=")[0] == LABELS[color]]
    return slot, common


def _sampled_states(n_seeds: int = 6, steps: int = 150) -> list[dict]:
    """Observations of expert play with random actions mixed in (every goal of the train split)."""
    b = make_binding(TRAIN_ID)
    expert, rnd = get_expert(TRAIN_ID, b), RandomPolicy(b, 0)
    rng = np.random.default_rng(0)
    out = []
    for seed in range(n_seeds):
        obs, _ = b.env.reset(seed=seed)
        for _ in range(steps):
            out.append(obs)
            pol = rnd if rng.random() < 0.3 else expert
            obs, *_ = b.env.step(b.to_action(pol.act(obs)))
    return out


def test_expert_call_is_determined_by_the_goal_target_the_text_shows():
    """The call depends on the text, and of the three targets only on the one the goal names: move
    the other two anywhere that leaves that target's words (bearing, distance, blocked) and the
    common fields as they were, and the expert's call stays. On the old text (``red=E 3.2 ...``,
    no ``blocked``) this fails: moving a nearer target out of the goal's sector changed the call
    (wait -> fire) while the goal target's words stayed the same (323 of 3,600 such moves)."""
    expert, rng = GoalArenaExpert(), np.random.default_rng(1)
    checked = shadowing = 0
    for obs in _sampled_states():
        f = features(obs)
        want, key = expert.act(obs), _goal_slot_and_common(obs_text(obs), f["color"])
        goal_k = COLORS.index(f["color"])
        for _ in range(4):
            moved = {**obs, "state": obs["state"].copy()}
            for k in range(3):
                if k != goal_k:  # another target anywhere, sometimes straight along the goal target's line
                    scale = rng.uniform(0.3, 1.2) if rng.random() < 0.5 else None
                    g = obs["state"][2 + 2 * goal_k : 4 + 2 * goal_k]
                    moved["state"][2 + 2 * k : 4 + 2 * k] = g * scale if scale else rng.uniform(-9, 9, 2)
            if _goal_slot_and_common(obs_text(moved), f["color"]) != key:
                continue
            checked += 1
            shadowing += int(features(moved)[f["color"] + "_blocked"] or f[f["color"] + "_blocked"])
            assert expert.act(moved) == want, (obs_text(obs), obs_text(moved))
    assert checked > 1000 and shadowing > 50, (checked, shadowing)  # the rule was exercised


def test_expert_call_is_a_function_of_the_turn_text():
    """Sampled states grouped by their exact text (instruction + state line): one call per group."""
    expert = GoalArenaExpert()
    calls: dict[str, set] = {}
    for obs in _sampled_states():
        calls.setdefault(obs_text(obs), set()).add(repr(expert.act(obs)))
    assert all(len(v) == 1 for v in calls.values())
    assert len(calls) > 500


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


def test_sample_observation_covers_the_expert_cases():
    """Coverage states (``models.training.coverage``) are real observations of the split and reach
    every rule of the expert, the rare ones (dash, blocked, escape, slide) included."""
    from tickcall.envs.teaching import get_source
    from tickcall.models.training.coverage import coverage_records, has_sampler

    env, rng, expert = GoalArenaEnv(split="heldout"), np.random.default_rng(0), GoalArenaExpert()
    calls, blocked, escapes = set(), 0, 0
    for _ in range(600):
        obs = env.sample_observation(rng)
        assert env.observation_space.contains(obs)
        f = features(obs)
        assert gp.combo(f) in gp.HELDOUT_COMBOS
        call = expert.act(obs)
        calls.add(call.name)
        blocked += int(f[f["color"] + "_blocked"] and call.name == "wait")
        escapes += int(f["at"] in zone_of(f["avoid"]))
    assert calls == {"aim", "move", "dash", "fire", "wait"} and blocked > 10 and escapes > 10
    assert has_sampler(TRAIN_ID) and has_sampler(HELDOUT_ID)
    recs = coverage_records(get_source(TRAIN_ID), 20, rng_seed=3)
    assert len(recs) == 20 and all(r.query.count("\n") == 1 and not r.history for r in recs)
    assert [r.query for r in recs] == [
        r.query for r in coverage_records(get_source(TRAIN_ID), 20, rng_seed=3)
    ]
