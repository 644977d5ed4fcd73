"""RealTimeEnv (wall clock and lock-step), ModelPolicy, actuators and ``tickcall eval``.

Real-time tests never assert on durations: they wait for conditions (with generous timeouts) and check
what happened, in order. The NoOpEngine stands in for a model where only the plumbing is tested
(no model can be trained inside a unit test)."""

from __future__ import annotations

import json
import time

import gymnasium as gym
import numpy as np
import pytest
from helpers import ScriptedEngine
from tickcall.envs.actuators import CallRejected, EnvStepActuator, RealTimeActuator, actuator_for
from tickcall.envs.binding import make_binding
from tickcall.envs.evaluate import evaluate
from tickcall.envs.experts import ArenaExpert
from tickcall.envs.policies import ModelPolicy, turn_for
from tickcall.envs.realtime import RealTimeEnv
from tickcall.models.calls import Call
from tickcall.models.stand_ins import NoOpEngine

from tickcall.cli import main as cli_main


class Recorder(gym.Wrapper):
    """Records every action the env is stepped with (to check what the physics thread applied)."""

    def __init__(self, env):
        super().__init__(env)
        self.actions: list[int] = []

    def step(self, action):
        self.actions.append(int(action["tool"]) * 10 + int(action["direction"]))
        return self.env.step(action)


