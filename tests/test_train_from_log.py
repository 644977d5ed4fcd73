"""Training on another model's decisions alone (issue 15, "logged decisions of a bigger model"): the
held-out split of the data itself (whole episodes or contiguous blocks, never random rows), the
student's agreement with the data on those turns (exact call, each head, each argument, legal rate)
in ``--json``, the printed table and the model card, ``--heldout-share`` refused in one line when it
is not a share, an env that cannot be made here trained without its real-time loop, and ``--labels
big`` on a cascade run's report.

Real parts: ``tickcall record`` with the CartPole expert, a real run report's format (TickRecord),
real students trained for a few dozen steps (the figures are not asserted: only the keys, the
accounting and the split's invariants are)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


def _rows(n: int, episodes: int | None, interleave: bool = True):
    """``n`` rows; with ``episodes``: the episode of each row (interleaved as a lock-step rollout
    writes them, or one after the other as a run logs them)."""
    from tickcall.models.calls import Call
    from tickcall.models.training.collect import Record

    def ep(i: int) -> int | None:
        if episodes is None:
            return None
        return i % episodes if interleave else i * episodes // n

    return [Record("e", f"x={i}", [], Call("a", {"k": i % 3}), None, ep(i)) for i in range(n)]


def _tiny_cfg(tmp: Path, **data):
    from tickcall.models.training.pipeline import TrainConfig

    cfg = TrainConfig.load(ROOT / "configs" / "train-ci.yaml")
    cfg.out, cfg.work_dir = str(tmp / "model"), str(tmp / "work")
    cfg.data.soft_tau, cfg.data.text_labels = 0.0, False
    cfg.train.steps, cfg.train.warmup, cfg.eval_episodes = 20, 5, 2
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


# ---- the split --------------------------------------------------------------------------------------
@pytest.mark.parametrize("interleave", [True, False])
def test_the_split_never_puts_one_episode_on_both_sides(interleave):
    from tickcall.models.training.split import split_rows

    rows = _rows(2000, 40, interleave)
    sp = split_rows(rows, 0.1, seed=3)
    assert sp.unit == "episode" and sp.groups == 40 and sp.dropped == 0
    train_eps, held_eps = {r.episode for r in sp.train}, {r.episode for r in sp.heldout}
    assert not train_eps & held_eps and held_eps == set(sp.heldout_groups)
    assert len(sp.train) + len(sp.heldout) == len(rows) and len(sp.heldout) == 200  # 4 of 40 equal episodes
    # each side keeps file order; the same seed gives the same split, another seed another one
    assert [r.query for r in sp.heldout] == [r.query for r in rows if r.episode in held_eps]
    assert split_rows(rows, 0.1, seed=3).heldout_groups == sp.heldout_groups
    assert split_rows(rows, 0.1, seed=4).heldout_groups != sp.heldout_groups


def test_without_episodes_the_split_holds_out_contiguous_blocks_with_a_gap():
    from tickcall.models.training.split import split_rows

    rows = _rows(1000, None)
    sp = split_rows(rows, 0.1, seed=0, gap=16)
    assert sp.unit == "block" and sp.groups == 20 and len(sp.heldout_groups) == 2
    index = {r.query: i for i, r in enumerate(rows)}
    held = sorted(index[r.query] for r in sp.heldout)
    train = {index[r.query] for r in sp.train}
    assert len(held) == 100 and all(held[i] // 50 in sp.heldout_groups for i in range(100))
    # no training row within 16 rows of a held-out row; every row on one side or in the gap
    assert not any(abs(t - h) <= 16 for t in train for h in held)
    assert len(train) + len(held) + sp.dropped == len(rows) and 16 <= sp.dropped <= 64


def test_too_few_episodes_fall_back_to_blocks_and_tiny_data_holds_nothing_out():
    from tickcall.models.training.split import split_rows

    sp = split_rows(_rows(300, 3, interleave=False), 0.1)  # one episode would be a third of the rows
    assert sp.unit == "block" and 25 <= len(sp.heldout) <= 40
    tiny = split_rows(_rows(6, 2), 0.1)
    assert tiny.unit == "none" and not tiny.heldout and len(tiny.train) == 6


@pytest.mark.parametrize("share", ["0", "-0.1", "0.7", "nan"])
def test_a_bad_heldout_share_is_one_line_and_exit_2(tmp_path, capsys, share):
    from tickcall.cli import main

    assert main(["train", "--data", str(tmp_path / "none.jsonl"), f"--heldout-share={share}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--heldout-share" in err and "0.5" in err


def test_a_bad_heldout_share_in_the_config_is_one_line_and_exit_2(tmp_path, capsys):
    from tickcall.cli import main

    cfg = _tiny_cfg(tmp_path).to_dict()
    cfg["data"]["heldout_share"] = 0.9
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.heldout_share" in err


def _cartpole_run(folder: Path, episodes: int, per_episode: int) -> Path:
    """A run report of CartPole-v1 as the loop writes it: ticks with turn, call and episode number."""
    from tickcall.control_loop.records import TickRecord

    folder.mkdir()
    (folder / "report.json").write_text(json.dumps({"env": "CartPole-v1", "model": "big"}))
    ticks, k = [], 0
    for ep in range(episodes):
        for j in range(per_episode):
            a = (j % 9) / 4.0 - 1.0
            call = {"name": "push", "arguments": {"direction": "right" if a > 0 else "left"}}
            turn = {"query": f"x=+0.{ep:03d} v=+0.000 a={a:+.3f} w=+0.{j:03d}", "history": []}
            ticks.append(TickRecord(k, 62.5 * k, outcome="ok", call=call, turn=turn, episode=ep))
            k += 1
    ticks.insert(3, TickRecord(k, 0.0, outcome="skipped", episode=0))  # no call: not a row
    (folder / "ticks.jsonl").write_text("".join(json.dumps(t.to_dict()) + "\n" for t in ticks))
    return folder


def test_run_reports_give_their_rows_episodes_distinct_across_runs(tmp_path):
    from tickcall.models.training.split import split_rows

    from tickcall.training import load_data

    a, b = _cartpole_run(tmp_path / "a", 4, 30), _cartpole_run(tmp_path / "b", 6, 20)
    data = load_data([str(a), str(b)])
    assert [r.episode for r in data.records] == [e for e in range(4) for _ in range(30)] + [
        e for e in range(4, 10) for _ in range(20)
    ]
    sp = split_rows(data.records, 0.1, seed=0)
    assert sp.unit == "episode" and sp.groups == 10
    assert not {r.episode for r in sp.train} & {r.episode for r in sp.heldout}


# ---- data-only training -----------------------------------------------------------------------------
def test_data_only_training_reports_the_held_out_agreement(tmp_path, capsys):
    """``tickcall record`` (the CartPole expert, 12 episodes) -> ``tickcall train --data`` (no teacher):
    one whole episode held out, agreement keys in --json, the table on stdout, the card."""
    from tickcall.models.training.dataset import read_dataset

    from tickcall.cli import main

    data = tmp_path / "cp.jsonl"
    rec = ["record", "--env", "CartPole-v1", "--episodes", "12", "--max-decisions", "50", "--out", str(data)]
    assert main([*rec, "--epsilon", "0.3"]) == 0
    ds = read_dataset(data)
    assert {r.episode for r in ds.records} == set(range(12))  # the rows say their episode (its seed)
    cfg = _tiny_cfg(tmp_path)
    (tmp_path / "c.yaml").write_text(json.dumps(cfg.to_dict()))
    capsys.readouterr()
    argv = ["train", "--config", str(tmp_path / "c.yaml"), "--data", str(data), "--seed", "5"]
    assert main([*argv, "--heldout-share", "0.1", "--json", str(tmp_path / "s.json"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    scores = json.loads((tmp_path / "s.json").read_text())
    s = scores["envs"]["CartPole-v1"]
    held = s["heldout"]
    assert s["teacher"] == {"dataset": "expert"}
    assert set(held) >= {"n", "exact_call", "legal_rate", "per_head", "per_arg", "split"}
    assert set(held["per_head"]) == {"function", "arg1"} and set(held["per_arg"]) == {"push.direction"}
    sp = held["split"]
    assert sp["unit"] == "episode" and sp["groups"] == 12 and len(sp["heldout_groups"]) == 1
    assert sp["seed"] == 5 and sp["heldout_rows"] == held["n"] == 50
    # the held-out episode is not in the training rows: the rows trained are the others
    assert scores["rows"]["CartPole-v1"] == sp["train_rows"] == len(ds.records) - 50
    assert 0.0 <= held["exact_call"] <= 1.0 and 0.0 <= held["legal_rate"] <= 1.0
    assert "1/12 episodes" in out and "push.direction" in out and "exact" in out and "as served" in out
    served = held["served"]  # the written folder through the engine tickcall run uses (constrained heads)
    assert served["n"] == 50 and served["legal_rate"] == 1.0 and set(served["per_arg"]) == {"push.direction"}
    assert 0.0 <= served["exact_call"] <= served["function"] <= 1.0
    card = (tmp_path / "model" / "README.md").read_text()
    assert "Agreement with the data's labels on 50 held-out turns" in card and "1 of 12 episodes" in card
    assert scores["machine"]["cores"] >= 1 and scores["machine"]["cpu"] in card


def test_an_env_that_cannot_be_made_here_skips_its_real_time_loop_with_a_line(tmp_path):
    """An engine's recorded play (no gymnasium env of that id here), with --realtime asked for."""
    from helpers import kart_dataset

    from tickcall.training import make_pipeline

    data = kart_dataset(tmp_path / "kart.jsonl", 300, episode_len=30)  # ten engine episodes
    cfg = _tiny_cfg(tmp_path)
    cfg.envs, cfg.data_files, cfg.teacher.kind, cfg.realtime_eval = ["engine:kart"], [str(data)], "none", True
    logs: list[str] = []
    scores = make_pipeline(cfg, log=logs.append, progress=False).run()
    s = scores["envs"]["engine:kart"]
    assert s["source"] == "dataset" and "lockstep" not in s and "realtime" not in s
    assert "cannot be made on this machine" in s["realtime_skipped"]
    assert s["heldout"]["split"]["unit"] == "episode" and s["heldout"]["n"] == 30
    assert any(m.startswith("realtime engine:kart: skipped") for m in logs)
    assert "Real-time loop: not run" in (tmp_path / "model" / "README.md").read_text()
    # the same work_dir with another share: its checkpoint trained on rows the new split holds out
    cfg.data.heldout_share = 0.2
    with pytest.raises(ValueError, match="another held-out split"):
        make_pipeline(cfg, log=logs.append, progress=False).run()


