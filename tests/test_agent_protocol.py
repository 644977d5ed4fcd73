"""Policy service wire protocol v1: parsing, and the server over real ZMQ sockets (server in threads of
this process; the Ray actor tests are in test_agent_service.py).

Engines: ``NoOpEngine`` (plumbing only), wrapped by tests/helpers.py's InjectedEngine where a test needs
a slow decode (a fixed per-batch sleep) or a failing one (a marker query): stand-ins for a model, chosen
so that queueing, superseding, expiry and failure isolation can be provoked deterministically.
"""

from __future__ import annotations

import time

import pytest
from helpers import CART_TOOLS, Raw, injected
from tickcall.agent import protocol as P
from tickcall.agent.client import PolicyClient, PolicyError, PolicyTimeout
from tickcall.agent.config import CurveConfig, ServeConfig
from tickcall.agent.engines import build_engine
from tickcall.agent.messages import CallReply, ErrorReply
from tickcall.agent.security import check_bind, generate_keys, is_local_endpoint
from tickcall.agent.server import PolicyServer

TOOLS = CART_TOOLS


@pytest.fixture
def serve():
    servers = []

    def _start(engine=None, **cfg) -> PolicyServer:
        cfg.setdefault("bind", "tcp://127.0.0.1:0")
        srv = PolicyServer(build_engine(engine or {"backend": "noop"}), ServeConfig(**cfg))  # a spec
        srv.start()
        servers.append(srv)
        return srv

    yield _start
    for s in servers:
        s.stop()


# --------------------------------------------------------------------------- parsing


def _decide(**kw):
    msg = {"v": 1, "type": "decide", "id": 3, "handle": "h", "tick": 1, "turn": {"query": "x"}}
    msg.update(kw)
    return msg


def test_parse_valid_decide_and_render_observation():
    req = P.parse_request(
        _decide(
            turn={
                "query": "go",
                "history": ['push(dir="left")'],
                "observation": {"x": 0.25, "ok": True, "n": 3, "s": "hi", "z": None},
            },
            deadline_ms=60,
            sent_ms=12.5,
            stream="npc1",
        )
    )
    assert isinstance(req, P.Decide)
    assert (req.tick, req.deadline_ms, req.sent_ms, req.stream) == (1, 60.0, 12.5, "npc1")
    turn = P.to_turn(req.turn)
    assert turn.query == "x=+0.250 ok=true n=3 s=hi z=null\ngo"  # models.prompt_text's one format
    assert turn.history == ['push(dir="left")']
    assert P.to_turn(P.WireTurn(observation={"a": -1e-05})).query == "a=+0.000"


def test_bind_policy():
    assert is_local_endpoint("tcp://127.0.0.1:5555") and is_local_endpoint("ipc:///tmp/x")
    assert not is_local_endpoint("tcp://0.0.0.0:5555") and not is_local_endpoint("tcp://*:5555")
    with pytest.raises(ValueError, match="without authentication"):
        check_bind("tcp://0.0.0.0:5555", None, False)
    check_bind("tcp://0.0.0.0:5555", None, True)
    check_bind("tcp://0.0.0.0:5555", CurveConfig(server_secret="x"), False)


def test_config_files_load():
    cfg = ServeConfig.from_yaml("configs/serve.yaml")
    assert cfg.bind.startswith("tcp://127.0.0.1")
    cfg = ServeConfig.from_yaml("configs/serve-curve.yaml")
    assert cfg.curve is not None and cfg.curve.server_secret
    with pytest.raises(ValueError, match="unknown serve config keys"):
        ServeConfig.from_dict({"bnd": "x"})


# --------------------------------------------------------------------------- server over sockets


