"""Coverage rows (models/training/coverage.py) and text labels (sources.text_labels): sampled states
render exactly like the real env's, every label is the real expert's decision, every case of the
Arena expert is covered, and CartPole labels are a function of the text. Real envs and experts."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

ARENA = "tickcall/Arena-v0"


def test_arena_samples_are_real_observations_labelled_by_the_expert():
    from tickcall.envs.binding import make_binding
    from tickcall.envs.experts import get_expert
    from tickcall.envs.teaching import get_source
    from tickcall.models.training.coverage import arena_states, coverage_records

    b = make_binding(ARENA)
    space = b.env.observation_space
    states = arena_states(np.random.default_rng(3), 3000)
    assert all(space.contains(o) for o in states)
    recs = coverage_records(get_source(ARENA), 3000, 3)
    expert = get_expert(ARENA, b)
    pattern = re.compile(r"^tgt=(N|NE|E|SE|S|SW|W|NW) d=\d+\.\d aim=(N|NE|E|SE|S|SW|W|NW) cd=\d dcd=\d+ tl=\d\.\d$")
    for o, r in zip(states, recs, strict=True):  # same seed -> same states
        assert r.query == b.obs_text(o)
        assert pattern.match(r.query), r.query
        assert r.call == expert.act(o)
        assert r.history == []


def test_arena_samples_cover_every_case_of_the_expert():
    from tickcall.envs.teaching import get_source
    from tickcall.models.training.coverage import coverage_records

    recs = coverage_records(get_source(ARENA), 6000, 0)
    kinds = Counter()
    for r in recs:
        a = r.call.arguments
        kinds[(r.call.name, a.get("direction"), a.get("distance"))] += 1
    dirs = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")
    needed = ([("aim", d, None) for d in dirs] + [("move", d, None) for d in dirs]
              + [("dash", d, k) for d in dirs for k in (1, 2, 3)] + [("fire", None, None), ("wait", None, None)])
    missing = [k for k in needed if kinds[k] == 0]
    assert not missing, missing
    # aim is not allowed to swamp the rest (rollouts: ~1/3 aim; uniform aim/bearing pairs: 7/8)
    assert 0.3 < sum(v for k, v in kinds.items() if k[0] == "aim") / len(recs) < 0.6
    # every distance step across the thresholds 4.0 / 5.0 / 6.0 is seen many times
    shown = Counter(re.search(r" d=(\d+\.\d) ", r.query).group(1) for r in recs)
    for tenth in range(30, 76):
        assert shown[f"{tenth / 10:.1f}"] >= 20, tenth


def test_cartpole_text_labels_follow_the_text_not_the_raw_floats():
    from tickcall.envs.binding import make_binding
    from tickcall.envs.experts import cartpole_action
    from tickcall.envs.teaching import get_source, text_values
    from tickcall.models.training.coverage import cartpole_states

    b = make_binding("CartPole-v1")
    raw = get_source("CartPole-v1").instance()
    shown = get_source("CartPole-v1", text_labels=True).instance()
    # beside the boundary: raw score slightly positive (right), the 3-decimal text slightly negative
    obs = np.array([0.0, 0.0, 0.0004, -0.0019], dtype=np.float32)
    assert b.obs_text(obs) == "x=+0.000 v=+0.000 a=+0.000 w=-0.002"
    assert raw.teacher(obs).arguments["direction"] == "right"
    assert shown.teacher(obs).arguments["direction"] == "left"
    states = cartpole_states(np.random.default_rng(1), 2000)
    assert all(b.env.observation_space.contains(o) for o in states)
    for o in states:
        values = np.asarray(text_values(b.obs_text(o)), dtype=np.float32)
        want = "right" if cartpole_action(values) else "left"
        assert shown.teacher(o).arguments["direction"] == want
    # half of the samples lie beside the boundary, where a student errs
    near = sum(abs(0.05 * x + 0.3 * v + 3 * a + 0.6 * w) < 0.1 for x, v, a, w in states)
    assert near / len(states) > 0.4
    for inst in (raw, shown):
        inst.env.close()


def test_builtin_cartpole_source_supports_text_labels():
    from tickcall.envs.teaching import get_source

    inst = get_source("CartPole-v1", prefer_builtin=True, text_labels=True).instance()
    obs = np.array([0.0, 0.0, 0.0004, -0.0019])
    assert inst.obs_text(obs) == "x=+0.000 v=+0.000 a=+0.000 w=-0.002"
    assert inst.teacher(obs).arguments["direction"] == "left"
    inst.env.close()


def test_unknown_env_has_no_sampler_and_configs_take_the_new_keys():
    from tickcall.envs.teaching import get_source
    from tickcall.models.training.coverage import coverage_records
    from tickcall.models.training.pipeline import TrainConfig

    with pytest.raises(KeyError, match="no state sampler"):
        coverage_records(get_source("Pendulum-v1"), 10, 0)
    cfg = TrainConfig.from_dict({"data": {"coverage": 10, "heldout_coverage": 5, "text_labels": True},
                                 "eval_every": 50})
    assert cfg.data.coverage == 10 and cfg.data.text_labels and cfg.eval_every == 50
    with pytest.raises(ValueError, match="unknown keys in data"):
        TrainConfig.from_dict({"data": {"coverge": 10}})


def test_mountaincar_samples_cover_the_start_and_both_sides_of_the_boundary():
    from tickcall.envs.binding import make_binding
    from tickcall.envs.teaching import get_source
    from tickcall.models.training.coverage import coverage_records, mountaincar_states

    env_id = "MountainCar-v0"
    space = make_binding(env_id).env.observation_space
    states = mountaincar_states(np.random.default_rng(5), 1500)
    assert all(space.contains(o) for o in states)
    recs = coverage_records(get_source(env_id, text_labels=True), 1500, 5)
    at_rest = [(o, r) for o, r in zip(states, recs, strict=True) if o[1] == 0.0]
    assert len(at_rest) > 300
    # the start's first push: right from -0.5 and left of it, left from right of it (as the text shows x)
    shown = [(float(r.query.split()[0][2:]), r.call.arguments["direction"]) for _, r in at_rest]
    sides = {(x <= -0.5, d) for x, d in shown}
    assert sides == {(True, "right"), (False, "left")}
    assert Counter(r.call.arguments["direction"] for r in recs).keys() == {"left", "right"}
