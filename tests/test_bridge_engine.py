"""The engine bridge end to end with the C++ reference engine, built in this test run.

``scripts/build_reference_engine.sh`` installs libzmq3-dev and libmsgpack-cxx-dev when missing and
compiles engines/reference. Nothing is faked: a real C++ process with its own 60 Hz frame loop, real
sockets, the real control loop (Ray actors) and policy service. The model is the shipped default
when this checkout has one; otherwise the service runs the no-op engine (it always answers the first
tool, ``wait()``), which the test says in its output. Assertions are on accounting and behaviour,
never on how fast this machine is.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import free_endpoint
from polling import wait_for
from tickcall.envs.engine_bridge import BridgeConfig, EngineBridge
from tickcall.envs.engine_bridge_cli import arena_text_expert as text_expert
from tickcall.envs.engine_bridge_world import run_lockstep
from tickcall.models.calls import Call
from tickcall.models.tools import normalize_tools

ROOT = Path(__file__).resolve().parents[1]
ARENA_TEXT = re.compile(r"^tgt=(N|NE|E|SE|S|SW|W|NW) d=\d+\.\d aim=(N|NE|E|SE|S|SW|W|NW) "
                        r"cd=\d+ dcd=\d+ tl=-?\d+\.\d$")


# --------------------------------------------------------------------------- helpers






class Engine:
    """One reference-engine process (killed at the end if still running)."""

    def __init__(self, binary: str, endpoint: str, tmp: Path, name: str, *args: str) -> None:
        self.log = tmp / f"{name}.jsonl"
        self.err_path = tmp / f"{name}.stderr"
        self._err = open(self.err_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([binary, "--connect", endpoint, "--log", str(self.log), *args],
                                     stdout=subprocess.DEVNULL, stderr=self._err)

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

    def events(self, kind: str | None = None) -> list[dict]:
        if not self.log.exists():
            return []
        rows = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [r for r in rows if kind is None or r["event"] == kind]


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


def balanced(counts: dict) -> bool:
    return counts["calls"] == sum(counts[k] for k in ("done", "failed", "rejected", "lost", "timeout",
                                                      "in_flight"))


# --------------------------------------------------------------------------- without the loop


def test_reference_engine_offers_the_arena_tools_and_text(engines):
    """The C++ arena is the same game the shipped model learned: identical tool schemas (so the prompt
    prefix is byte-identical) and observation text of the same shape."""
    from tickcall.envs.arena import ARENA_TOOLS

    with EngineBridge(endpoint="tcp://127.0.0.1:0") as bridge:
        engines(bridge.endpoint, "arena")
        hello = bridge.wait_for_engine(30)
        assert json.dumps(hello.tools) == json.dumps(ARENA_TOOLS)
        assert normalize_tools(hello.tools) == normalize_tools(ARENA_TOOLS)
        assert (hello.default_call.name, hello.default_call.arguments) == ("wait", {})
        obs = bridge.wait_observation(after_seq=0, timeout_s=10)
        assert obs is not None and ARENA_TEXT.match(bridge.observation_text(obs)), obs


def test_engine_world_resolves_futures_with_the_engines_results(engines):
    """The world the control loop gets: observations as text, calls through the AsyncFC `engine` lane
    whose futures end with the engine's result value or its error (fire twice: the second one hits the
    cooldown), history lines for the next turn, the engine's default call as the fallback."""
    from tickcall.bridge_world import make_engine_world
    from tickcall.world import WorldSpec

    endpoint = free_endpoint()
    engines(endpoint, "world", "--seed", "4")
    world = make_engine_world(WorldSpec(env=f"engine:{endpoint}", env_kwargs={"wait_s": 30}))
    try:
        assert [s.name for s in world.specs] == ["wait", "move", "aim", "fire", "dash"]
        obs = world.observe()
        assert ARENA_TEXT.match(obs.text) and obs.seq >= 1 and obs.taken_at <= time.monotonic()
        first = world.hands.dispatch(Call("fire", {}), seq=1)
        assert first.wait(5) and first.state.value == "done" and set(first.result) == {"hit"}
        second = world.hands.dispatch(Call("fire", {}), seq=2)
        assert second.wait(5) and second.state.value == "failed"
        assert second.error.startswith("cooldown: fire is cooling down")
        lines = world.hands.history_lines(4)
        assert lines[-2].startswith("fire()@") and " done: " in lines[-2] and "hit" in lines[-2], lines
        assert lines[-1].startswith("fire()@") and "failed: cooldown" in lines[-1]
        assert world.fallback("default") == "default" and world.fallback("hold") == "hold"
        d = world.describe()
        assert d["engine"]["name"] == "tickcall-reference-engine" and d["hands"]["balanced"]
        assert wait_until_counts(world, lambda c: c["done"] == 2 and c["failed"] == 1 and c["calls"] == 3)
    finally:
        world.close()
    assert not world.bridge.connected