def test_round_trip_raw_socket(serve):
    srv = serve()
    raw = Raw(srv.endpoint)
    raw.request("hello", client="test")
    w = raw.recv()
    assert w["type"] == "welcome" and w["id"] == 1 and w["versions"] == [1] and w["epoch"] == srv.epoch
    assert w["engine"]["backend"] == "noop" and w["limits"]["max_message_bytes"] == 1 << 20
    raw.request("register", tools=TOOLS)
    r = raw.recv()
    assert r["type"] == "registered" and r["heads"] == ["function", "arg1"] and r["head_count"] == 2
    assert r["prefix_tokens"] > 0 and r["tools"] == ["push", "wait"] and r["handle"].startswith(srv.epoch[:8])
    raw.request("register", tools=TOOLS)
    assert raw.recv()["handle"] == r["handle"]  # same tool set, same handle (one prefix cache)
    raw.request("decide", handle=r["handle"], tick=41, turn={"query": "x=1"}, sent_ms=5.0, deadline_ms=1000)
    c = raw.recv()
    assert c["type"] == "call" and c["id"] == 4 and c["tick"] == 41 and c["sent_ms"] == 5.0
    # the no-op engine answers a legal call: the tool without required parameters (models.stand_ins)
    assert c["call"] == {"name": "wait", "arguments": {}} and c["legal"] is True
    assert c["reason"] == "" and c["heads"] == {"function": "wait", "arg1": "<|null|>"}
    assert set(c["timings_ms"]) == {"queue", "prefill", "decode", "assemble", "engine", "server"}
    assert c["batch"] == 1 and c["tokens"]["cached"] == r["prefix_tokens"]
    raw.request("ping", sent_ms=1.0)
    pong = raw.recv()
    assert pong["type"] == "pong" and pong["sent_ms"] == 1.0 and pong["epoch"] == srv.epoch
    raw.request("bye")
    assert raw.recv()["type"] == "bye"
    raw.request("decide", handle=r["handle"], tick=42, turn={})
    gone = raw.recv()
    assert gone["code"] == "unknown_handle" and gone["tick"] == 42  # bye dropped its registration
    raw.close()


def test_bad_messages_get_errors_and_server_keeps_serving(serve):
    srv = serve(max_message_bytes=4096, hard_max_message_bytes=1 << 16)
    raw = Raw(srv.endpoint)
    cases = [
        (b"\xc1garbage", "malformed", None),
        (P.pack([1, 2, 3]), "malformed", None),
        ([P.pack({"v": 1, "type": "ping", "id": 1}), b"x"], "malformed", None),
        (P.pack({"v": 9, "type": "ping", "id": 7}), "version_mismatch", 7),
        (P.pack({"v": 1, "type": "launch", "id": 8}), "unknown_type", 8),
        (
            P.pack({"v": 1, "type": "decide", "id": 9, "handle": "nope", "tick": 3, "turn": {}}),
            "unknown_handle",
            9,
        ),
        (P.pack({"v": 1, "type": "register", "id": 10, "tools": TOOLS + TOOLS[:1]}), "illegal_tools", 10),
        (P.pack({"v": 1, "type": "register", "id": 11, "tools": TOOLS, "template": "v9"}), "malformed", 11),
        (P.pack({"v": 1, "type": "ping", "id": 12, "pad": "x" * 5000}), "oversized", None),
    ]
    for payload, code, msg_id in cases:
        raw.send(payload)
        reply = raw.recv()
        assert reply is not None, code
        assert (reply["type"], reply["code"], reply["id"]) == ("error", code, msg_id), reply
        assert reply["message"] and reply["epoch"] == srv.epoch
    # above the hard limit ZMQ drops the connection (no reply possible); the server serves on
    raw.send(b"\x80" * (1 << 17))
    other = Raw(srv.endpoint)
    other.request("ping")
    assert other.recv()["type"] == "pong"
    assert srv.stats()["received"] >= len(cases) + 1
    raw.close()
    other.close()


def test_illegal_tools_message_is_clear(serve):
    # the no-op engine has no model and takes up to 64 parameters (format.MAX_HEADS_LIMIT); a model's
    # own limit (6 for the public checkpoints) is tested in test_many_heads.py
    c = PolicyClient(serve().endpoint, timeout_ms=5000)
    wide = [
        {
            "name": "f",
            "parameters": {"type": "object", "properties": {f"p{i}": {"type": "number"} for i in range(65)}},
        }
    ]
    with pytest.raises(PolicyError) as exc:
        c.register(wide)
    assert exc.value.code == "illegal_tools" and "at most 64" in exc.value.message
    c.close()


def _wait_busy(raw: Raw, max_ms: float) -> None:
    """Ping until the engine thread reports it is inside decide_batch (busy_ms > 0)."""
    for _ in range(500):
        raw.request("ping")
        pong = raw.recv()
        if pong["busy_ms"] > 0:
            assert pong["busy_ms"] < max_ms, "the blocking batch ended before the test could queue behind it"
            return
    raise AssertionError("engine never became busy")


def test_latest_wins_supersedes_queued_decide(serve):
    srv = serve(injected(batch_delay_ms=400))
    raw = Raw(srv.endpoint)
    handle = (raw.request("register", tools=TOOLS), raw.recv())[1]["handle"]
    raw.request("decide", handle=handle, tick=1, turn={"query": "a"}, stream="blocker")
    _wait_busy(raw, 300)
    ids = [raw.request("decide", handle=handle, tick=t, turn={"query": "b"}) for t in (2, 3, 4)]
    replies = {}
    for _ in range(4):
        r = raw.recv()
        replies[r["id"]] = r
    assert replies[ids[0]]["code"] == "superseded" and replies[ids[0]]["by_tick"] == 3
    assert replies[ids[1]]["code"] == "superseded" and replies[ids[1]]["by_tick"] == 4
    assert replies[ids[2]]["type"] == "call" and replies[ids[2]]["tick"] == 4
    assert raw.recv(200) is None  # exactly one reply per request
    raw.close()


