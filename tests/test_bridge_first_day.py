"""The engine bridge as a game developer meets it on the first day (issue 19's bridge items).

A refused engine (``bad_tools``) is reported at once in one line, not after the whole wait; the wait
has a flag (``--wait-s``); ``engine:`` envs say which model to name; the walkthrough's commands exist.
Real ZMQ sockets throughout; the ``tickcall run`` cases are real subprocesses (Ray, both actors).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import msgpack
import pytest
import zmq
from tickcall.envs.engine_bridge import EngineBridge
from tickcall.envs.engine_bridge_state import EngineRefused
from tickcall.envs.engine_bridge_world import EngineWorldError, open_bridge

from tickcall.job import no_model_message

ROOT = Path(__file__).resolve().parent.parent
BAD_HELLO = {"v": 1, "type": "hello", "engine": "bad", "session": "b", "tools": [{"name": "bad name!"}]}


def _free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class BadEngine(threading.Thread):
    """A DEALER that says a hello the bridge must refuse (a tool name with a space), every 50 ms, as
    an engine does until it is welcomed; it keeps the errors it gets back."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.errors: list[dict] = []
        self.done = threading.Event()

    def run(self) -> None:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        try:
            while not self.done.is_set():
                sock.send(msgpack.packb(BAD_HELLO))
                if sock.poll(50):
                    self.errors.append(msgpack.unpackb(sock.recv(), raw=False))
        finally:
            sock.close()


@pytest.fixture
def bad_engine():
    engines: list[BadEngine] = []

    def start(endpoint: str) -> BadEngine:
        engine = BadEngine(endpoint)
        engine.start()
        engines.append(engine)
        return engine

    yield start
    for engine in engines:
        engine.done.set()
        engine.join(timeout=5)


def test_a_refused_hello_ends_the_wait_for_an_engine(bad_engine):
    with EngineBridge(endpoint="tcp://127.0.0.1:0") as bridge:
        engine = bad_engine(bridge.endpoint)
        # a day-long wait: only the refusal can end it
        with pytest.raises(EngineRefused, match="bad_tools"):
            bridge.wait_for_engine(timeout_s=86_400)
        events = [e["event"] for e in bridge.stats()["events"]]
        assert "engine_refused" in events and bridge.session is None
    assert engine.errors and engine.errors[0]["code"] == "bad_tools" and engine.errors[0]["fatal"]


def test_open_bridge_reports_a_refused_engine_in_one_line(bad_engine):
    endpoint = _free_endpoint()
    bad_engine(endpoint)
    with pytest.raises(EngineWorldError) as info:
        open_bridge(f"engine:{endpoint}", {"wait_s": 86_400})
    text = str(info.value)
    assert "\n" not in text and f"the engine on {endpoint} was refused (bad_tools:" in text
    assert "fix its hello and restart it" in text


def test_engine_envs_name_the_model_to_use():
    line = no_model_message("engine:tcp://127.0.0.1:5560")
    assert "--model PATH" in line and "--model models/shipped/tickcall-arena" in line
    assert "--backend random" in line and (ROOT / "models" / "shipped" / "tickcall-arena").is_dir()


def test_walkthrough_commands_exist():
    doc = (ROOT / "docs" / "engine-bridge.md").read_text()
    step3 = next(ln for ln in doc.splitlines() if ln.startswith(".venv/bin/tickcall run --env engine:"))
    model = re.search(r"--model (\S+)", step3)
    assert model and (ROOT / model.group(1)).is_dir(), step3
    assert "tickcall bridge check" in (ROOT / "README.md").read_text()


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tickcall.cli",
            "run",
            "--backend",
            "noop",
            "--duration",
            "2",
            "--no-plots",
            "--quiet",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _last_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return [ln for ln in result.stderr.splitlines() if ln.strip()][-1]


@pytest.mark.slow
def test_run_reports_a_refused_engine_at_once(tmp_path, bad_engine):
    endpoint = _free_endpoint()
    bad_engine(endpoint)
    # --wait-s of a day: the run can only end early because the refusal ends the wait
    r = _run("--env", f"engine:{endpoint}", "--wait-s", "86400", "--report", str(tmp_path / "r"))
    line = _last_line(r)
    assert line.startswith("tickcall run: the control loop did not start: the engine on"), line
    assert "was refused (bad_tools:" in line
    assert "Exception raised in creation task" not in r.stderr
    assert f"waiting for a game engine on {endpoint} (up to 86400 s; --wait-s)" in r.stderr


@pytest.mark.slow
def test_run_wait_for_an_engine_has_a_flag(tmp_path):
    endpoint = _free_endpoint()
    r = _run("--env", f"engine:{endpoint}", "--wait-s", "0.5", "--report", str(tmp_path / "r"))
    line = _last_line(r)
    assert f"no engine connected to {endpoint} within 0.5 s" in line and "--wait-s" in line, line
    assert "Exception raised in creation task" not in r.stderr


