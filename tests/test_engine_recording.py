"""Recorded play from a game engine over the bridge (protocol 1.2: ``obs.played``, ``hello.game``).

Real parts only: the C++ reference engine built in this test run (its own AI, ``--ai chase``), real
ZeroMQ sockets, the real bridge, ``tickcall record`` in-process through ``tickcall.cli.main``, the
dataset read back with ``models.training.dataset.read_dataset``. A raw DEALER peer (pyzmq) sends the
malformed ``played`` values the C++ engine never would. The engine runs its game time 20x faster
than the wall clock (``--speed 20``: a 15 s episode in 0.75 s) so the recordings stay short; no
assertion depends on how fast this machine is.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import msgpack
import pytest
import zmq
from helpers import free_endpoint
from polling import wait_for
from tickcall.envs.arena import ARENA_TOOLS
from tickcall.envs.engine_bridge import BridgeConfig, EngineBridge, EngineCallError
from tickcall.envs.engine_bridge_cli import arena_text_expert
from tickcall.envs.engine_bridge_protocol import (
    ERROR_CODES,
    ObsMsg,
    PlayedCall,
    PlayedObsMsg,
    ProtocolError,
    decode,
    encode,
)
from tickcall.envs.engine_recording import RecordingError, record_engine
from tickcall.models.calls import Call
from tickcall.models.tools import normalize_tools
from tickcall.models.training.dataset import read_dataset


class Engine:
    """One reference-engine process with a --log file; stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, binary: str, endpoint: str, tmp: Path, *args: str) -> None:
        self.log = tmp / "engine.jsonl"
        self.proc = subprocess.Popen(
            [binary, "--connect", endpoint, "--log", str(self.log), "--quiet", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def events(self, kind: str) -> list[dict]:
        rows = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [r for r in rows if r["event"] == kind]


@pytest.fixture
def engine(engine_bin, tmp_path):
    started: list[Engine] = []

    def start(endpoint: str, *args: str) -> Engine:
        e = Engine(engine_bin, endpoint, tmp_path, *args)
        started.append(e)
        return e

    yield start
    for e in started:
        e.stop()


# --------------------------------------------------------------------------- the engine's AI


def test_engine_ai_sends_what_it_played_and_refuses_tickcalls_calls(engine):
    """``--ai chase``: the hello names its game, observations carry ``played`` = tickcall's ArenaExpert on
    that observation's text (the same decision rule, so returns are comparable), at ~16 decisions per
    second of game time; a call from tickcall is refused with ``ai_playing`` and never applied."""
    with EngineBridge(BridgeConfig(endpoint="tcp://127.0.0.1:0", keep_played=10_000)) as bridge:
        eng = engine(bridge.endpoint, "--ai", "chase", "--speed", "20", "--seed", "3")
        hello = bridge.wait_for_engine(30)
        assert hello.game == "tickcall/Arena-v0"
        assert normalize_tools(hello.tools) == normalize_tools(ARENA_TOOLS)
        played: list = []
        assert wait_for(lambda: played.extend(bridge.take_played()) or len(played) >= 200, 20, 0.02)
        for obs in played:
            assert obs.played == arena_text_expert(bridge.observation_text(obs)), obs
        names = {o.played.name for o in played}
        assert {"aim", "fire"} <= names and names <= {"wait", "move", "aim", "fire", "dash"}
        # 16 decisions per game second; observations go out at 30 per game second
        assert bridge.counts["obs_played"] < bridge.counts["obs_received"]
        handle = bridge.send_call(Call("fire", {}))
        with pytest.raises(EngineCallError) as err:
            handle.result.result(timeout=5)
        assert err.value.state == "failed" and err.value.code == "ai_playing"
    assert eng.stop() == 0
    assert not eng.events("call")  # tickcall's call was never applied; the AI's were
    ai = eng.events("ai_call")
    assert ai and all(c["ok"] for c in ai if c["name"] not in ("fire", "dash"))


def test_ai_epsilon_spreads_the_states_but_played_stays_the_ais_decision(engine):
    """``--ai-epsilon 1``: every decision is replaced in the game by a random legal call, and every
    ``played`` still names what the AI decided on that observation (the label of a recording)."""
    with EngineBridge(BridgeConfig(endpoint="tcp://127.0.0.1:0", keep_played=10_000)) as bridge:
        eng = engine(bridge.endpoint, "--ai", "chase", "--ai-epsilon", "1", "--speed", "20")
        bridge.wait_for_engine(30)
        played: list = []
        assert wait_for(lambda: played.extend(bridge.take_played()) or len(played) >= 100, 20, 0.02)
        assert all(o.played == arena_text_expert(bridge.observation_text(o)) for o in played)
    assert eng.stop() == 0
    [stats] = eng.events("stats")
    assert stats["ai_noise_calls"] == stats["ai_calls"] > 0
    applied = [Call(c["name"], c["arguments"]) for c in eng.events("ai_call")]
    assert len({c.name for c in applied}) == 5  # random tools, not the AI's


def test_cartpole_ai_balances_and_says_what_it_pushed(engine):
    """``--game cartpole --ai balance``: tickcall's CartPole expert (push right when 0.05 x + 0.3 v + 3 a +
    0.6 w > 0) in C++: what it played agrees with the expert on the observation's text (3 decimals: only
    turns beside the boundary may differ). How long the pole stays up depends on the machine keeping
    20x real time, so no return is asserted."""
    from tickcall.envs.experts import cartpole_action

    with EngineBridge(BridgeConfig(endpoint="tcp://127.0.0.1:0", keep_played=10_000)) as bridge:
        engine(bridge.endpoint, "--game", "cartpole", "--ai", "balance", "--speed", "20")
        hello = bridge.wait_for_engine(30)
        assert hello.game is None  # its text is not CartPole-v1's: no gymnasium id claimed
        assert wait_for(lambda: len(bridge.episodes) >= 1 and bridge.counts["obs_played"] > 300, 20, 0.02)
        played = bridge.take_played()
        values = [[float(kv.split("=")[1]) for kv in bridge.observation_text(o).split()] for o in played]
        agree = sum(
            o.played.arguments["direction"] == ("right" if cartpole_action(v) else "left")
            for o, v in zip(played, values, strict=True)
        )
        assert len(played) > 100 and agree >= 0.95 * len(played)


def test_engine_without_ai_is_unchanged(engine):
    """Without ``--ai`` observations carry no ``played`` (they decode to the 1.1 ``ObsMsg``) and
    tickcall's calls apply as before."""
    with EngineBridge(BridgeConfig(endpoint="tcp://127.0.0.1:0", keep_played=100)) as bridge:
        engine(bridge.endpoint)
        bridge.wait_for_engine(30)
        obs = bridge.wait_observation(after_seq=0, timeout_s=10)
        assert obs is not None and obs.played is None
        handle = bridge.send_call(Call("aim", {"direction": "E"}))
        assert handle.result.result(timeout=5).value == {"aim": "E"}
        assert bridge.take_played() == [] and bridge.counts["obs_played"] == 0


def test_advising_ai_labels_every_observation_while_tickcalls_calls_apply(engine):
    """``--ai chase --ai-advise --ai-hz 1000``: tickcall plays (its calls are applied, with results),
    and every observation carries the AI's call on it (the label of a DAgger row); the AI's calls are
    never applied (no ``ai_call`` event)."""
    with EngineBridge(BridgeConfig(endpoint="tcp://127.0.0.1:0", keep_played=10_000)) as bridge:
        eng = engine(bridge.endpoint, "--ai", "chase", "--ai-advise", "--ai-hz", "1000", "--seed", "5")
        bridge.wait_for_engine(30)
        handle = bridge.send_call(Call("aim", {"direction": "E"}))
        assert handle.result.result(timeout=5).value == {"aim": "E"}
        played: list = []
        assert wait_for(lambda: played.extend(bridge.take_played()) or len(played) >= 30, 20, 0.02)
        assert all(o.played == arena_text_expert(bridge.observation_text(o)) for o in played)
        assert bridge.counts["obs_played"] == bridge.counts["obs_received"]  # every observation labelled
    assert eng.stop() == 0
    assert [c["name"] for c in eng.events("call")] == ["aim"]
    assert not eng.events("ai_call")
    [stats] = eng.events("stats")
    assert stats["ai_calls"] >= 30 and stats["ai_noise_calls"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ai-advise"], "--ai-advise needs --ai NAME"),
        (["--ai", "chase", "--ai-advise", "--ai-epsilon", "0.2"], "leave it out with --ai-advise"),
    ],
)
def test_advise_needs_an_ai_that_does_not_play(engine_bin, args, message):
    proc = subprocess.run([engine_bin, *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and message in proc.stderr.splitlines()[0]


@pytest.mark.slow
def test_a_run_against_an_advising_engine_is_a_dataset_labelled_by_its_ai(engine, ray_session, tmp_path):
    """``tickcall run --env engine:...`` against ``--ai chase --ai-advise``: each tick records the AI's
    call on the observation it took (``played``); ``ticks_dataset(labels="played")`` makes them rows of
    the game the engine declared (``world.game``: tickcall/Arena-v0), each the AI's call on the tick's
    turn. The same run read with ``labels="call"`` gives the applied calls (the no-op policy's wait)."""
    from tickcall.control_loop.config import from_dict
    from tickcall.envs.recorded import ticks_dataset

    from tickcall.job import run_job

    endpoint = free_endpoint()
    eng = engine(endpoint, "--ai", "chase", "--ai-advise", "--ai-hz", "1000", "--seed", "7")
    cfg = from_dict(
        {
            "env": f"engine:{endpoint}",
            "env_kwargs": {"wait_s": 60},
            "backend": "noop",
            "rate_hz": 16,
            "duration_s": 3,
            "report_dir": str(tmp_path / "run"),
            "plots": False,
            "progress": False,
        }
    )
    run_job(cfg)
    eng.stop()
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["world"]["game"] == "tickcall/Arena-v0"
    played = ticks_dataset(tmp_path / "run", labels="played")
    assert played.env_ids == ["tickcall/Arena-v0"]
    assert len(played.records) >= report["outcomes"]["ok"] // 2 > 0
    for r in played.records:
        assert r.call == arena_text_expert(r.query), r
    assert {r.call.name for r in played.records} != {"wait"}  # the AI's calls, not the policy's
    applied = ticks_dataset(tmp_path / "run", labels="call")
    assert {r.call.name for r in applied.records} == {"wait"}


def test_played_labels_need_an_engine_that_advised(tmp_path):
    from tickcall.envs.recorded import ticks_dataset

    tick = {
        "tick": 0,
        "call": {"name": "wait", "arguments": {}},
        "turn": {"query": "tgt=N d=1.0", "history": []},
    }
    (tmp_path / "ticks.jsonl").write_text(json.dumps(tick) + "\n")
    (tmp_path / "report.json").write_text(
        json.dumps({"env": "engine:tcp://127.0.0.1:5560", "world": {"game": "tickcall/Arena-v0"}})
    )
    with pytest.raises(ValueError, match="--ai-advise"):
        ticks_dataset(tmp_path, labels="played")
    (tmp_path / "report.json").write_text(json.dumps({"env": "engine:tcp://127.0.0.1:5560", "world": {}}))
    with pytest.raises(ValueError, match="declared no game"):
        ticks_dataset(tmp_path, labels="played")


# --------------------------------------------------------------------------- protocol 1.2 as data


def test_played_is_an_optional_variant_and_old_obs_stay_byte_identical():
    plain = {"v": 1, "type": "obs", "seq": 3, "frame": 6, "text": "tgt=N d=1.0 aim=N cd=0 dcd=0 tl=3.0"}
    msg = decode(msgpack.packb(plain))
    assert type(msg) is ObsMsg and "played" not in msgpack.unpackb(encode(msg))
    with_played = {**plain, "played": {"name": "fire", "arguments": {}}}
    msg = decode(msgpack.packb(with_played))
    assert type(msg) is PlayedObsMsg and msg.played == PlayedCall("fire", {})
    assert msgpack.unpackb(encode(msg))["played"] == {"name": "fire", "arguments": {}}
    assert decode(msgpack.packb({**plain, "played": None})).__class__ is ObsMsg  # nil = absent
    assert "bad_played" in ERROR_CODES


@pytest.mark.parametrize(
    "played",
    [
        "fire",
        7,
        [],
        {"name": 5},
        {"arguments": {}},
        {"name": "fire", "x": 1},
        {"name": "fire", "arguments": [1]},
        {"name": ""},
    ],
)
def test_malformed_played_is_one_bad_played_error(played):
    raw = {"v": 1, "type": "obs", "seq": 3, "frame": 6, "text": "t", "played": played}
    with pytest.raises(ProtocolError) as err:
        decode(msgpack.packb(raw))
    assert err.value.code == "bad_played" and "obs.played" in err.value.message and not err.value.fatal


def test_illegal_played_is_refused_by_the_bridge_over_zmq():
    """A call the engine's tools do not allow (unknown tool, bad enum, missing argument) is refused with
    ``bad_played``, the observation dropped and counted; a legal one is kept for the recorder."""
    with EngineBridge(BridgeConfig(endpoint="tcp://127.0.0.1:0", keep_played=10)) as bridge:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(bridge.endpoint)
        try:
            send = lambda m: sock.send(msgpack.packb(m))  # noqa: E731

            def recv(mtype: str) -> dict:
                while sock.poll(5000):
                    m = msgpack.unpackb(sock.recv())
                    if m["type"] == mtype:
                        return m
                raise AssertionError(f"no {mtype}")

            send({"v": 1, "type": "hello", "engine": "raw", "session": "s1", "tools": ARENA_TOOLS})
            recv("welcome")
            bad = [
                {"name": "jump"},
                {"name": "aim", "arguments": {"direction": "UP"}},
                {"name": "move", "arguments": {"direction": "N"}},
            ]
            for seq, played in enumerate(bad, start=1):
                send({"v": 1, "type": "obs", "seq": seq, "frame": seq, "text": "t", "played": played})
                err = recv("error")
                assert err["code"] == "bad_played" and err["ref_id"] == seq and "obs.played" in err["message"]
            send({"v": 1, "type": "obs", "seq": 9, "frame": 9, "text": "t", "played": {"name": "fire"}})
            assert wait_for(lambda: bridge.counts["obs_played"] == 1, 5, 0.02)
            [obs] = bridge.take_played()
            assert obs.seq == 9 and obs.played == Call("fire", {})
            assert bridge.stats()["errors_by_code"]["bad_played"] == 3
        finally:
            sock.close(0)
            ctx.term()


# --------------------------------------------------------------------------- tickcall record --env engine:


def test_tickcall_record_writes_the_engines_play_as_a_dataset(engine, tmp_path, capsys):
    from tickcall.cli import main

    endpoint = free_endpoint()
    eng = engine(endpoint, "--ai", "chase", "--speed", "20", "--seed", "11")
    out, info = tmp_path / "recorded.jsonl", tmp_path / "info.json"
    argv = [
        "record",
        "--env",
        f"engine:{endpoint}",
        "--episodes",
        "2",
        "--out",
        str(out),
        "--json",
        str(info),
    ]
    assert main([*argv, "--wait-s", "30"]) == 0
    progress = capsys.readouterr().out
    assert "episode 1/2: return" in progress and "episode 2/2: return" in progress
    eng.stop()
    data = read_dataset(out)
    assert data.env_ids == ["tickcall/Arena-v0"]  # hello.game: the same tools and text
    assert data.tools("tickcall/Arena-v0") == normalize_tools(ARENA_TOOLS)
    assert data.header.teacher == "engine:tickcall-reference-engine"
    meta = data.header.meta
    # the returns are the engine's own episode messages: two whole episodes after the one in progress
    logged = [e["return"] for e in eng.events("episode")]
    assert meta["episodes"] == 2 and meta["returns"] == pytest.approx(logged[1:3])
    assert meta["lengths"] == [300, 300]
    # ~16 decisions per game second over 15 s; every row is the AI's call on its text, no history
    assert 200 <= len(data.records) <= 2 * 260
    for r in data.records:
        assert r.history == [] and r.call == arena_text_expert(r.query), r
    if hasattr(data.records[0], "episode"):
        assert {r.episode for r in data.records} == {0, 1}
    assert json.loads(info.read_text())["rows"] == len(data.records)


def test_record_fails_in_one_line_without_an_engine_or_without_played(engine, tmp_path, capsys):
    from tickcall.cli import main

    endpoint = free_endpoint()
    argv = ["record", "--env", f"engine:{endpoint}", "--episodes", "1", "--out", str(tmp_path / "x.jsonl")]
    assert main([*argv, "--wait-s", "0.5"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no engine said hello" in err and "--ai chase" in err
    assert main([*argv, "--teacher", "ppo"]) == 2
    assert "leave --teacher out" in capsys.readouterr().err
    assert main(["record", "--env", "engine:nowhere", "--out", str(tmp_path / "y.jsonl")]) == 2
    assert "the endpoint must be tcp://HOST:PORT" in capsys.readouterr().err
    engine(endpoint)  # no --ai: observations without played
    with pytest.raises(RecordingError, match="without `played`"):
        record_engine(
            f"engine:{endpoint}",
            1,
            tmp_path / "z.jsonl",
            env_kwargs={"wait_s": 30},
            played_wait_s=1.0,
            log=None,
        )
    assert not (tmp_path / "z.jsonl").exists()