def test_expired_deadline_is_not_decoded(serve):
    srv = serve(injected(batch_delay_ms=500))
    raw = Raw(srv.endpoint)
    handle = (raw.request("register", tools=TOOLS), raw.recv())[1]["handle"]
    raw.request("decide", handle=handle, tick=1, turn={"query": "a"}, stream="blocker")
    _wait_busy(raw, 400)
    late = raw.request("decide", handle=handle, tick=2, turn={"query": "b"}, deadline_ms=1.0)
    ok = raw.request("decide", handle=handle, tick=3, turn={"query": "c"}, deadline_ms=60_000, stream="s3")
    replies = {r["id"]: r for r in (raw.recv(), raw.recv(), raw.recv())}
    assert replies[late]["code"] == "expired" and replies[late]["tick"] == 2 and replies[late]["late_ms"] > 0
    assert replies[ok]["type"] == "call"
    assert srv.stats()["decided"] == 2  # the blocker and tick 3; tick 2 never reached the engine
    raw.close()


def test_engine_failure_is_isolated_within_a_batch(serve):
    srv = serve(injected(batch_delay_ms=300, fail_on_query="boom"))
    raw = Raw(srv.endpoint)
    handle = (raw.request("register", tools=TOOLS), raw.recv())[1]["handle"]
    raw.request("decide", handle=handle, tick=1, turn={"query": "a"}, stream="blocker")
    _wait_busy(raw, 250)
    good = raw.request("decide", handle=handle, tick=2, turn={"query": "fine"}, stream="a")
    bad = raw.request("decide", handle=handle, tick=3, turn={"query": "boom"}, stream="b")
    replies = {r["id"]: r for r in (raw.recv(), raw.recv(), raw.recv())}
    assert replies[good]["type"] == "call"
    assert replies[bad]["code"] == "engine_failure" and "boom" in replies[bad]["message"]
    assert srv.stats()["batch_retries"] == 1
    raw.request("decide", handle=handle, tick=4, turn={"query": "again"})
    assert raw.recv()["type"] == "call"
    raw.close()


def test_bye_cancels_queued_decides(serve):
    srv = serve(injected(batch_delay_ms=300))
    raw = Raw(srv.endpoint)
    handle = (raw.request("register", tools=TOOLS), raw.recv())[1]["handle"]
    raw.request("decide", handle=handle, tick=1, turn={"query": "a"}, stream="blocker")
    _wait_busy(raw, 250)
    queued = raw.request("decide", handle=handle, tick=2, turn={"query": "b"})
    bye = raw.request("bye")
    replies = {r["id"]: r for r in (raw.recv(), raw.recv(), raw.recv())}
    assert replies[queued]["code"] == "cancelled" and replies[bye]["type"] == "bye"
    raw.close()


# --------------------------------------------------------------------------- client behaviour


def test_client_decide_poll_and_many_clients(serve):
    srv = serve(injected(batch_delay_ms=20))
    clients = [PolicyClient(srv.endpoint, timeout_ms=10_000, name=f"c{i}") for i in range(6)]
    for c in clients:
        c.register(TOOLS)
    for rnd in range(3):
        ids = {
            c.send_decide({"query": f"r{rnd}", "observation": {"i": i}}, tick_id=rnd): c
            for i, c in enumerate(clients)
        }
        got = {}
        for c in clients:
            for r in c.poll(timeout_ms=10_000):
                got[r.id] = r
        assert set(got) == set(ids)
        assert all(isinstance(r, CallReply) and r.tick == rnd and r.call.name == "wait" for r in got.values())
    st = srv.stats()
    assert st["decided"] == 18 and max(st["batch_sizes"]) > 1  # several clients decoded together
    for c in clients:
        c.close()


