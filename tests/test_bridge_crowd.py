"""Crowds over the engine bridge (protocol 1.1): the C++ reference engine's N-agent mode end to end.

Nothing is faked where it can be real: the reference engine is built by
``scripts/build_reference_engine.sh`` and runs as its own process (``--agents N``: N NPCs, each in its
own arena, one observation per NPC per observation frame); the bridge, its ZeroMQ sockets and
``EngineCrowdWorld`` are the ones ``tickcall run`` uses; the last test drives the world with the real
``control_loop.crowd.CrowdLoop`` and a real policy service (``agent.server.PolicyServer``, the random
engine: legal random calls for every tool). The one stand-in is a raw DEALER socket in the bad-id test:
it sends observations with wrong agent ids, which the C++ engine never does. Assertions are on
behaviour and accounting (every agent observed every frame, every call applied to the NPC it names,
every agent-tick counted), never on how fast this machine is.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import msgpack
import pytest
import zmq
from helpers import free_endpoint
from tickcall.control_loop.world import CrowdWorld
from tickcall.envs.engine_bridge import EngineBridge
from tickcall.envs.engine_bridge_crowd import EngineCrowdWorld
from tickcall.envs.engine_bridge_protocol import (
    AgentCallMsg,
    CallMsg,
    CrowdWelcomeMsg,
    ProtocolError,
    WelcomeMsg,
    decode,
    decode_bridge,
    encode,
)
from tickcall.envs.engine_bridge_world import EngineWorldError, NoObservation
from tickcall.models.calls import Call

from tickcall.bridge_world import make_engine_crowd_world

ROOT = Path(__file__).resolve().parents[1]
DIRS = ["N", "NE", "E", "SE", "S", "SW", "W", "NW"]
WAIT_S = 30.0  # a generous bound for things that take milliseconds, not a performance threshold
# quick liveness so a killed engine is noticed within a few ticks (the defaults take 1 s)
FAST = {"heartbeat_ms": 100.0, "max_obs_age_ms": 300.0, "wait_s": WAIT_S}


# --------------------------------------------------------------------------- helpers






class Engine:
    """One reference-engine process; ``--log`` records every call it applied, with its agent."""

    def __init__(self, binary: str, endpoint: str, tmp: Path, name: str, *args: str) -> None:
        self.log = tmp / f"{name}.jsonl"
        self.err_path = tmp / f"{name}.stderr"
        self._err = open(self.err_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [binary, "--connect", endpoint, "--log", str(self.log), "--seed", "7", *args],
            stdout=subprocess.DEVNULL,
            stderr=self._err,
        )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._err.close()
        return self.proc.returncode

    def stderr(self) -> str:
        return self.err_path.read_text()

    def events(self, kind: str) -> list[dict]:
        if not self.log.exists():
            return []
        rows = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [r for r in rows if r["event"] == kind]


@pytest.fixture
def engines(engine_bin, tmp_path):
    started: list[Engine] = []

    def start(endpoint: str, name: str, *args: str) -> Engine:
        e = Engine(engine_bin, endpoint, tmp_path, name, *args)
        started.append(e)
        return e

    yield start
    for e in started:
        e.stop()


def until(check, timeout_s: float = WAIT_S, every_s: float = 0.02):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError("condition not met in time")


def balanced(counts: dict) -> bool:
    return counts["calls"] == sum(
        counts[k] for k in ("done", "failed", "rejected", "lost", "timeout", "in_flight")
    )


# --------------------------------------------------------------------------- the protocol


def test_crowd_messages_are_additions_and_single_agent_maps_are_unchanged():
    """Protocol 1.1 adds optional keys only: a 1.0 call/welcome encodes to the same map as before, the
    crowd variants only when an agent is named; a bad agent id is one bad_field error naming it."""
    plain = msgpack.unpackb(encode(CallMsg(id=3, name="fire", arguments={}, tick=2, obs_seq=5)))
    assert "agent" not in plain
    crowd = msgpack.unpackb(
        encode(AgentCallMsg(id=3, name="fire", arguments={}, tick=2, obs_seq=5, agent="npc_1"))
    )
    assert crowd == {**plain, "agent": "npc_1"}
    assert decode_bridge(msgpack.packb(crowd)) == AgentCallMsg(
        id=3, name="fire", arguments={}, tick=2, obs_seq=5, agent="npc_1"
    )
    assert type(decode_bridge(msgpack.packb(plain))) is CallMsg
    welcome = dict(epoch="e", session="s", heartbeat_ms=250.0, max_msg_bytes=1 << 20, tools=["wait"])
    assert "max_agents" not in msgpack.unpackb(encode(WelcomeMsg(**welcome)))
    assert decode_bridge(encode(CrowdWelcomeMsg(**welcome, agents=["a"], max_agents=4))).max_agents == 4

    hello = {
        "v": 1,
        "type": "hello",
        "engine": "e",
        "session": "s1",
        "tools": [{"name": "wait", "parameters": {"type": "object", "properties": {}}}],
    }
    assert decode(msgpack.packb({**hello, "agents": ["npc_0", "npc_1"]})).crowd_size == 2
    assert decode(msgpack.packb(hello)).crowd is False
    for bad, words in [
        ({"agents": ["npc 0"]}, "hello.agents"),
        ({"agents": ["a", "a"]}, "more than once"),
        (
            {
                "agents": [],
            },
            "max_agents is required",
        ),
        ({"max_agents": 4}, "needs hello.agents"),
        ({"agents": ["a"], "lockstep": 2}, "lockstep must be 0"),
    ]:
        with pytest.raises(ProtocolError) as err:
            decode(msgpack.packb({**hello, **bad}))
        assert err.value.code == "bad_field" and err.value.fatal and words in err.value.message, bad
    with pytest.raises(ProtocolError) as err:
        decode(msgpack.packb({"v": 1, "type": "obs", "seq": 1, "frame": 1, "text": "x", "agent": "npc 0"}))
    assert err.value.code == "bad_field" and err.value.message.startswith("obs.agent must be an agent id")


# --------------------------------------------------------------------------- the engine's crowd


@pytest.mark.parametrize("n", [4, 16])
def test_every_agent_is_observed_every_frame_and_each_call_reaches_its_npc(engines, n):
    endpoint = free_endpoint()
    engine = engines(endpoint, f"crowd{n}", "--agents", str(n), "--quiet")
    world = make_engine_crowd_world(f"engine:{endpoint}", agents=n, wait_s=WAIT_S)
    try:
        agents = [f"npc_{k}" for k in range(n)]
        assert world.agents == agents and isinstance(world, EngineCrowdWorld)
        assert isinstance(world, CrowdWorld)  # the control loop's protocol, by shape
        assert len(world.tools) == 5 and world.describe()["engine"]["max_agents"] == n
        # each NPC is told to aim its own way (aim persists, and the observation text shows it)
        want = {a: DIRS[k % 8] for k, a in enumerate(agents)}
        for _ in range(15):
            obs = world.observe_all()
            assert set(obs) == set(agents)  # every agent has a fresh observation at every tick
            for agent in obs:
                world.apply_call(agent, Call("aim", {"direction": want[agent]}))
            time.sleep(0.05)
        until(lambda: all(world.describe()["per_agent"][a]["states"]["in_flight"] == 0 for a in agents))
        texts = until(
            lambda: (o := world.observe_all()) and all(f"aim={want[a]} " in o[a].text for a in agents) and o
        )
        assert all(texts[a].agent == a for a in agents)
        for agent in agents:
            per = world.describe()["per_agent"][agent]
            assert per["calls"] == 15 and per["states"] == {"done": 15, "in_flight": 0}
            assert per["missed"] == 0 and per["observed"] >= 16
            assert (
                world.history(agent)[-1] == f'aim(direction="{want[agent]}")@f15 done: '
                f'{{"aim": "{want[agent]}"}}'
            )
        # the engine stops (its bye comes after its last observations on the same socket)
        assert engine.stop() == 0
        until(lambda: not world.bridge.connected)
        assert [e["event"] for e in world.bridge.stats()["events"]][-1] == "engine_bye"
        # no engine: the roster stays (its agent-ticks are counted) and observing says why
        assert world.agents == agents
        with pytest.raises(NoObservation, match=f"no engine connected \\({n} agents missed this tick\\)"):
            world.observe_all()
        assert all(world.describe()["per_agent"][a]["missed"] == 1 for a in agents)
        assert world.apply_call("npc_0", Call("wait", {})).state == "rejected"
    finally:
        world.close()
    stats = engine.events("stats")[-1]
    # the engine sent one observation per NPC per observation frame, and the bridge got them all
    sent = {a: s["obs_sent"] for a, s in stats["agents"].items()}
    assert len(set(sent.values())) == 1 and sent == world.bridge.stats()["obs_by_agent"]
    # every call was applied to the NPC it named, once, with the observation it answered
    applied = engine.events("call")
    assert Counter(c["agent"] for c in applied) == {a: 15 for a in agents}
    assert all(c["arguments"] == {"direction": want[c["agent"]]} and c["obs_seq"] > 0 for c in applied)
    assert {a: s["calls_applied"] for a, s in stats["agents"].items()} == {a: 15 for a in agents}
    counts = world.bridge.stats()["counts"]
    assert balanced(counts) and counts["done"] == 15 * n and counts["agents_joined"] == n


def test_an_agent_leaves_and_joins_again(engines):
    endpoint = free_endpoint()
    # every 0.4 s the last NPC (npc_3) leaves with bye {agent} or comes back with its next observation
    engine = engines(endpoint, "churn", "--agents", "4", "--churn", "0.4", "--quiet")
    world = make_engine_crowd_world(f"engine:{endpoint}", agents=4, wait_s=WAIT_S)
    try:
        seen: list[bool] = []
        refused = None
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            obs = world.observe_all()
            present = "npc_3" in world.agents
            assert {"npc_0", "npc_1", "npc_2"} <= set(obs)
            if not present:
                assert "npc_3" not in obs
                assert world.fallback("npc_3", "default") == "hold"  # nobody there to send it to
                handle = world.apply_call("npc_3", Call("wait", {}))
                if handle.state == "rejected":  # it may have come back between the two reads
                    refused = handle
            seen.append(present)
            time.sleep(0.03)
        # a fallback for a present agent sends the engine's default call (wait()) to that agent only
        assert world.fallback("npc_0", "default") == "default"
        per = world.describe()["per_agent"]
        assert per["npc_0"]["fallbacks"] == {"default": 1} and per["npc_0"]["calls"] == 1
        assert per["npc_3"]["fallbacks"]["hold"] >= 1 and per["npc_1"]["calls"] == 0
        until(lambda: [(c["agent"], c["name"]) for c in engine.events("call") if c["agent"] != "npc_3"])
        assert [(c["agent"], c["name"]) for c in engine.events("call") if c["agent"] != "npc_3"] == [
            ("npc_0", "wait")
        ]
        changes = sum(a != b for a, b in zip(seen, seen[1:], strict=False))
        assert changes >= 2 and False in seen  # it left and came back (at least once)
        assert refused is not None
        with pytest.raises(Exception, match="unknown_agent: agent 'npc_3' is not present"):
            refused.result.result(timeout=0)
        counts = world.bridge.stats()["counts"]
        assert counts["agents_left"] >= 1 and counts["agents_joined"] >= 5
        events = [e["event"] for e in world.bridge.stats()["events"]]
        assert events.count("agent_left") == counts["agents_left"]
        assert events.count("agent_joined") == counts["agents_joined"] - 4  # the hello's roster has none
        # every leave the engine logged reached the bridge (and no other)
        logged = len(engine.events("agent_leave"))
        until(lambda: world.bridge.stats()["counts"]["agents_left"] >= logged)
        assert world.bridge.stats()["counts"]["agents_left"] <= len(engine.events("agent_leave"))
    finally:
        world.close()


def test_bad_agent_ids_get_one_clear_error(engines, tmp_path):
    # 1. an engine whose agent ids are not ids: its hello is refused, once, fatally, naming the field
    endpoint = free_endpoint()
    bad = engines(endpoint, "bad_ids", "--agents", "2", "--agent-prefix", "npc ", "--quiet")
    with pytest.raises(EngineWorldError) as err:
        make_engine_crowd_world(f"engine:{endpoint}", agents=2, wait_s=WAIT_S)
    assert "hello.agents" in str(err.value) and "agent id" in str(err.value) and "\n" not in str(err.value)
    assert bad.proc.wait(WAIT_S) == 3
    assert bad.stderr().count("tickcall error bad_field") == 1

    # 2. a call for an agent the engine does not have: rejected with the reason, never sent
    endpoint = free_endpoint()
    good = engines(endpoint, "good", "--agents", "2", "--quiet")
    world = make_engine_crowd_world(f"engine:{endpoint}", agents=2, wait_s=WAIT_S)
    try:
        handle = world.apply_call("npc_9", Call("wait", {}))
        assert handle.state == "rejected"
        with pytest.raises(Exception, match="unknown_agent: agent 'npc_9' is not present"):
            handle.result.result(timeout=0)
        assert world.describe()["per_agent"]["npc_9"]["states"] == {"rejected": 1, "in_flight": 0}
    finally:
        world.close()
    good.stop()
    assert good.events("stats")[-1]["calls_received"] == 0

    # 3. observations with wrong agent ids (a raw peer: the C++ engine never sends these): one error each
    with EngineBridge(endpoint="tcp://127.0.0.1:0") as bridge:
        ctx = zmq.Context()
        peer = ctx.socket(zmq.DEALER)
        peer.setsockopt(zmq.LINGER, 0)
        peer.connect(bridge.endpoint)
        tools = [{"name": "wait", "parameters": {"type": "object", "properties": {}}}]

        def say(**msg):
            peer.send(msgpack.packb({"v": 1, **msg}))

        def errors_back(n):  # the first n error replies (the bridge's pings come in between)
            out: list[dict] = []
            end = time.monotonic() + WAIT_S
            while len(out) < n and time.monotonic() < end:
                if peer.poll(50):
                    msg = msgpack.unpackb(peer.recv())
                    out += [msg] if msg["type"] == "error" else []
            return out

        try:
            say(type="hello", engine="raw", session="r1", tools=tools, agents=["a"], max_agents=2)
            assert peer.poll(int(WAIT_S * 1000)) and msgpack.unpackb(peer.recv())["max_agents"] == 2
            say(type="obs", seq=1, frame=1, text="x", agent="a")
            say(type="obs", seq=1, frame=1, text="x", agent="b c")  # not an id
            say(type="obs", seq=2, frame=2, text="x")  # no agent in a crowd
            say(type="obs", seq=1, frame=1, text="x", agent="b")  # joins: 2 of 2
            say(type="obs", seq=1, frame=1, text="x", agent="c")  # a third: over max_agents
            say(type="bye", agent="zz")  # leaving, never joined
            errors = errors_back(4)
            assert [e["code"] for e in errors] == ["bad_field"] * 4 and not any(e["fatal"] for e in errors)
            text = [e["message"] for e in errors]
            assert text[0].startswith("obs.agent must be an agent id") and "'b c'" in text[0]
            assert text[1].startswith("obs.agent is required")
            assert "new agent but 2 are present already (hello.max_agents=2)" in text[2]
            assert text[3].startswith("bye.agent='zz' is not present")
            assert bridge.roster() == ["a", "b"] and set(bridge.latest_observations()) == {"a", "b"}
            assert bridge.stats()["errors_by_code"] == {"bad_field": 4}
            say(type="episode", index=0, length=300, agent="b", **{"return": 1.5})
            until(lambda: bridge.episodes)
            assert bridge.episodes[0]["agent"] == "b" and bridge.episodes[0]["return"] == 1.5
            # a single-agent session (a new hello without agents) refuses agent ids
            say(type="hello", engine="raw", session="r2", tools=tools)
            until(lambda: bridge.session is not None and bridge.session.id == "r2")
            say(type="obs", seq=1, frame=1, text="x", agent="a")
            say(type="bye", agent="a")
            errors = errors_back(2)
            assert [e["message"].split(":")[0] for e in errors] == ["obs.agent='a'", "bye.agent='a'"]
            assert all("declared no agents" in e["message"] for e in errors)
            assert bridge.session is not None and bridge.roster() == []  # the session goes on
        finally:
            peer.close()
            ctx.term()


# --------------------------------------------------------------------------- with the crowd loop


@pytest.fixture
def policy_service():
    from tickcall.agent.config import ServeConfig
    from tickcall.agent.engines import build_engine
    from tickcall.agent.server import PolicyServer

    srv = PolicyServer(
        build_engine({"backend": "random", "seed": 1}),
        ServeConfig(bind="tcp://127.0.0.1:0", max_streams_per_client=32),
    )
    endpoint = srv.start()
    yield endpoint
    srv.stop()


def test_the_crowd_loop_plays_the_engine_and_a_killed_engine_is_counted(engines, policy_service):
    """CrowdLoop + EngineCrowdWorld + the real C++ engine: 4 NPCs at 10 Hz, the engine SIGKILLed
    mid-run and started again. Every agent-tick has one outcome (agents x ticks); the dead engine's
    ticks are ``error`` records (no observation), not missing ones; every call the loop applied reached
    the NPC it was decided for."""
    from tickcall.control_loop.crowd import CrowdLoop, crowd_policy
    from tickcall.control_loop.loop import LoopSettings
    from tickcall.control_loop.records import count_outcomes

    endpoint = free_endpoint()
    first = engines(endpoint, "first", "--agents", "4", "--quiet")
    world = make_engine_crowd_world(f"engine:{endpoint}", agents=4, **FAST)
    client = crowd_policy([policy_service], timeout_ms=5000)
    second = None
    try:
        client.register(world.tools)
        loop = CrowdLoop(LoopSettings(rate_hz=10, deadline_ms=90, in_flight_timeout_ms=1000), client, world)
        real = world.observe_all
        calls = {"n": 0}

        def observe_all():
            nonlocal second
            calls["n"] += 1
            if calls["n"] == 12:
                first.kill()  # the engine dies between two ticks
            if calls["n"] == 22:
                second = engines(endpoint, "second", "--agents", "4", "--quiet")
            return real()

        world.observe_all = observe_all
        res = loop.run(max_ticks=45)
        until(lambda: all(p["states"]["in_flight"] == 0 for p in world.describe()["per_agent"].values()))
        lost_world = world.describe()
    finally:
        client.close()
        world.close()
    ticks = 45
    counts = count_outcomes(res.records)
    assert len(res.records) == 4 * ticks == sum(counts.values())  # every agent-tick, once
    assert {r.agent for r in res.records} == {f"npc_{k}" for k in range(4)}
    dead = [
        r
        for r in res.records
        if r.outcome == "error" and ("no observation" in r.reason or "no engine connected" in r.reason)
    ]
    assert len(dead) >= 4 * 3 and len(dead) % 4 == 0  # whole ticks of the dead engine, every agent
    assert counts["ok"] >= 4 * 10  # the loop played before the kill and after the restart
    assert any(r.outcome == "ok" for r in res.records if r.tick > 30)  # the new engine was picked up
    assert lost_world["bridge"]["counts"]["sessions"] == 2 and balanced(lost_world["bridge"]["counts"])
    # each agent's applied calls (both engine processes) are calls the loop decided for that agent
    second.stop()
    for agent in (f"npc_{k}" for k in range(4)):
        decided = Counter(
            json.dumps(r.call, sort_keys=True) for r in res.records if r.agent == agent and r.outcome == "ok"
        )
        applied = Counter(
            json.dumps({"name": c["name"], "arguments": c["arguments"]}, sort_keys=True)
            for e in (first, second)
            for c in e.events("call")
            if c["agent"] == agent
        )
        assert applied and not applied - decided, agent
        states = lost_world["per_agent"][agent]["states"]
        assert lost_world["per_agent"][agent]["calls"] == sum(decided.values())
        # a call the engine applied just before it was killed may still end ``lost`` (its result died
        # with the process); nothing else separates the bridge's count from the engine's log
        ended = states.get("done", 0) + states.get("failed", 0)
        assert ended <= sum(applied.values()) <= ended + states.get("lost", 0)


def test_bridge_check_reports_a_crowd(engines):
    """``tickcall bridge check`` against a crowd engine: one call per agent per round, obs per agent."""
    import io

    from tickcall.envs.engine_bridge_cli import check

    endpoint = free_endpoint()
    engines(endpoint, "check", "--agents", "3", "--quiet")
    out = io.StringIO()
    report = check(endpoint, seconds=1.0, rate_hz=10, policy="arena-expert", wait_s=WAIT_S, out=out)
    assert report["ok"] and set(report["obs_by_agent"]) == {"npc_0", "npc_1", "npc_2"}
    assert report["calls"]["done"] == report["calls"]["calls"] > 0
    assert "a crowd (protocol 1.1): 3 agents at hello" in out.getvalue()
    assert "agents                  3, observations per agent" in out.getvalue()


def test_an_engine_with_more_agents_than_the_run_is_refused_in_one_line(engines):
    endpoint = free_endpoint()
    engines(endpoint, "big", "--agents", "8", "--quiet")
    with pytest.raises(EngineWorldError) as err:
        make_engine_crowd_world(f"engine:{endpoint}", agents=4, wait_s=WAIT_S)
    assert "up to 8 agents at once" in str(err.value) and "--agents 8" in str(err.value)
    # and a single-agent world refuses a crowd engine, saying how to run it
    from tickcall.bridge_world import make_engine_world

    with pytest.raises(EngineWorldError, match=r"runs a crowd of up to 8 agents .*--agents 8"):
        make_engine_world(f"engine:{endpoint}", wait_s=WAIT_S)
