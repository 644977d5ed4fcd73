"""The crowd loop (``control_loop.crowd``): one loop ticks every agent of a multi-agent world.

Unit tests run on a simulated clock (as ``tests/test_loop_core.py`` does for the single-agent loop):
the replies are real, made by an in-process policy (``agent.inproc.InProcPolicy``, the service's own
assembly and validation) over a scripted engine, and held back for a chosen simulated delay per
agent-tick. The world is a small in-test ``CrowdWorld`` (its agents, observations and fallbacks are
what the test checks). Then the same loop against a real policy service (``agent.server.PolicyServer``
over ZeroMQ, real clock): a healthy one decodes all agents of a tick as one batch; one that stalls or
dies leaves every agent-tick accounted for. Last, ``tickcall run`` end to end on the built-in
``tickcall/CrowdArena-v0`` through the CLI (Ray actors, the random engine), checking its report files.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass

import pytest
from helpers import HeldReplies, ScriptedEngine, SimClock, injected
from tickcall.agent.inproc import InProcPolicy
from tickcall.control_loop.crowd import CrowdLoop, CrowdLoopActor, crowd_policy
from tickcall.control_loop.loop import LoopSettings
from tickcall.control_loop.records import OUTCOMES, count_outcomes
from tickcall.control_loop.world import CrowdWorld

MOVE = [
    {
        "type": "function",
        "function": {
            "name": "move",
            "description": "Move.",
            "parameters": {
                "type": "object",
                "properties": {"direction": {"type": "string", "enum": ["N", "E", "S", "W"]}},
                "required": ["direction"],
            },
        },
    }
]




@dataclass
class Obs:
    text: str
    taken_at: float
    episode: int = 0


class SimCrowd:
    """A ``CrowdWorld`` whose agents are ``roster(tick)`` (agents come and go as the test says). It
    counts the observations it served, and records every call and fallback per agent."""

    history_chars = 40
    tools = MOVE

    def __init__(self, clock, roster) -> None:
        self.clock = clock
        self.roster = roster
        self.served = 0
        self.calls: dict[str, list] = {}
        self.fallbacks: dict[str, list[str]] = {}
        self.fail_observe_at: set[int] = set()

    @property
    def agents(self) -> list[str]:
        return list(self.roster(self.served))

    def observe_all(self):
        n = self.served
        self.served += 1
        if n in self.fail_observe_at:
            raise RuntimeError("env gone")
        return {
            a: Obs(text=f"{a} x={n}", taken_at=self.clock() - 0.002, episode=n // 10) for a in self.roster(n)
        }

    def history(self, agent):
        return [f"move()@{i}" for i in range(len(self.calls.get(agent, [])))]

    def fallback(self, agent, kind):
        self.fallbacks.setdefault(agent, []).append(kind)
        return kind

    def apply_call(self, agent, call):
        self.calls.setdefault(agent, []).append(call)

    def episodes_done(self):
        return 0

    def episodes(self):
        return []

    def current_episode(self):
        return {}

    def start(self):
        return self

    def stop(self):
        pass

    def close(self):
        pass

    def describe(self):
        return {"agents": len(self.agents)}


class CrowdScriptedPolicy(HeldReplies):
    """Answers agent ``a``'s request for tick ``t`` after ``delay(t, a)`` simulated seconds (None: never)
    with ``kind(t, a)`` ('ok', 'illegal', 'error'); the reply is made at once by an ``InProcPolicy``."""

    def __init__(self, clock, delay, kind=lambda t, a: "ok") -> None:
        super().__init__(clock)
        self.delay = delay
        self.kind = kind
        self.sent: list[tuple[int, str, float, object]] = []
        self.engine = ScriptedEngine(ok_args={"direction": "N"}, illegal_args={"direction": "up?"})
        self.inner = InProcPolicy(self.engine)
        self.inner.register(MOVE)

    def send_decide(self, turn, tick_id, deadline_ms=None, *, stream):
        assert deadline_ms > 0
        self.sent.append((tick_id, stream, deadline_ms, turn))
        self.engine.kind = self.kind(tick_id, stream)
        msg_id = self.inner.send_decide(turn, tick_id, deadline_ms, stream=stream)
        [reply] = self.inner.poll()
        self._hold(reply, self.delay(tick_id, stream))
        return msg_id



AGENTS = ["npc_0", "npc_1", "npc_2", "npc_3"]


def make(delay, kind=lambda t, a: "ok", roster=lambda n: AGENTS, **settings):
    clock = SimClock()
    policy = CrowdScriptedPolicy(clock, delay, kind)
    world = SimCrowd(clock, roster)
    settings.setdefault("rate_hz", 10.0)
    loop = CrowdLoop(LoopSettings(**settings), policy, world, clock=clock, sleep=clock.sleep)
    return loop, policy, world, clock


def per_agent(records):
    return Counter(r.agent for r in records)


# --------------------------------------------------------------------------- simulated clock


def test_every_agent_is_asked_every_tick_and_gets_its_own_call():
    loop, policy, world, _ = make(lambda t, a: 0.010)
    assert isinstance(world, CrowdWorld)
    res = loop.run(max_ticks=20)
    assert count_outcomes(res.records) == {"ok": 80, "late": 0, "fallback": 0, "skipped": 0, "error": 0}
    assert per_agent(res.records) == dict.fromkeys(AGENTS, 20)
    # records in tick order, then agent; each agent-tick once
    assert [(r.tick, r.agent) for r in res.records] == [(t, a) for t in range(20) for a in AGENTS]
    # one decide per agent per tick, keyed by the agent (the service's latest-wins and sticky key)
    assert Counter((t, a) for t, a, _, _ in policy.sent) == Counter((t, a) for t in range(20) for a in AGENTS)
    assert policy.sent[0][2] == pytest.approx(100.0, abs=0.01)  # deadline: one period at 10 Hz
    tick5 = [turn for t, a, _, turn in policy.sent if t == 5]
    assert [turn.query for turn in tick5] == [f"{a} x=5" for a in AGENTS]  # each agent's own observation
    # the agent's own history, its newest history_len (default 4) lines
    assert tick5[0].history == ["move()@1", "move()@2", "move()@3", "move()@4"]
    assert {a: len(c) for a, c in world.calls.items()} == dict.fromkeys(AGENTS, 20) and not world.fallbacks
    r = res.records[9]
    assert r.agent == "npc_1" and r.rtt_ms == pytest.approx(10.0, abs=1e-6)
    assert r.obs_age_ms == pytest.approx(2.0, abs=1e-6) and r.turn["query"] == "npc_1 x=2"
    status = loop.status()
    assert status["ticks"] == 20 and status["agent_ticks"] == 80 and status["agents"] == 4
    assert status["achieved_hz"] == pytest.approx(20 / status["elapsed_s"])  # ticks, not agent-ticks


def test_each_agent_tick_has_its_own_outcome_and_fallback():
    # npc_0 answers legally, npc_1 illegally, npc_2's engine fails, npc_3 takes 1.5 periods (late, then
    # its next tick is skipped: its request is still in flight)
    kinds = {"npc_0": "ok", "npc_1": "illegal", "npc_2": "error", "npc_3": "ok"}
    loop, policy, world, _ = make(
        lambda t, a: 0.15 if a == "npc_3" else 0.005, kind=lambda t, a: kinds[a], fallback="default"
    )
    res = loop.run(max_ticks=20)
    counts = count_outcomes(res.records)
    assert sum(counts.values()) == 4 * 20
    by = {a: Counter(r.outcome for r in res.records if r.agent == a) for a in AGENTS}
    assert by["npc_0"] == {"ok": 20}
    assert by["npc_1"] == {"error": 20} and by["npc_2"] == {"error": 20}
    assert by["npc_3"] == {"late": 10, "skipped": 10}
    assert all(r.reason == "in_flight" for r in res.records if r.outcome == "skipped")
    # illegal calls and errors were never applied; each bad agent-tick had its agent's fallback
    assert set(world.calls) == {"npc_0"}
    assert world.fallbacks == {
        "npc_1": ["default"] * 20,
        "npc_2": ["default"] * 20,
        "npc_3": ["default"] * 10,
    }
    bad = next(r for r in res.records if r.agent == "npc_1")
    assert bad.reason.startswith("illegal call") and bad.call == {
        "name": "move",
        "arguments": {"direction": "up?"},
    }
    assert next(r for r in res.records if r.agent == "npc_2").reason.startswith(
        "service error engine_failure"
    )


def test_an_agent_present_without_a_fresh_observation_still_gets_its_agent_tick():
    """A world with the ``unobserved`` hook (an engine that skipped some NPCs' frames): each present
    agent left out of ``observe_all`` gets an ``error`` agent-tick and its fallback; a world without
    the hook (PettingZoo: a missing agent is done) gets none."""
    skip = {3: {"npc_1"}, 4: {"npc_1", "npc_2"}}
    loop, policy, world, _ = make(lambda t, a: 0.005, roster=lambda n: [a for a in AGENTS if a not in skip.get(n, ())])
    world.unobserved = lambda observations: [a for a in AGENTS if a not in observations]
    res = loop.run(max_ticks=10)
    assert len(res.records) == 4 * 10 and per_agent(res.records) == dict.fromkeys(AGENTS, 10)
    missed = sorted((r.tick, r.agent) for r in res.records if r.outcome == "error")
    assert missed == [(3, "npc_1"), (4, "npc_1"), (4, "npc_2")]
    assert all(r.reason.startswith("observation failed: no fresh observation") for r in res.records
               if r.outcome == "error")
    assert world.fallbacks == {"npc_1": ["hold", "hold"], "npc_2": ["hold"]}
    # without the hook the left-out agents are simply not on this tick
    loop, policy, world, _ = make(lambda t, a: 0.005, roster=lambda n: [a for a in AGENTS if a not in skip.get(n, ())])
    res = loop.run(max_ticks=10)
    assert len(res.records) == 4 * 10 - 3 and not world.fallbacks


def test_supersede_sends_every_agent_every_tick():
    loop, policy, world, _ = make(lambda t, a: 0.15 if a == "npc_0" else 0.005, in_flight="supersede")
    res = loop.run(max_ticks=20)
    assert len(policy.sent) == 80 and sum(count_outcomes(res.records).values()) == 80
    assert Counter(r.outcome for r in res.records if r.agent == "npc_0") == {"late": 20}
    assert count_outcomes(res.records)["ok"] == 60


def test_a_dead_service_keeps_the_rate_with_fallbacks_and_every_agent_tick_counted():
    # ticks 10..29 get no reply at all (service down), the rest answer in 5 ms
    loop, policy, world, _ = make(lambda t, a: None if 10 <= t < 30 else 0.005, in_flight_timeout_ms=200)
    res = loop.run(max_ticks=50)
    counts = count_outcomes(res.records)
    assert sum(counts.values()) == 4 * 50 == len(res.records)
    assert {r.outcome for r in res.records if 10 <= r.tick < 30} <= {"fallback", "skipped"}
    assert all(r.outcome == "ok" for r in res.records if r.tick >= 33)  # recovered, every agent
    assert counts["fallback"] >= 4 * 5 and all(
        len(world.fallbacks[a]) == counts["fallback"] // 4 for a in AGENTS
    )
    assert res.elapsed_s == pytest.approx(5.0, abs=0.11)


def test_agents_come_and_go_between_episodes():
    # npc_3 leaves at tick 10, npc_4 joins; the crowd grows to six at tick 20
    def roster(n):
        return (
            AGENTS
            if n < 10
            else ["npc_0", "npc_1", "npc_2", "npc_4"]
            if n < 20
            else [f"npc_{i}" for i in range(6)]
        )

    loop, policy, world, _ = make(lambda t, a: 0.005, roster=roster)
    res = loop.run(max_ticks=30)
    assert len(res.records) == 4 * 10 + 4 * 10 + 6 * 10 == sum(count_outcomes(res.records).values())
    assert count_outcomes(res.records)["ok"] == len(res.records)
    ticks = {t: sorted(r.agent for r in res.records if r.tick == t) for t in (9, 10, 20)}
    assert ticks == {9: AGENTS, 10: ["npc_0", "npc_1", "npc_2", "npc_4"], 20: [f"npc_{i}" for i in range(6)]}
    assert per_agent(res.records)["npc_3"] == 20 and per_agent(res.records)["npc_4"] == 20
    assert loop.agents_seen == [f"npc_{i}" for i in range(6)]


def test_an_agent_that_leaves_with_a_request_in_flight_still_gets_its_outcome():
    # npc_3's tick-9 request is answered after it left (at tick 10): the agent-tick still resolves
    def roster(n):
        return AGENTS if n < 10 else AGENTS[:3]

    loop, policy, world, _ = make(lambda t, a: 0.15 if (t, a) == (9, "npc_3") else 0.005, roster=roster)
    res = loop.run(max_ticks=15)
    rec = next(r for r in res.records if (r.tick, r.agent) == (9, "npc_3"))
    assert rec.outcome == "late"
    assert len(res.records) == 4 * 10 + 3 * 5 == sum(count_outcomes(res.records).values())


def test_stopping_mid_flight_leaves_no_agent_tick_unresolved():
    loop, policy, world, _ = make(lambda t, a: None if t >= 4 else 0.005)
    orig = policy.send_decide

    def send_then_stop(turn, tick, deadline_ms=None, *, stream):
        if tick == 4 and stream == "npc_3":
            loop.stop()
        return orig(turn, tick, deadline_ms, stream=stream)

    policy.send_decide = send_then_stop
    res = loop.run(max_ticks=100)
    assert res.stopped == "stop requested"
    assert len(res.records) == 4 * 5 and all(r.outcome in OUTCOMES for r in res.records)
    assert per_agent(res.records) == dict.fromkeys(AGENTS, 5)
    # the last tick's requests were never answered: the drain gave each its deadline and fallback
    assert [r.outcome for r in res.records if r.tick == 4] == ["fallback"] * 4
    assert all(world.fallbacks[a] == ["hold"] for a in AGENTS)


def test_missed_periods_and_a_failed_observation_give_one_record_per_agent():
    loop, policy, world, clock = make(lambda t, a: 0.005)
    real = world.observe_all

    def slow_observe():
        if world.served == 5:
            clock.sleep(0.31)  # the world stalls the loop for 3.1 periods once: 600 and 700 ms are missed
        return real()

    world.observe_all = slow_observe
    world.fail_observe_at = {12}
    res = loop.run(max_ticks=20)
    assert len(res.records) == 4 * 20 == sum(count_outcomes(res.records).values())
    missed = sorted({r.tick for r in res.records if r.reason == "missed_period"})
    assert missed == [6, 7] and per_agent(
        r for r in res.records if r.reason == "missed_period"
    ) == dict.fromkeys(AGENTS, 2)
    failed = [r for r in res.records if r.reason.startswith("observation failed")]
    # the 13th observation is tick 14's (ticks 6 and 7 had none)
    assert sorted(r.agent for r in failed) == AGENTS and {r.tick for r in failed} == {14}
    assert all(r.outcome == "error" and r.fallback == "hold" for r in failed)


def test_a_send_failure_is_an_error_for_that_agent_only():
    loop, policy, world, _ = make(lambda t, a: 0.005)
    orig = policy.send_decide

    def broken(turn, tick, deadline_ms=None, *, stream):
        if stream == "npc_2":
            raise ConnectionError("socket gone")
        return orig(turn, tick, deadline_ms, stream=stream)

    policy.send_decide = broken
    res = loop.run(max_ticks=5)
    by = {a: Counter(r.outcome for r in res.records if r.agent == a) for a in AGENTS}
    assert by["npc_2"] == {"error": 5} and by["npc_0"] == {"ok": 5}
    assert "socket gone" in next(r for r in res.records if r.agent == "npc_2").reason


# --------------------------------------------------------------------------- a real policy service


@pytest.fixture
def serve():
    """``serve(engine_spec, **config)`` starts a real ``PolicyServer`` (ZeroMQ on loopback) in this process."""
    from tickcall.agent.config import ServeConfig
    from tickcall.agent.engines import build_engine
    from tickcall.agent.server import PolicyServer

    servers = []

    def start(spec, **cfg):
        srv = PolicyServer(build_engine(spec), ServeConfig(bind="tcp://127.0.0.1:0", **cfg))
        servers.append(srv)
        return srv, srv.start()

    yield start
    for srv in servers:
        srv.stop()


class RealCrowd(SimCrowd):
    """``SimCrowd`` on the real clock."""

    def __init__(self, n: int) -> None:
        names = [f"npc_{i}" for i in range(n)]
        super().__init__(time.monotonic, lambda _n: names)


def run_crowd(endpoint, n_agents, ticks, **settings):
    client = crowd_policy([endpoint], timeout_ms=5000)
    try:
        client.register(MOVE)
        world = RealCrowd(n_agents)
        loop = CrowdLoop(LoopSettings(**settings), client, world)
        return loop.run(max_ticks=ticks), world, dict(client.stats)
    finally:
        client.close()


def test_a_real_service_decodes_the_agents_of_a_tick_together(serve):
    # a generous deadline: this test is about batching and accounting, not speed
    srv, endpoint = serve(injected(batch_delay_ms=20), max_streams_per_client=32)
    res, world, _ = run_crowd(endpoint, 8, 10, rate_hz=5, deadline_ms=2000, in_flight_timeout_ms=4000)
    assert len(res.records) == 80 == sum(count_outcomes(res.records).values())
    assert count_outcomes(res.records)["ok"] == 80 and res.stray_replies == 0
    assert {a: len(c) for a, c in world.calls.items()} == {f"npc_{i}": 10 for i in range(8)}
    sizes = {int(k): v for k, v in srv.stats()["batch_sizes"].items()}
    # each batch costs 20 ms, so the decides of a tick queue behind the first: batches of several agents
    assert max(sizes) > 1 and sum(k * v for k, v in sizes.items()) == 80


def test_a_stalled_service_leaves_every_agent_tick_accounted(serve):
    # every batch takes 400 ms against a 100 ms deadline: nothing comes in time, all is counted
    _, endpoint = serve(injected(batch_delay_ms=400), max_streams_per_client=32)
    res, world, _ = run_crowd(endpoint, 6, 8, rate_hz=10, in_flight_timeout_ms=2000)
    counts = count_outcomes(res.records)
    assert len(res.records) == 6 * 8 == sum(counts.values())
    assert counts["ok"] == 0 and counts["error"] == 0 and not world.calls
    assert counts["late"] + counts["fallback"] + counts["skipped"] == 48
    assert counts["late"] + counts["fallback"] >= 6  # every agent sent at least once and fell back


def test_a_service_that_dies_mid_run_leaves_every_agent_tick_accounted(serve):
    srv, endpoint = serve({"backend": "noop"}, max_streams_per_client=32)
    client = crowd_policy([endpoint], timeout_ms=300)
    try:
        client.register(MOVE)
        world = RealCrowd(5)
        loop = CrowdLoop(LoopSettings(rate_hz=10, deadline_ms=100, in_flight_timeout_ms=400), client, world)
        real = world.observe_all

        def observe_then_kill():
            if world.served == 5:
                srv.stop()  # the service dies between two ticks
            return real()

        world.observe_all = observe_then_kill
        res = loop.run(max_ticks=15)
    finally:
        client.close()
    counts = count_outcomes(res.records)
    assert len(res.records) == 5 * 15 == sum(counts.values())
    assert all(r.outcome in ("fallback", "skipped") for r in res.records if r.tick >= 5)
    assert counts["fallback"] >= 5  # each agent's first unanswered tick fell back at its deadline
    assert all(world.fallbacks.get(a) for a in world.agents)


def test_the_crowd_actor_body_builds_its_world_and_runs_it(serve):
    """``CrowdLoopActor`` called in this process (Ray only places it): one endpoint -> a PolicyClient."""
    _, endpoint = serve({"backend": "noop"}, max_streams_per_client=32)
    actor = CrowdLoopActor(
        {"rate_hz": 10.0, "deadline_ms": 1000.0, "in_flight_timeout_ms": 2000.0},
        lambda: RealCrowd(3),
        [endpoint],
    )
    try:
        info = actor.info()
        assert "setup_error" not in info and info["agents"] == ["npc_0", "npc_1", "npc_2"]
        out = actor.run(max_ticks=5)
    finally:
        actor.close()
    assert len(out["records"]) == 15 and out["agents"] == ["npc_0", "npc_1", "npc_2"]
    assert {r["agent"] for r in out["records"]} == {"npc_0", "npc_1", "npc_2"}
    assert out["client"]["sent"] >= 15
    bad = CrowdLoopActor({"rate_hz": 10.0}, lambda: RealCrowd(1), [])
    assert "at least one policy service endpoint" in bad.info()["setup_error"]


# --------------------------------------------------------------------------- tickcall run, end to end


def test_agents_on_a_single_agent_env_is_one_line_before_anything_starts(capsys):
    import ray

    from tickcall.cli import main

    assert (
        main(["run", "--env", "tickcall/Arena-v0", "--agents", "4", "--backend", "noop", "--duration", "1"])
        == 2
    )
    err = capsys.readouterr().err
    assert "--agents 4 (agents) is for multi-agent envs" in err and len(err.strip().splitlines()) == 1, err
    assert main(["run", "--replicas", "2", "--endpoint", "tcp://127.0.0.1:5555", "--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert "drop --endpoint, or run with --replicas 1" in err and len(err.strip().splitlines()) == 1, err
    assert main(["run", "--env", "tickcall/CrowdArena-v0", "--agents", "0", "--duration", "1"]) == 2
    assert "--agents 0: agents: must be >= 1" in capsys.readouterr().err
    assert not ray.is_initialized()  # refused before Ray, the service or the loop started


@pytest.mark.parametrize("replicas", [1, 2])
def test_tickcall_run_drives_a_crowd_with_the_shipped_student(tmp_path, replicas):
    """The real thing: Ray, the policy service actor(s) with the shipped arena student (the default model
    of tickcall/CrowdArena-v0), the crowd loop actor, four NPCs in real time, report.json and ticks.jsonl;
    with two replicas, the agents are spread over both."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "tickcall.cli", "run", "--env", "tickcall/CrowdArena-v0", "--agents", "4",
         "--duration", "3", "--rate", "10", "--replicas", str(replicas), "--report", str(out), "--quiet",
         "--no-plots"],
        cwd=root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    ticks = [json.loads(line) for line in (out / "ticks.jsonl").read_text().splitlines()]
    agents = [f"npc_{i}" for i in range(4)]
    loop_ticks = len({r["tick"] for r in ticks})
    assert loop_ticks == 30  # 3 s at 10 Hz
    # one record per agent per tick, in ticks.jsonl and in the report's outcome counts
    assert len(ticks) == rep["ticks"] == sum(rep["outcomes"].values()) == 4 * loop_ticks
    assert Counter(r["agent"] for r in ticks) == dict.fromkeys(agents, loop_ticks)
    assert all(sorted(r["agent"] for r in ticks if r["tick"] == t) == agents for t in range(loop_ticks))
    assert all(r["outcome"] in OUTCOMES for r in ticks)
    assert rep["model"].endswith("models/shipped/tickcall-arena") and rep["env"] == "tickcall/CrowdArena-v0"
    crowd = rep["crowd"]
    assert crowd["agents"] == 4 and crowd["agent_ids"] == agents and crowd["replicas"] == replicas
    assert len(set(crowd["endpoints"])) == replicas
    if replicas > 1:  # sticky routing spread the agents, and both replicas decided
        assert sorted(Counter(crowd["router"]["assignments"].values()).values()) == [2, 2]
        assert all(sum(s.get("batch_sizes", {}).values()) > 0 for s in rep["service"]["replica_stats"])
    # the service took the crowd's limits, so every agent's decide could be queued at once
    assert rep["service"]["max_streams_per_client"] >= 16 and rep["service"]["max_batch"] >= 32
    # the student's legal calls were the arena's own tools (each NPC acts as in tickcall/Arena-v0)
    calls = {r["call"]["name"] for r in ticks if r["outcome"] == "ok" and r["call"]}
    assert calls and calls <= {"wait", "move", "aim", "fire", "dash"}, calls
    assert "agents 4: 120 agent-ticks over 30 ticks" in proc.stderr and "report:" in proc.stderr
    assert ("2 replicas" in proc.stderr) == (replicas == 2)