def test_client_times_out_cleanly_then_recovers_on_restart():
    """The server goes away; every decide is still answered (timeout); a new server (new epoch) on the
    same endpoint is found, the tools are registered again, and decisions continue."""
    cfg = ServeConfig(bind="tcp://127.0.0.1:0")
    srv = PolicyServer(build_engine({"backend": "noop"}), cfg)
    endpoint = srv.start()
    c = PolicyClient(endpoint, timeout_ms=300)
    reg = c.register(TOOLS)
    old_handle, old_epoch = reg.handle, c.epoch
    assert c.decide("x", tick_id=1).type == "call"
    srv.stop()
    r = c.decide("x", tick_id=2)
    assert isinstance(r, ErrorReply) and (r.code, r.tick) == ("timeout", 2) and "no reply" in r.message
    srv2 = PolicyServer(build_engine({"backend": "noop"}), ServeConfig(bind=endpoint))
    srv2.start()
    try:
        for tick in range(3, 50):
            r = c.decide("x", tick_id=tick, timeout_ms=2000)
            if r.type == "call":
                break
            assert r.code == "timeout"
        assert r.type == "call" and r.tick == tick
        assert c.epoch == srv2.epoch != old_epoch and reg.handle != old_handle and reg.renewals == 1
        assert c.stats["resets"] >= 1
    finally:
        c.close()
        srv2.stop()


def test_client_resends_after_unknown_handle(serve):
    """A handle evicted by the server (max_registrations) is renewed and the decide sent again."""
    srv = serve(max_registrations=1)
    a = PolicyClient(srv.endpoint, timeout_ms=5000)
    b = PolicyClient(srv.endpoint, timeout_ms=5000)
    reg_a = a.register(TOOLS)
    b.register(TOOLS[:1])  # evicts a's tool set
    r = a.decide("x", tick_id=1)
    assert r.type == "call" and a.stats["resent"] == 1 and reg_a.renewals == 1
    a.close()
    b.close()


def test_blocking_requests_time_out(serve):
    c = PolicyClient("tcp://127.0.0.1:9", timeout_ms=100)  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(PolicyTimeout):
        c.hello()
    assert time.monotonic() - t0 < 30  # returns at all (generous bound: not a timing test)
    c.close()


# --------------------------------------------------------------------------- CURVE


def test_curve_authentication(serve, tmp_path):
    keys = generate_keys(tmp_path / "keys", ("server", "client", "intruder"))
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "client.key").write_text((tmp_path / "keys" / "client.key").read_text())
    srv = serve(curve={"server_secret": str(keys["server"]), "client_keys": str(allowed)})
    server_pub = str(tmp_path / "keys" / "server.key")
    good = PolicyClient(
        srv.endpoint,
        timeout_ms=5000,
        curve={"server_public": server_pub, "client_secret": str(keys["client"])},
    )
    assert good.hello().epoch == srv.epoch
    good.register(TOOLS)
    assert good.decide("x", tick_id=1).type == "call"
    for curve in (None, {"server_public": server_pub, "client_secret": str(keys["intruder"])}):
        bad = PolicyClient(srv.endpoint, timeout_ms=300, curve=curve)
        with pytest.raises(PolicyTimeout):
            bad.hello()
        bad.close()
    good.close()


def test_gather_never_delays_a_lone_client(serve):
    """gather_ms waits only for the rest of a previous batch: one client's decides are never held back."""
    srv = serve(injected(batch_delay_ms=50), gather_ms=100.0)
    c = PolicyClient(srv.endpoint, timeout_ms=30_000)
    c.register(TOOLS)
    for tick in range(5):
        r = c.decide("x", tick_id=tick)
        assert r.type == "call" and r.batch == 1
    assert srv.stats().get("gather_waits", 0) == 0
    # several clients: once a round was decoded as one batch of 3, a lone arrival waits (up to
    # gather_ms) for the others, and that wait is counted. Three decides sent back to back need not
    # reach the engine together (it may wake on the first), so each round first keeps the engine
    # busy with the lone client's decide (50 ms) while the three queue up behind it; a round where
    # the engine was too slow to take that decide alone is retried.
    clients = [PolicyClient(srv.endpoint, timeout_ms=30_000) for _ in range(3)]
    for cl in clients:
        cl.register(TOOLS)
    for rnd in range(20):
        c.send_decide("busy", tick_id=100 + rnd)
        time.sleep(0.01)
        for cl in clients:
            cl.send_decide("y", tick_id=rnd)
        assert [r.type for r in c.poll(timeout_ms=30_000)] == ["call"]
        replies = [r for cl in clients for r in cl.poll(timeout_ms=30_000)]
        assert [r.type for r in replies] == ["call"] * 3
        if all(r.batch == 3 for r in replies):
            break
    else:
        pytest.fail("20 rounds of 3 simultaneous decides never formed one batch of 3")
    waits = srv.stats().get("gather_waits", 0)
    r = clients[0].decide("z", tick_id=99)  # alone after a batch of 3: waits, then goes alone
    assert r.type == "call" and r.batch == 1
    assert srv.stats()["gather_waits"] == waits + 1
    for cl in [c, *clients]:
        cl.close()
