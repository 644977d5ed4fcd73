"""``tickcall bench cascade`` (tickcall/bench/cascade.py), a smoke run with tiny settings: two tiny
random models as small and big (``models.tiny.make_tiny_model``: what they decide does not matter
here), the arena cut to 20 physics steps, one episode per part. It checks that the three parts run
on real Ray actors and the JSON has the issue's keys with every tick accounted, not any figure."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ray")


def test_bench_cascade_writes_small_big_and_cascade(tmp_path):
    from tickcall.models.tiny import make_tiny_model

    from tickcall.cli import main

    small = make_tiny_model(tmp_path / "small", seed=0, init_std=0.2, tie_embeddings=False)
    big = make_tiny_model(tmp_path / "big", seed=1, init_std=0.2, tie_embeddings=False)
    out = tmp_path / "cascade.json"
    code = main(
        ["bench", "cascade", "--small", str(small), "--big", str(big), "--env", "tickcall/Arena-v0",
         "--episodes", "1", "--max-steps", "20", "--big-alone-rate", "16", "--threshold", "1.01",
         "--engine-option", "threads=1", "--big-engine-option", "constrain=true", "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    res = json.loads(out.read_text())
    for part in ("small", "big", "cascade"):
        fig = res[part]
        for key in ("return", "goal_success", "p50_ms", "p90_ms", "misses", "ticks", "outcomes"):
            assert key in fig, (part, key)
        assert fig["episodes"] == 1 and sum(fig["outcomes"].values()) == fig["ticks"] > 0
    cas = res["cascade"]
    assert 0.0 <= cas["small_share"] <= 1.0
    assert sum(cas["reasons"].values()) == cas["ticks"]
    assert abs(cas["small_share"] + cas["big_share"] + cas["none_share"] - 1.0) < 1e-3
    assert set(res["goals"]) >= {"return_vs_big", "p90_vs_small", "misses", "small_share"}
    assert res["settings"]["big_engine_options"] == ["constrain=true"]


def test_bench_cascade_refuses_a_folder_that_is_no_model_in_one_line(tmp_path, capsys):
    from tickcall.cli import main

    assert main(["bench", "cascade", "--small", str(tmp_path), "--big", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--small" in err[0] and "config.json is missing" in err[0]
    assert main(["bench", "cascade", "--small", str(tmp_path), "--big", str(tmp_path), "--big-engine-option",
                 "precision"]) != 0  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--big-engine-option 'precision' is not KEY=VALUE" in err[0]
