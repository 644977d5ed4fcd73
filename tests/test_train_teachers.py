"""Teachers of every kind and the one dataset format (issue 15): ``tickcall record`` -> ``train --data``,
``module:function`` and policy objects, ``sb3:FILE.zip``, PPO trained on the spot for an env without an
expert (Acrobot-v1: the CI-sized end to end), and a run's ``ticks.jsonl`` as data. Real envs, real
SB3 training and real students; tiny budgets, no timing thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("stable_baselines3")

ROOT = Path(__file__).resolve().parents[1]
ME = "tests.test_train_teachers"


# ---- teachers for module:function (importable by name) -------------------------------------------
def cartpole_action(obs):
    """An action (numpy int, as many policies return one)."""
    return np.int64(1 if obs[2] + 0.3 * obs[3] > 0 else 0)


def cartpole_call(obs, env):
    """A call dict, reading the env too (the second argument)."""
    assert env.unwrapped.__class__.__name__ == "CartPoleEnv"
    return {"name": "push", "arguments": {"direction": "right" if obs[2] + 0.3 * obs[3] > 0 else "left"}}


class _Predictor:
    def predict(self, obs, deterministic=True):
        return np.array(1 if obs[2] + 0.3 * obs[3] > 0 else 0), None


cartpole_policy = _Predictor()


def _tiny_cfg(tmp: Path, **over):
    from tickcall.models.training.pipeline import TrainConfig

    cfg = TrainConfig.load(ROOT / "configs" / "train-ci.yaml")
    cfg.out, cfg.work_dir = str(tmp / "model"), str(tmp / "work")
    cfg.data.episodes, cfg.data.heldout_episodes, cfg.data.soft_tau = 12, 2, 0.0
    cfg.train.steps, cfg.eval_episodes = 200, 3
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope="module")
def acrobot_ppo(tmp_path_factory):
    """A PPO teacher for Acrobot-v1 (no scripted expert), 20000 decisions: a few seconds."""
    from tickcall.envs.teachers import TeacherBudget, train_sb3

    work = tmp_path_factory.mktemp("ppo")
    teacher = train_sb3("ppo", "Acrobot-v1", TeacherBudget(steps=20_000, eval_episodes=3), work)
    return work, teacher


# ---- the format ----------------------------------------------------------------------------------
def test_dataset_round_trip_and_its_checks(tmp_path):
    from tickcall.envs.binding import make_binding
    from tickcall.models.calls import Call
    from tickcall.models.format import get_template
    from tickcall.models.training.collect import Record
    from tickcall.models.training.dataset import EnvInfo, make_header, read_dataset, write_dataset

    b = make_binding("CartPole-v1")
    recs = [
        Record(
            "CartPole-v1",
            "x=+0.000 v=+0.000 a=+0.010 w=+0.000",
            ["h"],
            Call("push", {"direction": "right"}),
            {"direction": {"left": 0.0, "right": 1.5}},
        ),
        Record("CartPole-v1", "x=+0.000 v=+0.000 a=-0.010 w=+0.000", [], Call("push", {"direction": "left"})),
    ]
    path = tmp_path / "d.jsonl"
    assert write_dataset(path, make_header({"CartPole-v1": EnvInfo(b.tools, 50.0)}, "expert"), recs) == 2
    ds = read_dataset(path)
    assert ds.records == recs and ds.env_ids == ["CartPole-v1"]
    # the tools read back render the same prompt prefix as the binding's
    t = get_template("compact")
    assert t.prefix(ds.tools("CartPole-v1"), None) == t.prefix(b.specs, None)
    header, *rows = path.read_text().splitlines()
    assert json.loads(header)["version"] == 1 and "logits" not in json.loads(rows[1])

    bad = tmp_path / "bad.jsonl"
    bad.write_text(header + "\n" + rows[0].replace('"push"', '"jump"') + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: call 'jump' is not a tool of CartPole-v1"):
        read_dataset(bad)
    bad.write_text(header.replace('"version":1', '"version":99') + "\n")
    with pytest.raises(ValueError, match="newer than this reader"):
        read_dataset(bad)
    with pytest.raises(ValueError, match="not in the header"):
        write_dataset(bad, make_header({"Other-v0": EnvInfo(b.tools)}), recs)


# ---- teachers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", ["cartpole_action", "cartpole_call", "cartpole_policy"])
def test_module_function_teachers_label_like_the_function(fn):
    from tickcall.envs.teaching import get_source
    from tickcall.models.calls import Call

    inst = get_source("CartPole-v1", teacher=f"{ME}:{fn}").instance()
    obs, _ = inst.env.reset(seed=3)
    for _ in range(30):
        want = "right" if obs[2] + 0.3 * obs[3] > 0 else "left"
        assert inst.teacher(obs) == Call("push", {"direction": want})
        obs, *_ = inst.env.step(int(want == "right"))


def test_unknown_teachers_are_refused_with_one_clear_line():
    from tickcall.envs.teachers import load_teacher

    with pytest.raises(ValueError, match="no scripted expert for 'Acrobot-v1'.*--teacher ppo"):
        load_teacher("expert", "Acrobot-v1")
    with pytest.raises(ValueError, match="cannot import"):
        load_teacher("no_such_module_x:f", "CartPole-v1")
    with pytest.raises(ValueError, match="unknown teacher"):
        load_teacher("bogus", "CartPole-v1")
    with pytest.raises(ValueError, match="dqn cannot train on Pendulum-v1"):
        load_teacher("dqn", "Pendulum-v1")


def test_sb3_zip_teacher_acts_as_the_model_and_scores_its_choice(acrobot_ppo):
    from stable_baselines3 import PPO
    from tickcall.envs.binding import make_binding
    from tickcall.envs.teachers import load_teacher

    work, trained = acrobot_ppo
    assert trained.spec.startswith("sb3:") and trained.info["train_s"] > 0 and "mean_return" in trained.info
    teacher = load_teacher(trained.spec, "Acrobot-v1")
    model = PPO.load(trained.spec[4:], device="cpu")
    b = make_binding("Acrobot-v1")
    label = teacher.bind(b)
    obs, _ = b.env.reset(seed=0)
    for _ in range(40):
        action = int(model.predict(obs, deterministic=True)[0])
        call = label.act(obs)
        assert call == b.action_to_call(action)
        scores = label.logits(obs)["direction"]
        assert max(scores, key=scores.get) == call.arguments["direction"]
        obs, *_ = b.env.step(action)


# ---- end to end ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_with_a_ppo_teacher_beats_random_on_an_env_without_expert(acrobot_ppo, tmp_path):
    """The CI-sized ``tickcall train --env Acrobot-v1 --teacher ppo`` (the teacher zip of the fixture
    is reused from the work dir, as a resumed run does)."""
    from tickcall.training import make_pipeline

    work, _ = acrobot_ppo
    cfg = _tiny_cfg(tmp_path, envs=["Acrobot-v1"])
    cfg.work_dir = str(work)
    cfg.teacher.kind, cfg.teacher.steps = "ppo", 20_000
    # configs/train-acrobot-ppo.yaml's noise (epsilon 0.1); 200 steps are too few for this env
    cfg.data.epsilon, cfg.train.steps = 0.1, 300
    scores = make_pipeline(cfg, log=lambda m: None, progress=False).run()
    s = scores["envs"]["Acrobot-v1"]
    lock = s["lockstep"]
    student, rnd = lock["student"]["mean_return"], lock["random"]["mean_return"]
    assert rnd < -450  # random torques almost never swing Acrobot up in 500 steps
    assert student > rnd + 150, lock
    assert s["teacher"]["kind"] == "ppo" and s["teacher"]["train_s"] > 0
    assert "(Stable-Baselines3, trained by this run)" in (Path(cfg.out) / "README.md").read_text()


@pytest.mark.slow
def test_record_then_train_data_from_the_cli(acrobot_ppo, tmp_path):
    from tickcall.models.training.dataset import read_dataset

    from tickcall.cli import main

    _, teacher = acrobot_ppo
    data = tmp_path / "acro.jsonl"
    assert (
        main(
            [
                "record",
                "--env",
                "Acrobot-v1",
                "--teacher",
                teacher.spec,
                "--episodes",
                "12",
                "--epsilon",
                "0.1",
                "--out",
                str(data),
            ]
        )
        == 0
    )
    ds = read_dataset(data)
    assert ds.header.teacher == teacher.spec and len(ds.records) > 500
    assert all(r.logits for r in ds.records[:20])  # PPO's action logits travel as teacher scores
    cfg = _tiny_cfg(tmp_path)
    (tmp_path / "ci.yaml").write_text(json.dumps(cfg.to_dict()))
    assert (
        main(
            [
                "train",
                "--config",
                str(tmp_path / "ci.yaml"),
                "--data",
                str(data),
                "--json",
                str(tmp_path / "s.json"),
                "--no-progress",
            ]
        )
        == 0
    )
    s = json.loads((tmp_path / "s.json").read_text())["envs"]["Acrobot-v1"]
    assert s["teacher"] == {"dataset": teacher.spec}  # no teacher at train time: labels from the file
    assert s["lockstep"]["teacher"] is None
    assert s["lockstep"]["student"]["mean_return"] > s["lockstep"]["random"]["mean_return"] + 150


@pytest.mark.slow
def test_ticks_jsonl_of_a_run_is_a_dataset(tmp_path):
    """A run report whose ticks carry their turn trains a student that agrees with the logged model
    (here the CartPole expert stands in for the bigger model)."""
    from tickcall.control_loop.records import TickRecord
    from tickcall.envs.binding import make_binding
    from tickcall.envs.experts import get_expert
    from tickcall.envs.recorded import ticks_dataset

    from tickcall.training import make_pipeline

    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps({"env": "CartPole-v1", "model": "big", "backend": "hf"}))
    b = make_binding("CartPole-v1")
    expert = get_expert("CartPole-v1", b)
    rng = np.random.default_rng(0)
    ticks, k = [], 0
    for ep in range(16):
        obs, _ = b.env.reset(seed=ep)
        for _ in range(100):
            call = expert.act(obs)
            ticks.append(
                TickRecord(
                    k,
                    62.5 * k,
                    call=call.to_dict(),
                    outcome="ok",
                    episode=ep,
                    turn={"query": b.obs_text(obs), "history": []},
                )
            )
            k += 1
            act = int(rng.integers(2)) if rng.random() < 0.2 else b.to_action(call)
            done = False
            for _ in range(3):
                obs, _, term, trunc, _ = b.env.step(act)
                done = term or trunc
                if done:
                    break
            if done:
                break
    ticks.append(TickRecord(k, 0.0, call={"name": "push", "arguments": {"direction": "left"}}))  # no turn
    ticks.append(TickRecord(k + 1, 0.0, outcome="fallback", turn={"query": "x=0", "history": []}))  # no call
    (run / "ticks.jsonl").write_text("".join(json.dumps(t.to_dict()) + "\n" for t in ticks))

    ds = ticks_dataset(run)
    assert len(ds.records) == len(ticks) - 2 and ds.header.meta["ticks_without_turn"] == 1
    cfg = _tiny_cfg(tmp_path, data_files=[str(run)])
    cfg.teacher.kind = "none"
    scores = make_pipeline(cfg, log=lambda m: None, progress=False).run()
    s = scores["envs"]["CartPole-v1"]
    assert s["heldout"]["n"] > 40 and s["heldout"]["exact_call"] > 0.6  # the last 10% of the rows
    assert s["lockstep"]["student"]["mean_return"] > s["lockstep"]["random"]["mean_return"] + 30


def test_a_run_without_turns_is_refused_by_name(tmp_path):
    from tickcall.envs.recorded import ticks_dataset

    (tmp_path / "ticks.jsonl").write_text(
        json.dumps({"tick": 0, "call": {"name": "push", "arguments": {}}}) + "\n"
    )
    with pytest.raises(ValueError, match="must record each tick's turn"):
        ticks_dataset(tmp_path / "ticks.jsonl", env_id="CartPole-v1")


@pytest.mark.slow
def test_a_dataset_of_an_env_that_cannot_be_made_here_trains_on_its_rows(tmp_path):
    """Recorded play of an engine (no gymnasium env here): trained and scored on held-out rows only."""
    from helpers import kart_dataset

    from tickcall.training import make_pipeline

    data = kart_dataset(tmp_path / "kart.jsonl", 400)
    cfg = _tiny_cfg(tmp_path, envs=["engine:kart"], data_files=[str(data)])
    cfg.teacher.kind, cfg.train.steps = "none", 60
    logs: list[str] = []
    scores = make_pipeline(cfg, log=logs.append, progress=False).run()
    s = scores["envs"]["engine:kart"]
    assert s["source"] == "dataset" and "lockstep" not in s and s["heldout"]["n"] == 40
    assert s["heldout"]["legal_rate"] > 0.9
    assert any("no env to roll out here" in m for m in logs)


@pytest.mark.slow
def test_data_and_a_teacher_together_the_rows_join_round_0_and_dagger_relabels(tmp_path):
    from tickcall.envs.recording import record_dataset

    from tickcall.training import make_pipeline

    data = tmp_path / "cp.jsonl"
    info = record_dataset("CartPole-v1", f"{ME}:cartpole_action", 3, data, seed=50, log=None)
    cfg = _tiny_cfg(tmp_path, data_files=[str(data)])
    cfg.teacher.kind = "expert"
    cfg.train.steps, cfg.dagger.rounds, cfg.dagger.episodes, cfg.dagger.steps = 30, 1, 4, 10
    logs: list[str] = []
    scores = make_pipeline(cfg, log=logs.append, progress=False).run()
    s = scores["envs"]["CartPole-v1"]
    assert s["teacher"]["dataset"] == f"{ME}:cartpole_action" and s["teacher"]["kind"] == "expert"
    dagger_rows = scores["rows"]["CartPole-v1"] - info["rows"]
    assert dagger_rows > 0 and any(m.startswith("dagger r1 CartPole-v1") for m in logs)
    assert s["lockstep"]["teacher"]["mean_return"] > 100  # held-out episodes and scores: the expert's