def test_two_replicas_share_the_crowd_and_one_dying_loses_no_agent_tick(serve):
    """``crowd_policy`` with two endpoints is ``agent.replicas.ReplicaPolicy`` (two real in-process
    services here; Ray placement is tests/test_replicas.py's): agents are spread over both; when one
    service dies mid-run its agents' ticks fall back, they move to the other, and every agent-tick is
    still accounted for."""
    srv_a, ep_a = serve({"backend": "noop"}, max_streams_per_client=32)
    _, ep_b = serve({"backend": "noop"}, max_streams_per_client=32)
    client = crowd_policy([ep_a, ep_b], timeout_ms=1000)
    try:
        client.hello(timeout_ms=5000)
        client.register(MOVE, timeout_ms=5000)
        world = RealCrowd(6)
        loop = CrowdLoop(LoopSettings(rate_hz=10, deadline_ms=100, in_flight_timeout_ms=400), client, world)
        real = world.observe_all
        before: dict[str, int] = {}

        def observe_then_kill():
            if world.served == 8:
                before.update(client.assignments())
                srv_a.stop()  # replica 0 dies between two ticks
            return real()

        world.observe_all = observe_then_kill
        res = loop.run(max_ticks=25)
        after = client.assignments()
    finally:
        client.close()
    counts = count_outcomes(res.records)
    assert len(res.records) == 6 * 25 == sum(counts.values())
    assert sorted(Counter(before.values()).values()) == [3, 3]  # three agents on each replica
    assert set(after.values()) == {1}  # all on the replica still alive
    moved = [a for a, i in before.items() if i == 0]
    # the moved agents are decided again by the other replica before the run ends
    assert all(any(r.outcome == "ok" and r.tick >= 20 for r in res.records if r.agent == a) for a in moved)
    assert counts["ok"] > 0 and counts["error"] == 0


def test_a_crowds_service_settings_batch_every_agent_and_use_int8_on_the_cpu():
    """A crowd's service takes every agent of a tick in one batch (streams, batch size, a gather
    window for decides sent one after another) and, on the CPU with the transformers backend, int8
    weights unless the run names a precision."""
    from tickcall.agent.config import ServeConfig

    from tickcall.job import CROWD_GATHER_MS, crowd_int8, crowd_serve_config

    limits = crowd_serve_config(64)
    assert limits["max_streams_per_client"] == 64 and limits["max_batch"] >= 64
    assert limits["gather_ms"] == max(ServeConfig.gather_ms, CROWD_GATHER_MS)
    ServeConfig.from_dict({"engine": {"backend": "noop"}, **limits})  # valid serve settings
    cpu = {"backend": "transformers", "device": "cpu", "model": "m"}
    assert crowd_int8(cpu, 16)
    assert not crowd_int8(cpu, 1) and not crowd_int8(cpu, None)  # one agent keeps the model's own precision
    assert not crowd_int8({**cpu, "precision": "fp32"}, 16)  # the run's choice wins
    assert not crowd_int8({**cpu, "device": "cuda"}, 16) and not crowd_int8({"backend": "noop"}, 16)