def wait_until_counts(world, pred, timeout_s: float = 5.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred(world.bridge.stats()["counts"]):
            return True
        time.sleep(0.01)
    return pred(world.bridge.stats()["counts"])


def test_tickcall_restarts_under_a_running_engine(engines):
    """tickcall goes away (bye) and comes back on the same endpoint with a new epoch: the same engine
    process, still running its frames, says hello again and is served by the new bridge."""
    endpoint = free_endpoint()
    eng = engines(endpoint, "survivor")
    with EngineBridge(endpoint=endpoint) as first:
        session = first.wait_for_engine(30).session
        assert first.send_call(Call("wait", {})).result.result(timeout=10) is not None
    time.sleep(0.5)  # no tickcall at all for a while: the engine keeps its frame loop going
    with EngineBridge(endpoint=endpoint) as second:
        assert second.epoch != first.epoch
        assert second.wait_for_engine(30).session == session  # the same process, a new bridge
        assert second.wait_observation(after_seq=0, timeout_s=10) is not None
        assert second.send_call(Call("wait", {})).result.result(timeout=10) is not None
    assert eng.proc.poll() is None
    assert eng.stop() == 0 and len(eng.events("welcome")) == 2


def test_lockstep_is_deterministic_and_applies_every_call(engines):
    """LOCK-STEP: two runs of the same seeded engine with the same (text) expert give identical
    observations, calls and results; every call is acked and applied by the engine."""
    runs = []
    for k in range(2):
        with EngineBridge(endpoint="tcp://127.0.0.1:0") as bridge:
            eng = engines(bridge.endpoint, f"lockstep{k}", "--lockstep", "3", "--seed", "7")
            assert bridge.wait_for_engine(30).lockstep == 3
            res = run_lockstep(bridge, text_expert, steps=150)
            stats = bridge.stats()
        eng.stop()
        assert res.timeouts == 0 and len(res.records) == 150
        assert set(res.states) <= {"done", "failed"}, res.states  # failed = the engine's cooldown
        applied = eng.events("call")
        assert [c["id"] for c in applied] == [r for r in range(1, 151)]
        assert stats["counts"]["done"] + stats["counts"]["failed"] == 150 and balanced(stats["counts"])
        assert stats["ack_ms"]["n"] == 150
        runs.append([(r.text, r.call, r.state, r.code) for r in res.records])
    assert runs[0] == runs[1]
    assert any(c == {"name": "fire", "arguments": {}} for _, c, s, _ in runs[0] if s == "done")


def test_arena_port_scores_like_the_python_arena(engines):
    """LOCK-STEP, one physics step per decision: the scripted expert scores on the C++ arena what it
    scores on tickcall/Arena-v0 (same rules; the target positions come from a different RNG), and far
    above a random policy there (about -1)."""
    from tickcall.envs.evaluate import evaluate

    cpp = []
    for seed in range(3):
        with EngineBridge(endpoint="tcp://127.0.0.1:0") as bridge:
            engines(bridge.endpoint, f"arena-{seed}", "--lockstep", "3", "--seed", str(seed))
            bridge.wait_for_engine(30)
            assert run_lockstep(bridge, text_expert, steps=300).timeouts == 0
            assert wait_until_episode(bridge)
            cpp.append(bridge.stats()["episodes"][0]["return"])
    py = evaluate("tickcall/Arena-v0", "expert", episodes=3, seed=0).returns
    mean_cpp, mean_py = sum(cpp) / 3, sum(py) / 3
    assert min(cpp) > 20 and abs(mean_cpp - mean_py) < 0.25 * mean_py, (cpp, py)


def test_cartpole_physics_hold_up_with_the_expert(engines):
    """LOCK-STEP at 50 frames/s, one physics step per decision: the C++ CartPole (gymnasium's equations)
    with the linear expert of envs.experts, reading the text, balances the pole for the full 500 steps,
    as it does in gymnasium; a policy that always pushes left drops it within a few dozen steps."""
    from tickcall.envs.experts import cartpole_action

    def expert(text: str) -> Call:
        obs = [float(kv.split("=")[1]) for kv in text.split()]
        return Call("push", {"direction": "right" if cartpole_action(obs) else "left"})

    returns = {}
    for name, policy, steps in (("expert", expert, 505),
                                ("left", lambda _t: Call("push", {"direction": "left"}), 100)):
        with EngineBridge(endpoint="tcp://127.0.0.1:0") as bridge:
            engines(bridge.endpoint, f"cartpole-{name}", "--game", "cartpole", "--frame-hz", "50",
                    "--lockstep", "1", "--seed", "0")
            assert [t["function"]["name"] for t in bridge.wait_for_engine(30).tools] == ["push"]
            res = run_lockstep(bridge, policy, steps=steps)
            assert res.timeouts == 0 and set(res.states) == {"done"}
            assert re.match(r"^x=[+-]\d\.\d{3} v=[+-]\d\.\d{3} a=[+-]\d\.\d{3} w=[+-]\d\.\d{3}$",
                            res.records[0].text)
            assert wait_until_episode(bridge)
            returns[name] = bridge.stats()["episodes"][0]
    assert returns["expert"]["return"] == 500 and returns["expert"]["reason"] == "time"
    assert returns["left"]["return"] < 100 and returns["left"]["reason"] == "fell"


def wait_until_episode(bridge, timeout_s: float = 5.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and not bridge.stats()["episodes"]:
        time.sleep(0.01)
    return bool(bridge.stats()["episodes"])


def test_values_format_over_curve(engines, tmp_path):
    from tickcall.agent.security import generate_keys, load_public_key

    secret_file = generate_keys(tmp_path / "keys", names=("bridge",))["bridge"]
    pub = load_public_key(secret_file)
    with EngineBridge(BridgeConfig(endpoint="tcp://127.0.0.1:0", curve_secret_key=str(secret_file))) as bridge:
        engines(bridge.endpoint, "values", "--obs-format", "values", "--server-key", pub.decode())
        hello = bridge.wait_for_engine(30)
        assert [f.name for f in hello.observation.fields] == ["x", "y", "dx", "dy", "aim", "cd", "dcd", "tl"]
        obs = bridge.wait_observation(after_seq=0, timeout_s=10)
        assert obs.text is None and set(obs.values) == {"x", "y", "dx", "dy", "aim", "cd", "dcd", "tl"}
        assert re.match(r"^x=\+\d+\.\d\d y=\+\d+\.\d\d dx=[+-]\d+\.\d\d dy=[+-]\d+\.\d\d aim=[NESW]+ "
                        r"cd=\d+ dcd=\d+ tl=\+\d\.\d\d$", bridge.observation_text(obs))
        out = bridge.send_call(Call("move", {"direction": "E", "speed": "walk"})).result.result(timeout=10)
        assert out.value == {"moving": "E"}


def test_a_second_engine_supersedes_the_first(engines):
    with EngineBridge(endpoint="tcp://127.0.0.1:0") as bridge:
        first = engines(bridge.endpoint, "first-of-two", "--name", "one")
        assert bridge.wait_for_engine(30).engine == "one"
        engines(bridge.endpoint, "second-of-two", "--name", "two")
        assert first.proc.wait(30) == 4  # told `superseded` (fatal), it stops
        assert "tickcall error superseded" in first.stderr()
        assert bridge.session.hello.engine == "two"
        assert bridge.send_call(Call("wait", {})).result.result(timeout=10) is not None


def test_wrong_version_engine_is_told_and_exits(engines):
    with EngineBridge(endpoint="tcp://127.0.0.1:0") as bridge:
        eng = engines(bridge.endpoint, "v2", "--protocol-version", "2")
        assert eng.proc.wait(30) == 3
        assert "tickcall error version_mismatch" in eng.stderr()
        assert "speaks v in [1]" in eng.stderr()
        assert not bridge.connected and bridge.stats()["errors_by_code"]["version_mismatch"] >= 1


def test_check_command_real_time_and_lockstep(engines, tmp_path):
    from tickcall.envs.engine_bridge_cli import main

    endpoint = free_endpoint()
    engines(endpoint, "check")
    assert main(["check", "--endpoint", endpoint, "--seconds", "1", "--json", str(tmp_path / "c.json")]) == 0
    r = json.loads((tmp_path / "c.json").read_text())
    assert r["ok"] and r["calls"]["calls"] == r["calls"]["done"] > 0 and r["ack_ms"]["n"] == r["calls"]["done"]
    assert r["obs_received"] > 0 and ARENA_TEXT.match(r["sample_observations"][0])
    endpoint = free_endpoint()
    engines(endpoint, "check-lockstep", "--lockstep", "3")
    assert main(["check", "--endpoint", endpoint, "--steps", "20", "--call", '{"name": "fire", "arguments": {}}',
                 "--json", str(tmp_path / "l.json")]) == 0
    r = json.loads((tmp_path / "l.json").read_text())
    assert r["lockstep_states"]["done"] + r["lockstep_states"].get("failed", 0) == 20
    assert r["lockstep_states"].get("failed", 0) > 0  # fire every step: the engine reports its cooldown


# --------------------------------------------------------------------------- with the control loop

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def noop_service(ray_session):
    from tickcall.agent.actor import start_policy_service

    actor, endpoint = start_policy_service({"backend": "noop"}, "tcp://127.0.0.1:0")
    yield endpoint
    try:
        ray.get(actor.stop.remote(), timeout=10)
    finally:
        ray.kill(actor)


def start_loop(service_endpoint: str, engine_endpoint: str):
    from tickcall.control_loop.actor import start_loop_actor
    from tickcall.control_loop.loop import LoopSettings

    from tickcall.world import WorldSpec, world_factory

    spec = WorldSpec(env=f"engine:{engine_endpoint}", env_kwargs={"wait_s": 60})
    return start_loop_actor(LoopSettings(rate_hz=16.0), world_factory(spec), service_endpoint,
                            client_timeout_ms=1000)


def outcomes(loop) -> dict:
    return ray.get(loop.status.remote())["outcomes"]


def count(records: list[dict]) -> dict[str, int]:
    outs = {k: 0 for k in ("ok", "late", "fallback", "skipped", "error")}
    for r in records:
        outs[r["outcome"]] += 1
    return outs


@pytest.mark.slow
def test_tickcall_run_with_the_engine_10s_at_16hz(engines, ray_session, tmp_path):
    """`tickcall run --env engine:tcp://...` (run_job, the command's own code path): 10 s at 16 Hz,
    every tick accounted for, every dispatched call acked and applied by the C++ engine, the bridge's
    latencies in report.json."""
    from tickcall.control_loop.config import from_dict

    from tickcall.job import run_job

    # The no-op engine (always the first tool, wait()): this test is about the bridge, not a model's
    # skill. The shipped arena student learned the Python Arena's tools, not the C++ game's (other
    # names and arguments), so with it most calls are illegal and never reach the engine.
    endpoint = free_endpoint()
    eng = engines(endpoint, "run", "--seed", "3")
    cfg = from_dict({"env": f"engine:{endpoint}", "env_kwargs": {"wait_s": 60}, "backend": "noop",
                     "rate_hz": 16, "duration_s": 10, "report_dir": str(tmp_path / "report"),
                     "plots": False, "progress": False})
    outcome = run_job(cfg)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report == json.loads(json.dumps(outcome.report))
    ticks, outs = report["ticks"], report["outcomes"]
    assert ticks == 160 and sum(outs.values()) == ticks
    assert outs["ok"] >= ticks // 2, outs  # a broken bridge gives errors/fallbacks, not ok ticks
    world = report["world"]
    counts = world["bridge"]["counts"]
    assert world["engine"]["name"] == "tickcall-reference-engine"
    assert balanced(counts) and counts["in_flight"] == 0
    assert counts["lost"] == counts["timeout"] == counts["rejected"] == 0, counts
    hands = world["hands"]
    assert hands["balanced"] and hands["accepted"] == outs["ok"]  # every ok tick's call was dispatched
    # each call the engine lane ran went to the engine and ended there (a `latest` lane may supersede a
    # queued call that never ran, when the engine's previous result is slow to come back)
    ran = hands["states"]["done"] + hands["states"]["failed"] + hands["states"]["timed_out"]
    assert counts["calls"] == ran and hands["states"]["superseded"] + ran == hands["accepted"], (counts, hands)
    sent = counts["done"] + counts["failed"]
    assert sent == counts["calls"]
    assert world["bridge"]["ack_ms"]["n"] == sent and world["bridge"]["result_ms"]["n"] == sent
    assert eng.stop() == 0
    applied = eng.events("call")
    assert len(applied) == sent and [c["ok"] for c in applied].count(True) == counts["done"]
    print("loop latency ms", report["latency_ms"], "engine ack ms", world["bridge"]["ack_ms"],
          "engine result ms", world["bridge"]["result_ms"])


@pytest.mark.slow
def test_malformed_and_wrong_version_messages_leave_the_loop_unaffected(engines, noop_service):
    import msgpack
    import zmq
    from tickcall.envs.engine_bridge_protocol import encode

    endpoint = free_endpoint()
    engines(endpoint, "good", "--seed", "1")
    loop = start_loop(noop_service, endpoint)
    ctx = zmq.Context()
    rogue = ctx.socket(zmq.DEALER)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.connect(endpoint)
    try:
        ref = loop.run.remote(duration_s=6)
        assert wait_for(lambda: outcomes(loop).get("ok", 0) >= 16, 30, 0.1)
        bad = [(b"\x00\xc1junk", "malformed"), (msgpack.packb("hello"), "malformed"),
               (encode({"v": 9, "type": "obs", "seq": 1}), "version_mismatch"),
               (encode({"v": 1, "type": "warp"}), "unknown_type"),
               (encode({"v": 1, "type": "obs", "seq": 99, "frame": 1, "text": "x"}), "no_session"),
               (encode({"v": 1, "type": "hello", "engine": "r", "session": "r", "tools": []}), "bad_tools"),
               (encode({"v": 2, "type": "hello", "engine": "r", "session": "r", "tools": []}),
                "version_mismatch")]
        for payload, code in bad:
            rogue.send(payload)
            assert rogue.poll(5000), code
            reply = msgpack.unpackb(rogue.recv(), raw=False)
            assert reply["type"] == "error" and reply["code"] == code and reply["message"], reply
        v2 = engines(endpoint, "v2", "--protocol-version", "2")
        assert v2.proc.wait(30) == 3 and "version_mismatch" in v2.stderr()
        res = ray.get(ref, timeout=120)
    finally:
        rogue.close(0)
        ctx.term()
        ray.get(loop.close.remote(), timeout=10)
        ray.kill(loop)
    recs = res["records"]
    outs = count(recs)
    assert sum(outs.values()) == len(recs) == 96
    assert outs["error"] == 0 and outs["ok"] >= 48, (outs, [r for r in recs if r["outcome"] != "ok"])
    bridge = res["world"]["bridge"]
    assert bridge["counts"]["sessions"] == 1  # the good engine was never disturbed
    for code in ("malformed", "version_mismatch", "unknown_type", "no_session", "bad_tools"):
        assert bridge["errors_by_code"].get(code, 0) >= 1, bridge["errors_by_code"]


@pytest.mark.slow
def test_engine_killed_and_restarted_mid_run(engines, noop_service):
    """The engine dies (SIGKILL) mid-run: the loop keeps its rate, ticks without an observation are
    recorded and answered by the fallback, calls in flight end `lost`; a new engine process connects
    to the same endpoint and the loop resumes without a restart."""
    endpoint = free_endpoint()
    first = engines(endpoint, "first", "--seed", "1")
    loop = start_loop(noop_service, endpoint)
    try:
        ref = loop.run.remote(duration_s=12)
        assert wait_for(lambda: outcomes(loop).get("ok", 0) >= 24, 30, 0.1)
        first.kill()
        bad_before = sum(v for k, v in outcomes(loop).items() if k != "ok")
        assert wait_for(
            lambda: sum(v for k, v in outcomes(loop).items() if k != "ok") >= bad_before + 8, 10, 0.1
        )
        ok_gap = outcomes(loop).get("ok", 0)
        second = engines(endpoint, "second", "--seed", "2")
        assert wait_for(lambda: outcomes(loop).get("ok", 0) >= ok_gap + 16, 15, 0.1)
        res = ray.get(ref, timeout=120)
    finally:
        ray.get(loop.close.remote(), timeout=10)
        ray.kill(loop)
    recs = res["records"]
    outs = count(recs)
    assert len(recs) == 192 and sum(outs.values()) == 192  # 12 s at 16 Hz, every tick accounted for
    gap = [r for r in recs if r["outcome"] != "ok"]
    assert gap and all("NoObservation" in (r.get("reason") or "") for r in gap), gap[:3]
    assert all(r.get("fallback") for r in gap)
    last_gap = max(r["tick"] for r in gap)
    assert any(r["outcome"] == "ok" for r in recs if r["tick"] > last_gap)  # resumed
    bridge = res["world"]["bridge"]
    counts = bridge["counts"]
    assert balanced(counts) and counts["sessions"] == 2
    events = [e["event"] for e in bridge["events"]]
    assert events[0] == "engine_connected" and events[-1] == "engine_connected"
    assert "engine_lost" in events or "engine_restarted" in events
    assert second.stop() == 0
    logged = len(first.events("call")) + len(second.events("call"))
    ended = counts["done"] + counts["failed"]
    assert ended <= logged <= ended + counts["lost"]
