"""The engine bridge server (envs/engine_bridge.py) over real ZMQ sockets.

The peer here is a raw protocol peer: a Python DEALER socket that sends exactly the bytes under test
(well-formed or not), so each rule of the protocol is checked precisely. The C++ reference engine,
the real engine, is exercised in test_bridge_engine.py. Waits are bounded (``wait_until``) and no
assertion depends on how fast this machine is.
"""

from __future__ import annotations

import time

import msgpack
import pytest
import zmq
from tickcall.envs.engine_bridge import BridgeConfig, BridgeConfigError, EngineBridge, EngineCallError
from tickcall.envs.engine_bridge_protocol import encode
from tickcall.models.calls import Call

TOOLS = [
    {"type": "function", "function": {
        "name": "move", "description": "Move.",
        "parameters": {"type": "object", "properties": {
            "direction": {"type": "string", "enum": ["N", "S"]},
            "speed": {"type": "number", "minimum": 0, "maximum": 1}},
            "required": ["direction"]}}},
    {"type": "function", "function": {
        "name": "wait", "description": "Wait.", "parameters": {"type": "object", "properties": {}}}},
]


def wait_until(pred, timeout_s=5.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


class Peer:
    """A raw DEALER that speaks (or mis-speaks) the protocol."""

    def __init__(self, endpoint: str, ctx: zmq.Context) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.inbox: list[dict] = []

    def send(self, msg) -> None:
        self.sock.send(msg if isinstance(msg, bytes) else encode(msg))

    def hello(self, session="s1", tools=TOOLS, **kw) -> dict:
        self.send({"v": 1, "type": "hello", "engine": "raw-peer", "session": session, "tools": tools,
                   "default_call": {"name": "wait", "arguments": {}}, "heartbeat_ms": 50, **kw})
        return self.expect("welcome")

    def obs(self, seq, text="x=1", **kw) -> None:
        self.send({"v": 1, "type": "obs", "seq": seq, "frame": seq, "text": text, **kw})

    def recv(self, timeout_s=3.0) -> dict | None:
        if self.sock.poll(int(timeout_s * 1000)):
            return msgpack.unpackb(self.sock.recv(), raw=False)
        return None

    def expect(self, mtype: str, timeout_s=3.0, **fields) -> dict:
        """The next message of ``mtype`` (pings are answered and skipped)."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            msg = self.recv(max(0.0, end - time.monotonic()))
            if msg is None:
                break
            if msg["type"] == "ping" and mtype != "ping":
                self.send({"v": 1, "type": "pong", "t_ms": msg["t_ms"]})
                continue
            if msg["type"] == mtype and all(msg.get(k) == v for k, v in fields.items()):
                return msg
            self.inbox.append(msg)
        raise AssertionError(f"no {mtype} {fields} within {timeout_s} s; got {self.inbox[-5:]}")

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.term()


@pytest.fixture
def bridge():
    b = EngineBridge(BridgeConfig(endpoint="tcp://127.0.0.1:0", heartbeat_ms=50, ack_timeout_ms=300,
                                  result_timeout_ms=600, max_obs_age_ms=300, errors_per_second=1000))
    b.start()
    yield b
    b.close()


@pytest.fixture
def peer(bridge, ctx):
    p = Peer(bridge.endpoint, ctx)
    yield p
    p.close()


def balanced(b: EngineBridge) -> bool:
    c = b.stats()["counts"]
    return c["calls"] == sum(c[k] for k in ("done", "failed", "rejected", "lost", "timeout",
                                             "in_flight"))


def test_handshake_observations_latest_wins(bridge, peer):
    welcome = peer.hello()
    assert welcome["session"] == "s1" and welcome["epoch"] == bridge.epoch
    assert welcome["tools"] == ["move", "wait"]
    assert bridge.wait_for_engine(1).engine == "raw-peer"
    assert bridge.latest_observation() is None
    for seq in (1, 2, 3):
        peer.obs(seq, text=f"x={seq}")
    assert wait_until(lambda: (o := bridge.latest_observation()) is not None and o.seq == 3)
    assert bridge.observation_text(bridge.latest_observation()) == "x=3"
    peer.obs(2)  # going backwards: refused with a reason, the newest stays
    err = peer.expect("error")
    assert err["code"] == "stale_observation" and err["ref_id"] == 2 and not err["fatal"]
    assert bridge.latest_observation().seq == 3
    # an observation older than max_obs_age_ms is never handed out
    assert wait_until(lambda: bridge.latest_observation() is None, 2.0)


def test_values_format_is_rendered_in_field_order(bridge, peer):
    peer.hello(observation={"format": "values", "fields": [
        {"name": "y", "precision": 1}, {"name": "x", "unit": "m"}]})
    peer.send({"v": 1, "type": "obs", "seq": 1, "frame": 1, "values": {"x": 0.5, "y": -2}})
    assert wait_until(lambda: bridge.latest_observation() is not None)
    assert bridge.observation_text(bridge.latest_observation()) == "y=-2.0 x=+0.500"


def test_calls_acked_and_resolved(bridge, peer):
    peer.hello()
    h1 = bridge.send_call(Call("move", {"direction": "N", "speed": 0.5}), tick=7, obs_seq=3)
    h2 = bridge.send_call({"name": "wait", "arguments": {}})
    c1 = peer.expect("call", id=h1.id)
    assert (c1["name"], c1["arguments"], c1["tick"], c1["obs_seq"]) == (
        "move", {"direction": "N", "speed": 0.5}, 7, 3)
    peer.expect("call", id=h2.id)
    peer.send({"v": 1, "type": "ack", "id": h1.id, "frame": 10})
    assert h1.acked.result(timeout=2) == 10 and not h1.result.done()
    peer.send({"v": 1, "type": "result", "id": h1.id, "ok": True, "value": {"x": 1}, "frame": 12})
    out = h1.result.result(timeout=2)
    assert (out.value, out.ack_frame, out.result_frame) == ({"x": 1}, 10, 12)
    peer.send({"v": 1, "type": "result", "id": h2.id, "ok": False,
               "error": {"code": "cooldown", "message": "not yet"}})  # a result implies the ack
    with pytest.raises(EngineCallError) as info:
        h2.result.result(timeout=2)
    assert (info.value.state, info.value.code, info.value.message) == ("failed", "cooldown", "not yet")
    assert h2.acked.done() and (h1.state, h2.state) == ("done", "failed")
    peer.send({"v": 1, "type": "result", "id": 999, "ok": True})
    assert peer.expect("error")["code"] == "unknown_call"
    peer.send({"v": 1, "type": "ack", "id": h1.id})  # a reply for a finished call: counted only
    assert wait_until(lambda: bridge.stats()["counts"]["late_replies"] == 1)
    assert balanced(bridge)


def test_a_cancelled_future_does_not_break_the_bridge(bridge, peer):
    peer.hello()
    h = bridge.send_call(Call("wait", {}))
    assert h.result.cancel() and h.acked.cancel()  # the caller lost interest
    peer.expect("call", id=h.id)
    peer.send({"v": 1, "type": "result", "id": h.id, "ok": True})
    assert wait_until(lambda: h.state == "done")
    h2 = bridge.send_call(Call("wait", {}))  # the I/O thread is still serving
    peer.expect("call", id=h2.id)
    assert not [m for m in peer.inbox if m["type"] == "error"]  # its result was handled cleanly
    assert bridge.stats()["counts"]["io_errors"] == 0 and balanced(bridge)


def test_illegal_calls_are_never_sent(bridge, peer):
    assert bridge.send_call(Call("move", {"direction": "N"})).state == "rejected"  # no engine yet
    peer.hello()
    bad = [Call("jump", {}), Call("move", {"direction": "E"}), Call("move", {}),
           Call("move", {"direction": "N", "speed": 2})]
    for call in bad:
        h = bridge.send_call(call)
        assert h.state == "rejected"
        with pytest.raises(EngineCallError) as info:
            h.result.result(timeout=0)
        assert info.value.code == "illegal_call"
    seen = []
    while (m := peer.recv(0.3)) is not None:
        seen.append(m["type"])
    assert "call" not in seen
    c = bridge.stats()["counts"]
    assert c["rejected"] == 5 and c["calls"] == 5 and balanced(bridge)


def test_ack_and_result_timeouts(bridge, peer):
    peer.hello(heartbeat_ms=1000)  # the session outlives both timeouts while the peer is silent
    h_noack = bridge.send_call(Call("wait", {}))
    h_noresult = bridge.send_call(Call("wait", {}))
    peer.expect("call", id=h_noack.id)
    peer.send({"v": 1, "type": "ack", "id": h_noresult.id})
    with pytest.raises(EngineCallError) as info:
        h_noack.result.result(timeout=3)
    assert (info.value.state, info.value.code) == ("timeout", "ack_timeout")
    with pytest.raises(EngineCallError) as info:
        h_noresult.result.result(timeout=3)
    assert info.value.code == "result_timeout"
    assert balanced(bridge)


def test_malformed_and_wrong_version_get_clear_errors_and_change_nothing(bridge, peer, ctx):
    peer.hello()
    peer.obs(1)
    rogue = Peer(bridge.endpoint, ctx)
    try:
        cases = [
            (b"\xc1\xff not msgpack", "malformed"),
            (msgpack.packb([1, 2]), "malformed"),
            (encode({"v": 7, "type": "obs", "seq": 1}), "version_mismatch"),
            (encode({"type": "obs"}), "version_mismatch"),
            (encode({"v": 1, "type": "teleport"}), "unknown_type"),
            (encode({"v": 1, "type": "obs", "seq": 5, "frame": 5, "text": "x"}), "no_session"),
            (encode({"v": 1, "type": "hello", "engine": "x", "session": "r", "tools": "move"}),
             "bad_field"),
            (encode({"v": 1, "type": "hello", "engine": "x", "session": "r",
                     "tools": [{"name": "bad name!"}]}), "bad_tools"),
            (encode({"v": 1, "type": "obs", "text": "x" * (2 << 20)}), "oversized"),
        ]
        for payload, code in cases:
            rogue.send(payload)
            err = rogue.expect("error")
            assert err["code"] == code, (payload[:40], err)
            assert err["message"]
        rogue.sock.send_multipart([b"a", b"b"])
        assert rogue.expect("error")["code"] == "malformed"
        rogue.send({"v": 2, "type": "hello", "engine": "x", "session": "r", "tools": TOOLS})
        err = rogue.expect("error")
        assert err["code"] == "version_mismatch" and err["fatal"] and "speaks v in [1]" in err["message"]
        # the real session is untouched: same engine, observations and calls still flow
        assert bridge.session.hello.engine == "raw-peer" and bridge.stats()["counts"]["sessions"] == 1
        peer.obs(2)
        assert wait_until(lambda: (o := bridge.latest_observation()) is not None and o.seq == 2)
        h = bridge.send_call(Call("wait", {}))
        peer.expect("call", id=h.id)
        by_code = bridge.stats()["errors_by_code"]
        assert by_code["malformed"] == 3 and by_code["version_mismatch"] == 3
        # the peer's own malformed message: an error, and its session goes on
        peer.send({"v": 1, "type": "obs", "seq": 3, "frame": 3})
        assert "obs.text is required" in peer.expect("error")["message"]
        assert bridge.session.id == "s1"
    finally:
        rogue.close()


def test_error_replies_are_rate_limited(ctx):
    with EngineBridge(endpoint="tcp://127.0.0.1:0", errors_per_second=3) as b:
        p = Peer(b.endpoint, ctx)
        try:
            for _ in range(20):
                p.send(b"junk")
            got = 0
            while p.recv(0.3) is not None:
                got += 1
            assert got == 3
            assert wait_until(lambda: b.stats()["counts"]["errors_suppressed"] == 17)
        finally:
            p.close()


def test_silent_engine_is_dropped_and_its_calls_lost(bridge, peer):
    peer.hello()
    h = bridge.send_call(Call("wait", {}))
    peer.expect("call", id=h.id)
    peer.send({"v": 1, "type": "ack", "id": h.id})
    # stop answering: 4 missed heartbeats of 50 ms
    with pytest.raises(EngineCallError) as info:
        h.result.result(timeout=5)
    assert (info.value.state, info.value.code) == ("lost", "engine_lost")
    assert not bridge.connected
    assert [e["event"] for e in bridge.stats()["events"]] == ["engine_connected", "engine_lost"]
    peer.obs(9)  # after the drop: told to say hello again
    assert peer.expect("error")["code"] == "no_session"
    peer.hello()
    assert bridge.connected and balanced(bridge)


def test_restart_supersedes_the_old_session(bridge, peer, ctx):
    peer.hello(session="first")
    h = bridge.send_call(Call("wait", {}))
    peer.expect("call", id=h.id)
    newer = Peer(bridge.endpoint, ctx)
    try:
        newer.hello(session="second")
        with pytest.raises(EngineCallError) as info:
            h.result.result(timeout=2)
        assert (info.value.state, info.value.code) == ("lost", "engine_restarted")
        err = peer.expect("error")
        assert err["code"] == "superseded" and err["fatal"]
        peer.obs(1)  # the old peer is ignored from now on
        assert peer.expect("error")["code"] == "no_session"
        assert bridge.session.id == "second"
        # a repeated hello of the live session is idempotent: calls survive it
        h2 = bridge.send_call(Call("wait", {}))
        newer.expect("call", id=h2.id)
        newer.hello(session="second")
        newer.send({"v": 1, "type": "result", "id": h2.id, "ok": True})
        assert h2.result.result(timeout=2) is not None
        assert bridge.stats()["counts"]["sessions"] == 2 and balanced(bridge)
    finally:
        newer.close()


def test_pinned_tools_refuse_a_different_engine(bridge, peer, ctx):
    peer.hello(session="a")
    bridge.pin_tools(TOOLS)
    other = Peer(bridge.endpoint, ctx)
    try:
        other.send({"v": 1, "type": "hello", "engine": "other", "session": "b",
                    "tools": TOOLS[:1]})
        err = other.expect("error")
        assert err["code"] == "bad_tools" and err["fatal"] and "restart tickcall" in err["message"]
        assert bridge.session.id == "a"
    finally:
        other.close()


def test_lockstep_step_messages(bridge, peer):
    peer.hello(lockstep=3)
    peer.obs(1, wait=True)
    obs = bridge.wait_observation(after_seq=0, timeout_s=2)
    assert obs.seq == 1 and obs.wait
    h = bridge.send_call(Call("wait", {}), obs_seq=1)
    bridge.step(1, [h.id])
    peer.expect("call", id=h.id)
    assert peer.expect("step")["calls"] == [h.id]  # the call always precedes its step
    assert bridge.wait_observation(after_seq=1, timeout_s=0.1) is None


def test_heartbeats_both_ways(bridge, peer):
    peer.hello()
    ping = peer.expect("ping")
    assert ping["epoch"] == bridge.epoch
    peer.send({"v": 1, "type": "pong", "t_ms": ping["t_ms"]})
    peer.send({"v": 1, "type": "ping", "t_ms": 123.0})
    assert peer.expect("pong")["t_ms"] == 123.0
    assert wait_until(lambda: bridge.stats()["ping_rtt_ms"]["n"] >= 1)


def test_bye_and_close(bridge, peer):
    peer.hello()
    h = bridge.send_call(Call("wait", {}))
    peer.send({"v": 1, "type": "bye", "reason": "done"})
    with pytest.raises(EngineCallError) as info:
        h.result.result(timeout=2)
    assert info.value.code == "engine_bye"
    peer.hello(session="again")
    bridge.close()
    assert peer.expect("bye")["reason"]


def test_exposed_bind_needs_curve():
    with pytest.raises(BridgeConfigError, match="CURVE"):
        EngineBridge(endpoint="tcp://0.0.0.0:5555")
    with pytest.raises(BridgeConfigError):
        BridgeConfig(heartbeat_ms=1)


# Endpoints on which the bridge's own loopback test and agent/security.py used to disagree (or were
# both wrong), with the one rule's answer: local only for ipc/inproc, literal loopback addresses and
# the name "localhost"; any other name, address or transport is exposed and needs CURVE.
BIND_CASES = [
    ("tcp://127.0.0.1:5560", True), ("tcp://127.3.2.1:5560", True), ("tcp://localhost:5560", True),
    ("tcp://[::1]:5560", True), ("tcp://::1:5560", True), ("ipc:///tmp/tickcall-bridge", True),
    ("inproc://bridge", True),
    ("tcp://localhost.evil.example:5560", False),  # the policy service called it local
    ("tcp://localhostfoo:5560", False),  # a prefix match called it local
    ("tcp://127.evil.example:5560", False),  # both called it local: a name, resolved anywhere
    ("udp://127.0.0.1:5560", False), ("ws://127.0.0.1:5560", False),  # the bridge called them local
    ("tcp://0.0.0.0:5560", False), ("tcp://*:5560", False), ("tcp://lo:5560", False),
    ("tcp://192.168.1.5:5560", False), ("tcp://[::]:5560", False),
]


@pytest.mark.parametrize(("endpoint", "local"), BIND_CASES)
def test_one_bind_policy_for_the_bridge_and_the_policy_service(endpoint, local):
    from tickcall.agent.config import CurveConfig, ServeConfig
    from tickcall.agent.security import check_bind, curve_required, is_local_endpoint

    assert is_local_endpoint(endpoint) is local and curve_required(endpoint) is not local
    service_refuses = bridge_refuses = False
    try:
        check_bind(endpoint, ServeConfig(bind=endpoint).curve, False)
    except ValueError:
        service_refuses = True
    try:
        BridgeConfig(endpoint=endpoint).check_bind()
    except BridgeConfigError:
        bridge_refuses = True
    assert service_refuses == bridge_refuses == (not local)
    # with CURVE keys (or the explicit insecure opt-in) both accept any bind
    check_bind(endpoint, CurveConfig(server_secret="server.key_secret"), False)
    BridgeConfig(endpoint=endpoint, curve_secret_key="server.key_secret").check_bind()
    BridgeConfig(endpoint=endpoint, allow_insecure=True).check_bind()


def test_curve_keys_are_certificate_files_only(tmp_path):
    _pub, sec = zmq.curve_keypair()
    raw = EngineBridge(endpoint="tcp://127.0.0.1:0", curve_secret_key=sec.decode())
    with pytest.raises(ValueError, match="certificate files"):
        raw.start()  # a raw z85 key string is refused: keys live in files, not configs or argv
    public_only = tmp_path / "x.key"
    public_only.write_text('metadata\ncurve\n    public-key = "' + _pub.decode() + '"\n')
    with pytest.raises(ValueError, match="no secret key"):
        EngineBridge(endpoint="tcp://127.0.0.1:0", curve_secret_key=str(public_only)).start()


def curve_peer(ctx, endpoint: str, server_public: bytes, public: bytes, secret: bytes) -> Peer:
    p = Peer(endpoint, ctx)
    p.sock.close(0)
    p.sock = ctx.socket(zmq.DEALER)
    p.sock.setsockopt(zmq.LINGER, 0)
    p.sock.curve_serverkey, p.sock.curve_publickey, p.sock.curve_secretkey = server_public, public, secret
    p.sock.connect(endpoint)
    return p


def test_curve_bridge(ctx, tmp_path):
    from tickcall.agent.security import generate_keys, load_secret_key

    keys = generate_keys(tmp_path / "keys", names=("bridge", "engine"))
    pub, _sec = load_secret_key(keys["bridge"])
    with EngineBridge(endpoint="tcp://127.0.0.1:0", curve_secret_key=str(keys["bridge"])) as b:
        cpub, csec = zmq.curve_keypair()
        p = curve_peer(ctx, b.endpoint, pub, cpub, csec)
        try:
            assert p.hello()["type"] == "welcome"
        finally:
            p.close()
        plain = Peer(b.endpoint, ctx)  # without CURVE: no handshake, nothing gets through
        try:
            plain.send({"v": 1, "type": "hello", "engine": "x", "session": "p", "tools": TOOLS})
            assert plain.recv(0.5) is None
            assert b.session.id == "s1"
        finally:
            plain.close()


def test_curve_bridge_with_authorised_engines_only(ctx, tmp_path):
    from tickcall.agent.security import generate_keys, load_secret_key

    keys = generate_keys(tmp_path / "keys", names=("bridge", "engine"))
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "engine.key").write_text((tmp_path / "keys" / "engine.key").read_text())
    pub, _ = load_secret_key(keys["bridge"])
    with EngineBridge(endpoint="tcp://127.0.0.1:0", curve_secret_key=str(keys["bridge"]),
                      curve_client_keys=str(allowed)) as b:
        stranger = curve_peer(ctx, b.endpoint, pub, *zmq.curve_keypair())
        try:
            stranger.send({"v": 1, "type": "hello", "engine": "x", "session": "p", "tools": TOOLS})
            assert stranger.recv(0.5) is None and b.session is None
        finally:
            stranger.close()
        known = curve_peer(ctx, b.endpoint, pub, *load_secret_key(keys["engine"]))
        try:
            assert known.hello()["type"] == "welcome"
        finally:
            known.close()
