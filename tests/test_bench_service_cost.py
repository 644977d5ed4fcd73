"""``tickcall bench service-cost`` end to end (real service and echo subprocesses, real ZMQ sockets),
and the observation text the service renders from the wire.

No timing thresholds: the figures depend on the machine and its load. What must hold everywhere: every
decide sent on every path got exactly one reply, a legal call; batch 1 is decoded one by one and batch 64
in batches of more than one; the service's CPU was measured (its process and its I/O and engine threads);
the JSON holds the keys the benchmarks page reads. ``--baseline-src`` is pointed at this checkout, so
the source-tree layout path runs too.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tickcall.agent import protocol as P
from tickcall.models.prompt_text import render_observation

from tickcall.bench import service_cost

ROOT = Path(__file__).resolve().parent.parent
ROUNDS_1, ROUNDS_64 = 30, 3


def _bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tickcall.cli", "bench", "service-cost", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_service_cost_bench_accounts_for_every_decide(tmp_path):
    out = tmp_path / "cost.json"
    prof = tmp_path / "prof"
    r = _bench(
        "--rounds", str(ROUNDS_1), "--rounds-64", str(ROUNDS_64), "--block", "10",
        "--baseline-src", str(ROOT), "--profile", str(prof), "--json", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    for key in ("machine", "cpu_model", "nproc", "engine", "rounds", "loadavg_before", "loadavg_after",
                "payload_bytes", "rows", "profiles"):  # fmt: skip
        assert key in data, key
    assert data["cpu_model"] and data["nproc"] >= 1 and data["engine"] == "instant"
    paths = ["echo", "service (bare DEALER)", "service (PolicyClient)", "baseline service (bare DEALER)",
             "baseline service (PolicyClient)"]  # fmt: skip
    rows = {(row["path"], row["batch"]): row for row in data["rows"]}
    assert set(rows) == {(p, b) for p in paths for b in (1, 64)}
    for (path, batch), row in rows.items():
        rounds = ROUNDS_1 if batch == 1 else ROUNDS_64
        assert row["rounds"] == rounds and row["decides"] == rounds * batch, row
        assert row["replies"] == row["decides"] == row["calls"] and row["errors"] == 0, row
        assert row["round_ms"]["n"] == rounds and row["round_ms"]["p90"] >= row["round_ms"]["p50"] > 0
        assert row["service_cpu_ms"] > 0 and row["io_cpu_ms"] > 0 and row["client_cpu_ms"] >= 0
        assert row["service_cpu_ms"] >= row["io_cpu_ms"] + (row["engine_cpu_ms"] or 0.0) * 0.999
        assert math.isfinite(row["cpu_ratio_vs_echo"]) and math.isfinite(row["wall_ratio_vs_echo"])
        if path == "echo":
            assert row["engine_cpu_ms"] is None and row["mean_batch"] is None
            assert row["cpu_ratio_vs_echo"] == pytest.approx(1.0)
        else:  # the service's replies say how many decides their batch held
            assert row["engine_cpu_ms"] > 0
            if batch == 1:
                assert row["mean_batch"] == 1.0
            else:
                assert 1.0 < row["mean_batch"] <= 64.0, row
    for batch in ("1", "64"):  # the profiles show the service's own functions
        text = Path(data["profiles"][batch]).read_text()
        assert "server.py" in text and "_drain" in text
        assert Path(data["profiles"][batch]).with_suffix(".prof").is_file()
    assert "batch 64: CPU per decide (us" in r.stdout and "load average" in r.stdout


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--baseline-src", "/nonexistent/tree"], "is not a folder"),
        (["--baseline-src", "{tmp}"], "not a tickcall source tree"),
        (["--rounds", "0"], "must be 1 or more"),
    ],
)
def test_bad_input_is_one_line(tmp_path, argv, words):
    """Refused before any subprocess starts, with one line (the CLI prints a SystemExit's text)."""
    parser = argparse.ArgumentParser()
    service_cost.add_arguments(parser)
    args = parser.parse_args([a.replace("{tmp}", str(tmp_path)) for a in argv])
    with pytest.raises(SystemExit) as exc:
        service_cost.run(args)
    message = str(exc.value.code)
    assert message.startswith("tickcall bench service-cost: ") and words in message
    assert "\n" not in message


OBS_VALUES = [
    0, 1, -1, 7, 2**63 - 1, -(2**63), 10**30, True, False, None, "", "N", "a b", "x=y",
    0.0, -0.0, 0.25, -0.25, 1e-05, -1e-05, -0.0004, 0.0005, -0.0005, 12.3456, -3.0, 1e300, -1e300,
    5e-324, 123456789.987654321,
    np.float32(0.5), np.float64(-2.25), np.int64(3), np.bool_(True),  # only a WireTurn built by hand
]  # fmt: skip


@pytest.mark.parametrize("value", OBS_VALUES, ids=repr)
def test_wire_observation_text_is_prompt_texts(value):
    """The service renders wire observations by exact type; the text is render_observation's."""
    obs = {"k": value, "z": -1.5}
    assert P.format_observation(obs) == render_observation(obs)
    assert P.to_turn(P.WireTurn(observation=obs)).query == render_observation(obs)


def test_wire_observation_text_keeps_the_senders_order():
    obs = {"z": 1, "a": 2.5, "m": "x", "b": None, "c": False}
    assert P.format_observation(obs) == "z=1 a=+2.500 m=x b=null c=false" == render_observation(obs)
    assert P.format_observation({}) == render_observation({}) == ""


def _map(*pairs) -> bytes:
    """A msgpack map written key by key (duplicate keys allowed, as a hostile peer may send them)."""
    import msgpack

    body = b"".join(msgpack.packb(k) + msgpack.packb(v, use_bin_type=True) for k, v in pairs)
    n = len(pairs)
    return (bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")) + body


_TURN = {"query": "", "observation": {"x": 1.5}}
_HEAD = (("v", 1), ("type", "decide"))
DECIDES = {
    "valid": _map(*_HEAD, ("id", 7), ("handle", "h.1"), ("tick", 3), ("turn", _TURN)),
    "valid, unknown keys": _map(*_HEAD, ("id", "a"), ("handle", "h"), ("tick", 0), ("turn", _TURN), ("x", [1])),
    "later v 2": _map(*_HEAD, ("id", 7), ("handle", "h"), ("tick", 3), ("turn", _TURN), ("v", 2)),
    "later type": _map(*_HEAD, ("id", 7), ("handle", "h"), ("tick", 3), ("turn", _TURN), ("type", "ping")),
    "no id": _map(*_HEAD, ("handle", "h"), ("tick", 3), ("turn", _TURN)),
    "bool id": _map(*_HEAD, ("id", True), ("handle", "h"), ("tick", 3), ("turn", _TURN)),
    "float id": _map(*_HEAD, ("id", 1.0), ("handle", "h"), ("tick", 3), ("turn", _TURN)),
    "long id": _map(*_HEAD, ("id", "i" * 129), ("handle", "h"), ("tick", 3), ("turn", _TURN)),
    "huge id": _map(*_HEAD, ("id", 2**64 - 1), ("handle", "h"), ("tick", 3), ("turn", _TURN)),
    "bad handle": _map(*_HEAD, ("id", 7), ("handle", 5), ("tick", 3), ("turn", _TURN)),
    "bad deadline": _map(*_HEAD, ("id", 7), ("handle", "h"), ("tick", 3), ("turn", _TURN), ("deadline_ms", -1)),
    "NaN sent_ms": _map(*_HEAD, ("id", 7), ("handle", "h"), ("tick", 3), ("turn", _TURN), ("sent_ms", math.nan)),
    "bad obs": _map(*_HEAD, ("id", 7), ("handle", "h"), ("tick", 3), ("turn", {"observation": {"x": [1]}})),
    "bin query": _map(*_HEAD, ("id", 7), ("handle", "h"), ("tick", 3), ("turn", {"query": b"q"})),
    "16 keys": _map(*_HEAD, ("id", 7), ("handle", "h"), ("tick", 3), ("turn", _TURN), *((f"k{i}", i) for i in range(11))),
    "truncated": _map(*_HEAD, ("id", 7), ("handle", "h"), ("tick", 3), ("turn", _TURN))[:-3],
}  # fmt: skip


def _outcome(fn, payload):
    try:
        return fn(payload)
    except P.ProtocolError as exc:
        return (exc.code, exc.message, exc.msg_id, exc.extra)


@pytest.mark.parametrize("name", sorted(DECIDES))
def test_decide_fast_path_decodes_as_the_envelope_path(name, monkeypatch):
    """A decide that starts with the envelope bytes is decoded once, straight into Decide; every
    payload gets the same struct or the same error as through the envelope path."""
    payload = DECIDES[name]
    took_fast = P._fast(payload, P._FAST_DECIDE, P._request_decoders["decide"]) is not None
    assert took_fast == (name.startswith("valid") or name in ("huge id", "16 keys"))  # a map16 header too
    fast = _outcome(lambda b: P.decode_request(b, 1 << 20), payload)
    monkeypatch.setattr(P, "_FAST_DECIDE", b"\xff")  # never matches: the envelope path only
    slow = _outcome(lambda b: P.decode_request(b, 1 << 20), payload)
    assert fast == slow
    assert _outcome(lambda b: P.decode_request(b, 10), payload)[0] == "oversized"
    if name.startswith("valid") or name in ("huge id", "16 keys"):
        assert type(fast).__name__ == "Decide"
    else:
        assert isinstance(fast, tuple), fast  # refused, with the envelope path's code and message


@pytest.mark.parametrize("later", [None, ("v", 2), ("type", "pong"), ("legal", "yes")])
def test_call_reply_fast_path_decodes_as_the_envelope_path(later, monkeypatch):
    from tickcall.agent.messages import CallReply, Timings, Tokens, WireCall

    reply = CallReply(id=3, epoch="e", tick=1, handle="h", call=WireCall(name="wait"), legal=True,
                      reason="", heads={}, tokens=Tokens(), timings_ms=Timings(), batch=1, sent_ms=None)  # fmt: skip
    payload = P.encode(reply)
    if later is not None:  # one more key after the others (a duplicate)
        if payload[0] == 0xDE:  # map16 (msgspec's header for a struct of more than 15 fields)
            count = int.from_bytes(payload[1:3], "big") + 1
            payload = b"\xde" + count.to_bytes(2, "big") + payload[3:] + _map(later)[1:]
        else:
            payload = bytes([payload[0] + 1]) + payload[1:] + _map(later)[1:]
    assert (P._fast(payload, P._FAST_CALL, P._reply_decoders["call"]) is not None) == (later is None)
    fast = _outcome(P.decode_reply, payload)
    monkeypatch.setattr(P, "_FAST_CALL", b"\xff")
    assert fast == _outcome(P.decode_reply, payload)
    assert (fast == reply) if later is None else isinstance(fast, tuple)


def test_a_reply_to_a_peer_that_left_is_counted_unroutable_and_the_service_keeps_serving():
    """The I/O thread sends a reply as two frames: the identity frame is where ROUTER_MANDATORY refuses a
    peer that is gone; the reply is then counted ``unroutable`` (not as a sent call), and others are
    still served. A real server with the bench's stand-in engine (1 s a batch) so the peer leaves first."""
    import zmq
    from tickcall.agent.client import PolicyClient
    from tickcall.agent.config import ServeConfig
    from tickcall.agent.messages import Register
    from tickcall.agent.server import PolicyServer

    from tests.polling import wait_for
    from tickcall.bench.standin import slow_noop

    server = PolicyServer(slow_noop(1000.0), ServeConfig(bind="tcp://127.0.0.1:0"))
    endpoint = server.start()
    ctx = zmq.Context.instance()
    try:
        leaver = ctx.socket(zmq.DEALER)
        leaver.setsockopt(zmq.LINGER, 1000)  # the decide leaves before the socket closes
        leaver.connect(endpoint)
        leaver.send(P.encode(Register(id=1, tools=service_cost.TOOLS)))
        assert leaver.poll(30_000) and P.decode_reply(leaver.recv()).type == "registered"
        [handle] = list(server._core.handles)
        leaver.send(service_cost.payloads(handle)[0])
        assert wait_for(lambda: server.stats().get("received", 0) >= 2, 10)
        leaver.close()
        assert wait_for(lambda: server.stats().get("unroutable", 0) == 1, 30), server.stats()
        stats = server.stats()
        assert stats.get("reply_call", 0) == 0 and stats["decided"] == 1
        with PolicyClient(endpoint, timeout_ms=30_000) as client:  # the service still serves
            client.register(service_cost.TOOLS)
            reply = client.decide(service_cost.turn(1), 1)
            assert reply.type == "call" and reply.legal, reply
        assert server.stats()["reply_call"] == 1
    finally:
        server.stop()