def _wait_until(cond, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached (machine overloaded?)"
        time.sleep(0.005)


def test_world_advances_on_the_wall_clock_without_any_action():
    rt = RealTimeEnv(make_binding("tickcall/Arena-v0"), physics_hz=200, seed=0)
    first = rt.latest()
    with rt:
        _wait_until(lambda: rt.latest().total_steps >= 10)
    snap = rt.latest()
    assert rt.stats["applied"] == 0 and snap.total_steps >= 10
    assert snap.t > first.t
    assert not np.array_equal(snap.obs, first.obs)  # the target drifted on its own


def test_action_persists_until_replaced_and_order_is_kept():
    b = make_binding(Recorder(gym.make("tickcall/Arena-v0", max_steps=10_000)))
    rt = RealTimeEnv(b, physics_hz=200, seed=0)
    with rt:
        _wait_until(lambda: rt.stats["physics_steps"] >= 2)
        rt.apply(Call("move", {"direction": "E", "speed": "walk"}))
        n = rt.stats["physics_steps"]
        _wait_until(lambda: rt.stats["physics_steps"] >= n + 5)
        rt.apply(Call("aim", {"direction": "S"}))
        n = rt.stats["physics_steps"]
        _wait_until(lambda: rt.stats["physics_steps"] >= n + 5)
    seq = b.env.actions
    move, aim, wait = 10 + 2, 20 + 4, 0
    # wait..., move... (at least 4 in a row), aim... : nothing else, in this order
    kinds = [seq[0]] + [a for prev, a in zip(seq, seq[1:], strict=False) if a != prev]
    assert kinds == [wait, move, aim], kinds
    assert seq.count(move) >= 4 and seq.count(aim) >= 4
    assert rt.stats["applied"] == 2 and rt.stats["superseded"] == 0


def test_episode_accounting_with_auto_reset_and_seeds():
    b = make_binding("tickcall/Arena-v0", max_steps=5)
    rt = RealTimeEnv(b, physics_hz=500, seed=7, max_episodes=3)
    with rt:
        assert rt.wait_episodes(3, timeout=30)
    assert rt.done
    assert [e.length for e in rt.episodes] == [5, 5, 5]
    assert [e.seed for e in rt.episodes] == [7, 8, 9]
    assert all(e.truncated and not e.terminated for e in rt.episodes)
    assert rt.stats["physics_steps"] == 15  # stops stepping after the last episode
    assert rt.summary()["episodes"] == 3


def test_superseded_and_rejected_calls_are_counted():
    rt = RealTimeEnv(make_binding("tickcall/Arena-v0"), physics_hz=20, seed=0)  # not started
    rt.apply(Call("aim", {"direction": "N"}))
    rt.apply(Call("aim", {"direction": "E"}))  # replaces the first before any physics step
    res = rt.apply(Call("aim", {"direction": "UP"}))
    assert not res.ok and "not one of" in res.reason
    assert rt.current_action()["direction"] == 2  # on_reject="hold": E stays
    assert rt.stats == {**rt.stats, "applied": 3, "superseded": 1, "rejected": 1}


def _lockstep_run(seed: int, hold: int):
    b = make_binding("tickcall/Arena-v0", max_steps=60)
    rt = RealTimeEnv(b, mode="lockstep", seed=seed, max_episodes=2, hold_steps=hold)
    pol = ArenaExpert()
    while not rt.done:
        rt.apply(pol.act(rt.latest().obs))
    return [e.episode_return for e in rt.episodes], rt


def test_lockstep_is_deterministic_and_holds_actions():
    a, rt = _lockstep_run(3, 1)
    b, _ = _lockstep_run(3, 1)
    assert a == b and len(a) == 2
    _, rt3 = _lockstep_run(3, 3)
    assert rt3.stats["physics_steps"] == 120
    assert rt3.stats["applied"] == 40  # 60 steps / 3 per decision, per episode
    assert rt.latest().t == pytest.approx(rt.stats["physics_steps"] / rt.physics_hz)


def test_physics_rate_defaults_to_the_env_timestep():
    assert RealTimeEnv(make_binding("CartPole-v1")).physics_hz == pytest.approx(50.0)
    assert RealTimeEnv(make_binding("tickcall/Arena-v0")).physics_hz == pytest.approx(20.0)
    with pytest.raises(ValueError):
        RealTimeEnv(make_binding("CartPole-v1"), mode="fast")


# ------------------------------------------------------------------------------- ModelPolicy

def test_model_policy_registers_tools_and_builds_turns():
    b = make_binding("tickcall/Arena-v0")
    engine = NoOpEngine()  # answers with the first tool, no arguments: "wait()"
    pol = ModelPolicy(engine, b, history_len=2)
    assert [t.name for t in pol.registration.tools] == ["wait", "move", "aim", "fire", "dash"]
    obs, _ = b.env.reset(seed=0)
    assert pol.act(obs) == Call("wait", {})
    pol.act(obs)
    pol.act(obs)
    turn = pol.turn(obs)
    assert turn.query == b.obs_text(obs) and turn.history == ["wait()@f2 done", "wait()@f3 done"]
    assert pol.stats == {"decisions": 3, "legal": 3, "illegal": 0}
    pol.reset()
    assert pol.turn(obs).history == []


def test_history_is_rendered_in_schema_order():
    b = make_binding("tickcall/Arena-v0")
    obs, _ = b.env.reset(seed=0)
    t = turn_for(b, obs, [Call("dash", {"distance": 2, "direction": "N"}), Call("fire", {})], history_len=5)
    assert t.history == ['dash(direction="N", distance=2)@f1 done', "fire()@f2 done"]  # models.prompt_text
    assert turn_for(b, obs, [Call("fire", {})], history_len=0).history == []


def test_illegal_model_calls_are_counted_and_fall_back():
    b = make_binding("CartPole-v1")
    engine = ScriptedEngine(ok_args={}, illegal_args={"direction": "sideways"})
    engine.kind = "illegal"  # push(direction="sideways"): not one of the enum, so illegal
    pol = ModelPolicy(engine, b)
    obs, _ = b.env.reset(seed=0)
    assert pol.act(obs) is None
    assert pol.stats["illegal"] == 1 and "direction" in next(iter(pol.reasons))
    res = b.call_to_action(None)
    assert res.status == "rejected" and b.env.action_space.contains(res.action)


# ------------------------------------------------------------------------------- actuators

def test_realtime_actuator_applies_and_raises_on_rejection():
    rt = RealTimeEnv(make_binding("tickcall/Arena-v0"), mode="lockstep", seed=0)
    act = actuator_for(rt)
    assert isinstance(act, RealTimeActuator)
    assert act(Call("aim", {"direction": "W"})).ok
    assert rt.latest().obs[4] == 6  # aim W
    with pytest.raises(CallRejected, match="unknown tool"):
        act(Call("teleport", {}))
    quiet = RealTimeActuator(rt, raise_on_reject=False)
    assert quiet(Call("teleport", {})).status == "rejected"


def test_env_step_actuator_steps_and_resets_after_episode_end():
    b = make_binding("tickcall/Arena-v0", max_steps=3)
    act = actuator_for(b, seed=1)
    assert isinstance(act, EnvStepActuator)
    outs = [act(Call("wait", {})) for _ in range(4)]
    assert [o.truncated for o in outs] == [False, False, True, False]
    assert outs[3].info["steps"] == 1  # a new episode started
    with pytest.raises(CallRejected):
        act(Call("move", {"direction": "N"}))
    with pytest.raises(TypeError):
        actuator_for(object())


# ------------------------------------------------------------------------------- evaluation / CLI

def test_tickcall_eval_lockstep_side_by_side(tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = cli_main(["eval", "--env", "tickcall/Arena-v0", "--policy", "expert,random", "--episodes", "2",
                   "--max-steps", "100", "--seed", "0", "--json", str(out)])
    assert rc == 0
    table = capsys.readouterr().out
    assert "expert" in table and "random" in table
    runs = json.loads(out.read_text())["runs"]
    exp, rnd = runs
    for r in runs:
        assert {"mean_return", "std_return", "episodes", "legal_rate", "returns"} <= set(r)
        assert r["episodes"] == 2 and r["mode"] == "lockstep" and r["legal_rate"] == 1.0
    assert exp["mean_return"] > rnd["mean_return"] + 10


def test_tickcall_eval_realtime_counts_ticks(tmp_path):
    out = tmp_path / "rt.json"
    rc = cli_main(["eval", "--env", "tickcall/Arena-v0", "--policy", "expert", "--episodes", "1",
                   "--max-steps", "20", "--realtime", "--rate", "16", "--json", str(out)])
    rep = json.loads(out.read_text())
    assert rc == 0 and rep["mode"] == "realtime" and rep["complete"]
    assert rep["lengths"] == [20] and rep["ticks"]["physics_steps"] == 20
    assert rep["ticks"]["ticks"] >= 1 and rep["decisions"] == rep["ticks"]["ticks"]


def test_eval_model_policy_reports_legal_rate():
    arena = evaluate("tickcall/Arena-v0", "model", engine=NoOpEngine(), episodes=1,
                     env_kwargs={"max_steps": 10})
    assert arena.legal_rate == 1.0 and arena.decisions == 10
    cart = evaluate("CartPole-v1", "model", engine=NoOpEngine(), episodes=1)  # push(direction="left")
    assert cart.legal_rate == 1.0 and cart.rejected == 0 and cart.decisions > 0


def test_eval_rejects_unknown_policy(capsys):
    # bad input is one stderr line and exit 2 (tickcall.commands.errors.CommandError, caught in cli.main)
    assert cli_main(["eval", "--env", "CartPole-v1", "--policy", "genius"]) == 2
    assert "unknown policy" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_with_a_real_transformers_engine(tiny_engine):
    """The whole model path (engine registration, heads, strict assembly, binding) on a tiny random
    model: its calls are mostly illegal, and every decision is accounted for either way."""
    rep = evaluate("tickcall/Arena-v0", "model", engine=tiny_engine, episodes=1, env_kwargs={"max_steps": 3})
    assert rep.decisions == 3 and rep.legal + rep.rejected == 3
    assert rep.legal_rate == rep.legal / 3
    assert set(rep.decision_ms) >= {"p50", "p90"}
    if rep.legal < 3:
        assert rep.illegal_reasons


def test_model_policy_from_path_reads_tickcall_json(tmp_path):
    (tmp_path / "tickcall.json").write_text(json.dumps({"history_len": 3, "template": "v1"}))
    pol = ModelPolicy.from_path(tmp_path, make_binding("tickcall/Arena-v0"), backend="noop")
    assert pol.history_len == 3 and pol.registration.template.name == "v1"
    assert ModelPolicy.from_path(tmp_path, make_binding("tickcall/Arena-v0"), backend="noop",
                                 history_len=1).history_len == 1
