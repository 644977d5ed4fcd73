"""The C++ reference engine against a hostile bridge: it reads with limits and comes back.

A plain ROUTER stands in for tickcall's bridge (real ZMQ, the real engine built by
``scripts/build_reference_engine.sh``). A 5-byte msgpack header that claims 4 G array elements is
refused before any allocation (the engine lives on and keeps saying hello); a frame over the engine's
4 MiB ``ZMQ_MAXMSGSIZE`` makes libzmq drop the connection for good, and the engine opens a fresh
socket and says hello again.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import msgpack
import pytest
import zmq

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 60.0  # a generous bound for each expected message, not a performance threshold


@pytest.fixture(scope="module")
def engine_bin() -> str:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_reference_engine.sh")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr
    path = out.stdout.strip().splitlines()[-1]
    assert os.access(path, os.X_OK), path
    return path


@pytest.fixture
def router():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(f"tcp://127.0.0.1:{port}")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close()
    ctx.term()


def _next_hello(sock: zmq.Socket, not_from: set[bytes] = frozenset()) -> bytes:
    """The identity of the next peer that says hello (peers in ``not_from`` are skipped)."""
    end = time.monotonic() + WAIT_S
    while time.monotonic() < end:
        if sock.poll(100):
            peer, payload = sock.recv_multipart()
            msg = msgpack.unpackb(payload, raw=False)
            if msg.get("type") == "hello" and peer not in not_from:
                return peer
    raise AssertionError(f"no hello within {WAIT_S} s")


def _start(engine_bin: str, endpoint: str, tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [engine_bin, "--connect", endpoint, "--log", str(tmp_path / "engine.jsonl")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_huge_header_is_refused_without_allocating(engine_bin, router, tmp_path):
    sock, endpoint = router
    engine = _start(engine_bin, endpoint, tmp_path)
    try:
        peer = _next_hello(sock)
        for header in (b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff"):
            sock.send_multipart([peer, header])  # array32 / map32 / str32 claiming 4 G
        # still alive, still on the same connection: its next hello comes from the same peer
        assert _next_hello(sock) == peer
        assert engine.poll() is None
    finally:
        engine.terminate()
        _, err = engine.communicate(timeout=30)
    assert engine.returncode == 0, err
    assert err.count("undecodable message from tickcall") == 3, err
    # refused by the limits (msgpack-c's size overflow), not by a failed 64 GB allocation (bad_alloc)
    assert "array size overflow" in err and "map size overflow" in err and "bad_alloc" not in err, err


def test_an_oversized_frame_is_followed_by_a_fresh_connection(engine_bin, router, tmp_path):
    sock, endpoint = router
    engine = _start(engine_bin, endpoint, tmp_path)
    try:
        peer = _next_hello(sock)
        sock.send_multipart([peer, b"\x00" * (5 << 20)])  # over the engine's 4 MiB ZMQ_MAXMSGSIZE
        fresh = _next_hello(sock, not_from={peer})  # a new socket, so a new ROUTER identity
        assert fresh != peer and engine.poll() is None
    finally:
        engine.terminate()
        engine.communicate(timeout=30)
    events = [json.loads(line) for line in (tmp_path / "engine.jsonl").read_text().splitlines()]
    assert any(e["event"] == "reconnect" and e["why"] == "no welcome" for e in events), events[-5:]
    stats = [e for e in events if e["event"] == "stats"]
    assert stats and stats[-1]["reconnects"] >= 1
