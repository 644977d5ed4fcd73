"""EnvBinding: tools, observation text, call -> action with clip/reject accounting; experts' scores."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from tickcall.envs.binding import make_binding
from tickcall.envs.experts import EXPERTS, RandomPolicy, get_expert
from tickcall.envs.obs_text import ObsFormatter, fmt_number
from tickcall.models.calls import Call
from tickcall.models.tools import normalize_tools, validate_arguments


def test_cartpole_binding_tools_text_and_conversion():
    b = make_binding("CartPole-v1")
    assert b.tools[0]["function"]["name"] == "push"
    assert b.specs[0].properties["direction"]["enum"] == ["left", "right"]
    obs, _ = b.env.reset(seed=0)
    text = b.obs_text(obs)
    assert text.startswith("x=") and len(text.split()) == 4 and " v=" in text and " w=" in text
    res = b.call_to_action(Call("push", {"direction": "right"}))
    assert (res.status, res.action) == ("ok", 1)
    assert b.action_to_call(0) == Call("push", {"direction": "left"})
    assert b.hold == 3  # 50 Hz physics, 16 Hz decisions


@pytest.mark.parametrize("bad, reason", [
    (None, "no call"),
    ({"nonsense": 1}, "malformed"),
    (Call("jump", {}), "unknown tool"),
    (Call("push", {}), "missing"),
    (Call("push", {"direction": "up"}), "not one of"),
    (42, "not a call"),
])
def test_bad_calls_are_rejected_with_reason_fallback_and_counted(bad, reason):
    b = make_binding("LunarLander-v3")
    res = b.call_to_action(bad) if not isinstance(bad, Call) else b.call_to_action(
        Call("engine" if bad.name == "push" else bad.name,
             {("fire" if k == "direction" else k): v for k, v in bad.arguments.items()}))
    assert res.status == "rejected" and reason in res.reason
    assert res.action == 0  # LunarLander's no-op: no engine
    assert b.counts == {"calls": 1, "ok": 0, "clipped": 0, "rejected": 1}
    assert sum(b.reasons.values()) == 1


def test_clip_versus_reject_for_out_of_range_numbers():
    clip = make_binding("Pendulum-v1")
    res = clip.call_to_action(Call("torque", {"value": 9.0}))
    assert res.status == "clipped" and res.action.tolist() == [2.0]
    strict = make_binding("Pendulum-v1", on_invalid="reject")
    res = strict.call_to_action(Call("torque", {"value": 9.0}))
    assert res.status == "rejected" and res.action.tolist() == [0.0]
    assert strict.counts["rejected"] == 1 and clip.counts["clipped"] == 1


def test_semantic_env_validates_against_its_schema():
    b = make_binding("tickcall/Arena-v0")
    assert b.semantic
    ok = b.call_to_action(Call("move", {"direction": "N", "speed": "run"}))
    assert ok.status == "ok" and ok.action["tool"] == 1
    clipped = b.call_to_action(Call("dash", {"direction": "N", "distance": 9}))
    assert clipped.status == "clipped" and float(clipped.action["distance"][0]) == 3.0
    for bad in [Call("move", {"direction": "N"}), Call("aim", {"direction": "UP"}),
                Call("fire", {"power": 3}), Call("dash", {"direction": "N", "distance": "far"})]:
        res = b.call_to_action(bad)
        assert res.status == "rejected", bad
        assert b.env.action_space.contains(res.action)
    strict = make_binding("tickcall/Arena-v0", on_invalid="reject")
    assert strict.call_to_action(Call("dash", {"direction": "N", "distance": 9})).status == "rejected"
    assert b.counts == {"calls": 6, "ok": 1, "clipped": 1, "rejected": 4}


class _Grid(gym.Env):
    """A minimal env of our own (not registered): MultiDiscrete actions, Dict observations."""

    action_space = gym.spaces.MultiDiscrete([3, 3])
    observation_space = gym.spaces.Dict({"pos": gym.spaces.Box(-5, 5, shape=(2,)),
                                         "n": gym.spaces.Discrete(10)})

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return {"pos": np.zeros(2, dtype=np.float32), "n": 0}, {}

    def step(self, action):
        return {"pos": np.asarray(action, dtype=np.float32) - 1, "n": 1}, 0.0, False, False, {}


def test_generic_env_instance_without_catalog_entry():
    b = make_binding(_Grid())
    assert b.env_id is None and b.tools[0]["function"]["name"] == "act"
    assert b.specs[0].param_names == ("a0", "a1")
    assert b.obs_text(b.env.reset(seed=0)[0]) == "pos0=+0.000 pos1=+0.000 n=0"
    res = b.call_to_action(Call("act", {"a0": 2, "a1": 0}))
    assert res.status == "ok" and res.action.tolist() == [2, 0]
    assert b.default_action().tolist() == [0, 0]


def test_random_calls_are_legal_and_seeded():
    for env_id in EXPERTS:
        b = make_binding(env_id)
        calls = [b.random_call(np.random.default_rng(7)) for _ in range(2)]
        assert calls[0] == calls[1]
        for c in [b.random_call(s) for s in range(20)]:
            spec = b.spec_map[c.name]
            assert validate_arguments(spec, c.arguments) is None
            assert b.call_to_action(c).status == "ok"


def test_make_env_gives_a_fresh_equal_env():
    b = make_binding("tickcall/Arena-v0", max_steps=11)
    e = b.make_env()
    assert e is not b.env and e.unwrapped.max_steps == 11


def test_obs_formatter_fixed_precision_sign_and_names():
    assert fmt_number(0.0123) == "+0.012" and fmt_number(-0.0001) == "+0.000"
    assert fmt_number(-3.4, 1) == "-3.4" and fmt_number(2, 0, signed=False) == "2"
    f = ObsFormatter(names=["x", "v"], precision=2, units={"x": "m"})
    assert f(np.array([0.5, -1.0], dtype=np.float32)) == "x=+0.50m v=-1.00"
    assert ObsFormatter()({"pos": np.array([1.0, 2.0]), "n": np.int64(3)}) == "pos0=+1.000 pos1=+2.000 n=3"
    with pytest.raises(ValueError, match="names"):
        ObsFormatter(names=["x"])(np.zeros(2))


# ------------------------------------------------------------------------------- experts

def _lockstep_returns(env_id: str, policy_kind: str, seeds, hold: int = 1):
    b = make_binding(env_id)
    pol = get_expert(env_id, b) if policy_kind == "expert" else RandomPolicy(b, seed=0)
    out = []
    for s in seeds:
        obs, _ = b.env.reset(seed=s)
        total, done = 0.0, False
        while not done:
            call = pol.act(obs)
            res = b.call_to_action(call)
            assert res.status == "ok", (call, res.reason)  # expert calls are always legal
            for _ in range(hold):
                obs, r, term, trunc, _ = b.env.step(res.action)
                total += r
                done = term or trunc
                if done:
                    break
        out.append(total)
    return out


@pytest.mark.parametrize("env_id, seeds, hold, expert_min_mean, random_max_mean", [
    ("CartPole-v1", range(3), 3, 500.0, 50.0),          # 500 = the maximum, also at ~16 Hz
    ("MountainCar-v0", range(5), 2, -118.0, -199.0),    # -107.6 over seeds 300-399; threshold -110
    ("MountainCarContinuous-v0", range(3), 1, 85.0, 0.0),
    ("Pendulum-v1", range(5), 1, -250.0, -800.0),
    ("LunarLander-v3", range(5), 1, 200.0, -50.0),
    ("tickcall/Arena-v0", range(3), 1, 60.0, 5.0),
])
def test_experts_reach_known_scores_and_beat_random(env_id, seeds, hold, expert_min_mean, random_max_mean):
    e = np.mean(_lockstep_returns(env_id, "expert", seeds, hold))
    r = np.mean(_lockstep_returns(env_id, "random", seeds[:2], hold))
    assert e >= expert_min_mean, e
    assert r <= random_max_mean, r


def test_unknown_expert_is_a_clear_error():
    with pytest.raises(KeyError, match="no expert"):
        get_expert("Acrobot-v1")


def test_expert_calls_use_the_bindings_tools():
    for env_id in EXPERTS:
        b = make_binding(env_id)
        obs, _ = b.env.reset(seed=0)
        call = get_expert(env_id, b).act(obs)
        specs = {s.name: s for s in normalize_tools(b.tools)}
        assert validate_arguments(specs[call.name], call.arguments) is None


@pytest.mark.parametrize("env_id", ["Acrobot-v1", "MountainCar-v0", "LunarLanderContinuous-v3",
                                    "BipedalWalker-v3", "Blackjack-v1", "FrozenLake-v1", "Taxi-v4"])
def test_any_registered_env_gets_tools_text_and_legal_random_calls(env_id):
    b = make_binding(env_id)
    obs, _ = b.env.reset(seed=0)
    assert 0 < len(b.obs_text(obs)) < 300
    for i in range(3):
        res = b.call_to_action(b.random_call(i))
        assert res.status == "ok" and b.env.action_space.contains(res.action)
        b.env.step(res.action)
    b.env.close()


def test_image_observations_need_a_formatter():
    b = make_binding("CarRacing-v3")
    obs, _ = b.env.reset(seed=0)
    with pytest.raises(ValueError, match="obs_formatter"):
        b.obs_text(obs)
    b2 = make_binding("CarRacing-v3", obs_formatter=lambda o: f"mean={o.mean():.1f}")
    assert b2.obs_text(obs).startswith("mean=")
    assert b2.specs[0].param_names == ("a0", "a1", "a2")


def test_lunar_lander_scores_pick_exactly_the_heuristics_choice():
    """The soft targets' argmax is gymnasium's heuristic decision on its own rollouts (with 30% random
    actions, so tilted and falling states are in too): a student taught the scores learns its choice."""
    from gymnasium.envs.box2d.lunar_lander import heuristic
    from tickcall.envs.experts import lunar_lander_logits

    b = make_binding("LunarLander-v3")
    env = b.env
    rng = np.random.default_rng(0)
    values = ["none", "left", "main", "right"]
    seen = set()
    for ep in range(30):
        obs, _ = env.reset(seed=ep)
        done = False
        while not done:
            # raw, and as the text shows it (2 decimals: many corrections land exactly on a threshold)
            shown = np.asarray([float(t.split("=")[1]) for t in b.obs_text(obs).split()], dtype=np.float32)
            for o in (obs, shown):
                scores = lunar_lander_logits(o)["fire"]
                assert values.index(max(scores, key=scores.get)) == int(heuristic(env.unwrapped, o)), (o, scores)
            want = int(heuristic(env.unwrapped, obs))
            seen.add(want)
            obs, _, term, trunc, _ = env.step(want if rng.random() > 0.3 else int(rng.integers(4)))
            done = term or trunc
    assert seen == {0, 1, 2, 3}
