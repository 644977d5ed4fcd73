"""``tickcall bench fleet`` (tickcall/bench/fleet.py): each cell a real crowd run through ``run_job`` (real
Ray actors, real ZeroMQ, the real CrowdArena PettingZoo env), here tiny (1 and 2 agents, 2 s, the no-op
engine so no model decodes) to keep the module under ~30 s. Behaviour and accounting only, no timings."""

from __future__ import annotations

import json

import pytest

from tickcall.bench.fleet import goals, ratios
from tickcall.cli import main

CELL_KEYS = {
    "replicas",
    "agents",
    "loop_ticks",
    "agent_ticks",
    "outcomes",
    "accounted",
    "accounting",
    "decisions_per_s",
    "replies_per_s",
    "decide_ms",
    "tick_latency_ms",
    "deadline_misses",
    "miss_rate",
    "mean_batch",
    "batches",
    "batch_sizes",
    "warmup",
    "all_ticks",
    "service_stages_ms",
    "loop_lateness_ms",
    "service_busy_share",
    "outside_service_ms",
}


def test_tiny_fleet_writes_every_cell_accounted_and_prints_the_table(ray_session, tmp_path, capsys):
    out = tmp_path / "fleet.json"
    code = main(
        [
            "bench",
            "fleet",
            "--agents",
            "1,2",
            "--replicas",
            "1",
            "--duration",
            "2",
            "--warmup",
            "0.5",
            "--backend",
            "noop",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    data = json.loads(out.read_text())
    assert {"cells", "ratios", "goals", "machine", "command", "rate_hz", "duration_s"} <= set(data)
    assert {"lscpu_model_name", "avx512_flags", "amx_flags", "nproc", "loadavg"} <= set(data["machine"])
    cells = data["cells"]
    assert [(c["replicas"], c["agents"]) for c in cells] == [(1, 1), (1, 2)]
    for c in cells:
        assert set(c) >= CELL_KEYS, CELL_KEYS - set(c)
        # every agent-tick has exactly one outcome: agents x loop ticks (2 s at 10 Hz: ~20 ticks)
        assert (
            c["accounted"]
            and sum(c["outcomes"].values()) == c["agents"] * c["loop_ticks"] == c["agent_ticks"]
        )
        assert c["loop_ticks"] >= 15
        assert c["window_loop_ticks"] + c["warmup"]["loop_ticks"] == c["loop_ticks"]
        # the no-op engine answers at once: the service decoded batches, the loop got ok agent-ticks
        assert c["batches"] > 0 and c["mean_batch"] >= 1 and c["window_outcomes"]["ok"] > 0
        assert c["decide_ms"]["n"] > 0 and c["errors"] == 0
        assert c["service_busy_share"] is not None and c["outside_service_ms"]["n"] == c["decide_ms"]["n"]
    assert set(data["ratios"]["throughput_most_over_1"]) == {"1"}
    assert data["ratios"]["throughput_most_over_1"]["1"]["agents"] == 2
    assert data["goals"]["zero_miss_32_one_replica"]["met"] is None  # 32 agents did not run
    printed = capsys.readouterr().out
    assert "outcomes = agents x ticks" in printed and "goal zero_miss_32_one_replica: not run" in printed
    for c in cells:
        assert f"{c['agent_ticks']} = {c['agents']} x {c['loop_ticks']}" in printed


def test_failover_kills_one_replica_and_every_agent_tick_is_accounted(ray_session, tmp_path):
    """The extra run: 4 agents on 2 replicas, replica 0's process killed (SIGKILL) a third of the way in;
    the router saw it lost, moved its agents, and they were served by the other replica."""
    out = tmp_path / "fleet.json"
    code = main(
        [
            "bench",
            "fleet",
            "--agents",
            "1",
            "--replicas",
            "1",
            "--duration",
            "3",
            "--warmup",
            "0",
            "--backend",
            "noop",
            "--failover",
            "--failover-agents",
            "4",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    fo = json.loads(out.read_text())["failover"]
    assert fo["killed"]["replica"] == 0 and fo["killed"]["pid"] > 0 and fo["kill_error"] is None
    assert fo["lost"] >= 1 and fo["moved_agents"] == 2 and fo["lost_reason"]
    assert fo["lost_to_served_ms"]["n"] == 2  # both moved agents got a call from the other replica
    assert fo["down_replies"] >= fo["fallback_down_replies"] >= 0  # the lost replica's in-flight decides
    assert fo["kill_to_lost_ms"] is not None and fo["kill_to_all_moved_served_ms"] is not None
    assert fo["accounted"] and sum(fo["outcomes"].values()) == 4 * fo["loop_ticks"] == fo["agent_ticks"]


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--agents", "0,4"], "--agents '0,4'"),
        (["--replicas", "two"], "--replicas 'two'"),
        (["--duration", "-1"], "--duration '-1'"),
        (["--warmup", "30"], "--warmup '30'"),
        (["--env", "CartPole-v1"], "not a multi-agent env"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(flags, says, capsys):
    assert main(["bench", "fleet", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err and err.startswith("tickcall bench: ")


def _cell(replicas: int, agents: int, dps: float, misses: int) -> dict:
    return {
        "replicas": replicas,
        "agents": agents,
        "decisions_per_s": dps,
        "replies_per_s": 2 * dps,
        "deadline_misses": misses,
    }


def test_goals_and_ratios_judge_the_cells_they_are_given():
    cells = [
        _cell(1, 1, 10.0, 0),
        _cell(1, 32, 300.0, 0),
        _cell(1, 64, 39.0, 50),
        _cell(2, 1, 10.0, 0),
        _cell(2, 64, 80.0, 5),
    ]
    g = goals(cells)
    assert g["zero_miss_32_one_replica"]["met"] is True
    thr = g["throughput_64_over_1"]
    assert thr["per_replicas"]["1"] == {"ratio": 3.9, "met": False}
    assert thr["per_replicas"]["2"] == {"ratio": 8.0, "met": True} and thr["met"] is False
    r = ratios(cells, [1, 32, 64], [1, 2])
    assert r["throughput_most_over_1"]["1"] == {"agents": 64, "ratio": 3.9, "replies_ratio": 3.9}
    assert r["replicas_2_over_1"] == {"1": 1.0, "32": None, "64": 2.051}
    assert goals([_cell(1, 32, 300.0, 1)])["zero_miss_32_one_replica"]["met"] is False
