"""Mode 2: a game that keeps its own tick talks to the policy service directly (examples/mode2_client.py).

The service is the real one (agent.server.PolicyServer, real sockets) in this process. Its engine is
the no-op engine where only the plumbing is checked (it always answers ``wait()``: it stands in for a
model), or the tiny random transformers model, whose calls are mostly illegal, to show an illegal
call is never applied. Every decide must end in exactly one outcome.
"""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
from pathlib import Path

import pytest
from tickcall.agent.config import ServeConfig
from tickcall.agent.server import PolicyServer
from tickcall.models.stand_ins import NoOpEngine

ROOT = Path(__file__).resolve().parents[1]
OUTCOMES = ("applied", "illegal", "error", "stale", "lost")


@pytest.fixture(scope="module")
def mode2():
    spec = importlib.util.spec_from_file_location("mode2_client", ROOT / "examples" / "mode2_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def serve(engine, bind="tcp://127.0.0.1:0") -> PolicyServer:
    srv = PolicyServer(engine, ServeConfig(bind=bind))
    srv.start()
    return srv


def test_lockstep_is_deterministic(mode2):
    srv = serve(NoOpEngine())
    try:
        a = mode2.run(srv.endpoint, lockstep=True, frames=120, seed=3)
        b = mode2.run(srv.endpoint, lockstep=True, frames=120, seed=3)
    finally:
        srv.stop()
    assert a["decides"] == a["applied"] == 120  # lock-step: one decide per frame, each applied
    assert {k: v for k, v in a.items() if k != "elapsed_s"} == {
        k: v for k, v in b.items() if k != "elapsed_s"
    }


def test_real_time_accounts_for_every_decide(mode2):
    srv = serve(NoOpEngine())
    try:
        out = mode2.run(srv.endpoint, seconds=2.0, rate_hz=16)
    finally:
        srv.stop()
    assert out["frames"] == 40 and out["decides"] >= 16
    assert out["decides"] == sum(out[k] for k in OUTCOMES)
    assert out["applied"] >= out["decides"] // 2


def test_illegal_calls_are_never_applied(mode2, tiny_engine):
    srv = serve(tiny_engine)
    try:
        out = mode2.run(srv.endpoint, lockstep=True, frames=4)
    finally:
        srv.stop()
    assert out["decides"] == 4 == sum(out[k] for k in OUTCOMES)
    assert out["illegal"] > 0  # a random model rarely writes a legal arena call


def test_service_restart_mid_run(mode2):
    """The service dies and a new one (new epoch) takes its endpoint: the game keeps its frames,
    the decides of the gap end as lost or error, and after re-registering calls are applied again."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    first = serve(NoOpEngine(), endpoint)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(mode2.run(endpoint, seconds=4.0)))
    runner.start()
    time.sleep(1.2)
    first.stop()
    time.sleep(0.8)
    second = serve(NoOpEngine(), endpoint)
    try:
        runner.join(30)
    finally:
        second.stop()
    assert result["frames"] == 80
    assert result["decides"] == sum(result[k] for k in OUTCOMES)
    assert result["error"] + result["lost"] > 0  # the gap is visible, not hidden
    assert result["applied"] > 0
    assert result["last_applied_frame"] > 50  # frame 40 = 2.0 s, when the new service started