def test_ticks_without_an_observation_are_deadline_misses():
    from tickcall.control_loop.records import TickRecord
    from tickcall.control_loop.stats import summarize

    def rec(tick: int, outcome: str, reason: str = "") -> TickRecord:
        return TickRecord(
            tick=tick, scheduled_ms=62.5 * tick, lateness_ms=0.1, outcome=outcome, reason=reason
        )

    records = (
        [rec(0, "ok")]
        + [rec(k, "error", "observation failed: NoObservation: no engine connected") for k in range(1, 4)]
        + [rec(4, "error", "illegal call: x")]
    )
    stats = summarize(records, 16.0, 0.3)
    assert (
        stats["no_observation"] == 3 and stats["deadline_misses"] == 3 and stats["longest_miss_streak"] == 3
    )
    assert stats["calls"] == {"legal": 1, "illegal": 0, "no_call": 1}  # the policy was never asked on those 3
    assert stats["observation_warning"].startswith("3 of 5 ticks (60%) had no observation")
    assert summarize(records[:1], 16.0, 0.1)["observation_warning"] is None


@pytest.mark.slow
def test_an_absent_engine_counts_as_misses_and_warns(tmp_path):
    """The real C++ engine is killed once the run's first progress line shows ticks: the ticks after
    that had no observation."""
    engine_bin = ROOT / "engines" / "build" / "tickcall-reference-engine"
    if not engine_bin.exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "build_reference_engine.sh")], check=True)
    endpoint = _free_endpoint()
    engine = subprocess.Popen(
        [str(engine_bin), "--connect", endpoint], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tickcall.cli",
            "run",
            "--backend",
            "noop",
            "--duration",
            "6",
            "--env",
            f"engine:{endpoint}",
            "--report",
            str(tmp_path / "r"),
            "--no-plots",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    try:
        for line in run.stdout:
            seen.append(line)
            if line.startswith("tick "):
                break
        engine.kill()
        rest, _ = run.communicate(timeout=300)
    finally:
        engine.kill()
        engine.wait()
        run.kill()
    out = "".join(seen) + rest
    assert run.returncode == 0, out[-3000:]
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["no_observation"] > 0 and rep["deadline_misses"] >= rep["no_observation"]
    assert f"deadline misses {rep['deadline_misses']} " in out
    assert f"warning: {rep['no_observation']} of {rep['ticks']} ticks" in out
    # what the engine did was printed as it happened, one line each
    assert "engine connected: tickcall-reference-engine (session " in out, out[-3000:]
    assert "engine lost: silent for " in out, out[-3000:]


@pytest.mark.slow
def test_calls_name_their_tick_and_observation(tmp_path):
    """The real C++ engine logs every call it applied with the tick, obs_seq and obs_t_ms it carried."""
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_reference_engine.sh")], check=True, capture_output=True
    )
    endpoint = _free_endpoint()
    log = tmp_path / "engine.jsonl"
    engine = subprocess.Popen(
        [
            str(ROOT / "engines" / "build" / "tickcall-reference-engine"),
            "--connect",
            endpoint,
            "--log",
            str(log),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        r = _run("--env", f"engine:{endpoint}", "--report", str(tmp_path / "r"))
    finally:
        engine.terminate()
        engine.wait(timeout=30)
    assert r.returncode == 0, r.stderr[-3000:]
    events = [json.loads(line) for line in log.read_text().splitlines()]
    calls = [e for e in events if e["event"] == "call"]
    assert calls, events[-5:]
    for c in calls:
        assert c["tick"] >= 0 and c["obs_seq"] >= 1 and isinstance(c["obs_t_ms"], float), c
    ticks = [c["tick"] for c in calls]
    assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks)  # one call per tick, in order
    seqs = [c["obs_seq"] for c in calls]
    assert seqs == sorted(seqs)  # later ticks answer newer (or the same) observations


def test_engine_notices_are_one_line_each_and_throttled():
    from tickcall.envs.engine_bridge_notices import EngineNotices

    now = [0.0]
    notices = EngineNotices(interval_s=5.0, clock=lambda: now[0])
    connected = {
        "event": "engine_connected",
        "t_s": 0.1,
        "engine": "e",
        "session": "s1",
        "tools": ["move", "wait"],
    }
    lost = {"event": "engine_lost", "t_s": 2.0, "silent_ms": 1000.0}
    stats = {"events": [connected], "errors_by_code": {}}
    assert notices.update(stats) == ["engine connected: e (session s1; tools move, wait)"]
    assert notices.update(stats) == []  # each event once
    stats = {"events": [connected, lost], "errors_by_code": {"bad_field": 3}}
    lines = notices.update(stats)
    assert lines[0].startswith("engine lost: silent for 1000 ms")
    assert lines[1].startswith("the bridge refused 3 messages from the engine: bad_field")
    now[0] = 1.0  # within the interval: held back and counted
    stats = {"events": [connected, lost, {**connected, "session": "s2"}], "errors_by_code": {"bad_field": 10}}
    assert notices.update(stats) == []
    now[0] = 6.0
    stats = {
        "events": [*stats["events"], {**connected, "session": "s3"}],
        "errors_by_code": {"bad_field": 11},
    }
    assert notices.update(stats) == [
        "engine connected: e (session s3; tools move, wait) (+1 more since the last)",
        "the bridge refused 1 message from the engine: bad_field (the engine was told "
        "why) (+7 more since the last)",
    ]


TOOL = {"name": "wait", "description": "Do nothing.", "parameters": {"type": "object", "properties": {}}}
BAD_HELLOS = [
    ({"engine": " "}, "hello.engine must not be blank"),
    ({"engine": 5}, "hello.engine must be"),
    ({"session": None}, "hello.session is required"),
    ({"observation": {"format": "values"}}, "hello.observation.fields is required"),
    ({"observation": {"format": "values", "fields": [{"name": ""}]}}, "fields[0].name must be"),
    ({"observation": {"format": "xml"}}, "hello.observation.format must be one of"),
    ({"default_call": {"name": "zz", "arguments": {}}}, "hello.default_call is not a legal call"),
    ({"default_call": {"name": "wait", "arguments": 5}}, "hello.default_call.arguments must be"),
    ({"heartbeat_ms": -1}, "hello.heartbeat_ms must be"),
    ({"lockstep": -3}, "hello.lockstep must be"),
    ({"frame_hz": float("nan")}, "hello.frame_hz must be"),
]


@pytest.mark.parametrize(("change", "says"), BAD_HELLOS, ids=[s for _c, s in BAD_HELLOS])
def test_bad_field_on_hello_is_always_fatal(change, says):
    """protocol.md: every error answering a hello is fatal (the engine must be fixed, not retried)."""
    hello = {"v": 1, "type": "hello", "engine": "e", "session": "s", "tools": [TOOL], **change}
    with EngineBridge(endpoint="tcp://127.0.0.1:0") as bridge:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(bridge.endpoint)
        try:
            sock.send(msgpack.packb(hello))
            assert sock.poll(30_000), "no answer to hello"
            err = msgpack.unpackb(sock.recv(), raw=False)
        finally:
            sock.close()
        assert bridge.session is None
    assert err["type"] == "error" and err["code"] == "bad_field" and err["fatal"] is True, err
    assert says in err["message"], err["message"]


BRIDGE_CHECK_CASES = [
    # (flags, exit status, phrase of the one line)
    (["--endpoint", "garbage"], 2, "--endpoint 'garbage' is not a ZMQ endpoint"),
    (["--endpoint", "tcp://0.0.0.0:0"], 2, "refusing to bind tcp://0.0.0.0:0 without authentication"),
    (["--seconds", "0"], 2, "--seconds 0 must be above 0"),
    (["--rate", "-1"], 2, "--rate -1 must be above 0"),
    (["--wait-s", "0"], 2, "--wait-s 0 must be above 0"),
    (["--steps", "0"], 2, "--steps 0 is too small"),
    (["--call", "{bad"], 2, "--call is not valid JSON"),
    (["--call", "[1]"], 2, '--call must be a JSON object with a "name"'),
    (["--curve-secret-key", "{tmp}/none.key_secret"], 2, "no such file; tickcall serve --gen-keys DIR"),
    (["--json", "{tmp}/no/such/dir/c.json"], 2, "does not exist; create it or pick another path"),
    (["--json", "{tmp}"], 2, "is a folder"),
    (["--endpoint", "tcp://127.0.0.1:0", "--wait-s", "0.2"], 1, "no engine said hello at tcp://127.0.0.1:0"),
]


@pytest.mark.parametrize(("flags", "code", "phrase"), BRIDGE_CHECK_CASES)
def test_bridge_check_bad_input_is_one_line(capsys, tmp_path, flags, code, phrase):
    """``tickcall bridge check``'s mistakes: one stderr line naming the problem and the fix, no traceback
    (an endpoint that is not one, or an exposed one, was a BridgeConfigError traceback; a bad --json
    path failed after the whole check)."""
    from tickcall.cli import main

    assert main(["bridge", "check", *[f.replace("{tmp}", str(tmp_path)) for f in flags]]) == code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("tickcall bridge check: ") and phrase in lines[0], lines[0]


def test_bridge_check_reports_a_refused_engine_and_a_taken_port(capsys, bad_engine):
    from tickcall.cli import main

    endpoint = _free_endpoint()
    bad_engine(endpoint)
    assert main(["bridge", "check", "--endpoint", endpoint, "--wait-s", "86400"]) == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "the engine's hello was refused (bad_tools:" in lines[0], lines
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        assert main(["bridge", "check", "--endpoint", busy, "--wait-s", "1"]) == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"tickcall bridge check: cannot bind {busy}"), lines