def test_labels_big_trains_on_a_cascade_runs_big_calls(tmp_path):
    """``--labels big``: a cascade run's report (TickRecords with the small model's applied call and
    the big model's call on the same turn) trains on the big calls only, held out by blocks."""
    from tickcall.control_loop.records import TickRecord

    from tickcall.cli import main

    run = tmp_path / "cascade"
    run.mkdir()
    (run / "report.json").write_text(json.dumps({"env": "CartPole-v1", "model": "small"}))
    ticks = []
    for k in range(240):
        a = (k % 17) / 8.0 - 1.0
        big = {"name": "push", "arguments": {"direction": "right" if a > 0 else "left"}}
        small = {"name": "push", "arguments": {"direction": "left"}}
        turn = {"query": f"x=+0.000 v=+0.000 a={a:+.3f} w=+0.000", "history": []}
        ticks.append(
            TickRecord(k, 62.5 * k, outcome="ok", call=small, turn=turn, big_call=big if k % 2 else None)
        )
    (run / "ticks.jsonl").write_text("".join(json.dumps(t.to_dict()) + "\n" for t in ticks))
    cfg = _tiny_cfg(tmp_path)
    (tmp_path / "c.yaml").write_text(json.dumps(cfg.to_dict()))
    argv = ["train", "--config", str(tmp_path / "c.yaml"), "--data", str(run), "--labels", "big"]
    assert main([*argv, "--json", str(tmp_path / "s.json"), "--no-progress"]) == 0
    scores = json.loads((tmp_path / "s.json").read_text())
    held = scores["envs"]["CartPole-v1"]["heldout"]
    sp = held["split"]
    assert (
        sp["train_rows"] + sp["heldout_rows"] + sp["gap_dropped"] == 120
    )  # the ticks the big model was asked
    assert sp["unit"] == "block" and held["n"] == sp["heldout_rows"] > 0
