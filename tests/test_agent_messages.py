"""The typed messages of the policy protocol (agent/messages.py) against protocol v1 as peers write it.

Old-style peers (examples/mode2_client.py, docs/protocol.md's raw-pyzmq client, non-Python engines)
build plain maps with ``msgpack.packb`` and read replies as plain maps. These tests check both ways:
such maps decode into the typed structs, and what the typed side writes reads back as the maps
docs/protocol.md describes (same keys, same value types, no extra nils where v1 left keys out).
Also: the in-process policy answers exactly as the server does.
"""

from __future__ import annotations

import msgpack
import msgspec
import pytest
from helpers import CART_TOOLS
from tickcall.agent import protocol as P
from tickcall.agent.config import ServeConfig
from tickcall.agent.inproc import InProcPolicy
from tickcall.agent.messages import (
    Bye,
    ByeReply,
    CallReply,
    Decide,
    ErrorReply,
    Hello,
    Limits,
    Ping,
    Pong,
    Register,
    Registered,
    ServerInfo,
    Timings,
    Tokens,
    Welcome,
    WireCall,
    WireTurn,
)
from tickcall.agent.server import PolicyServer
from tickcall.models.stand_ins import NoOpEngine

TOOLS = CART_TOOLS[:1]  # push(dir) only

# requests exactly as docs/protocol.md (and examples/mode2_client.py) write them
OLD_REQUESTS = [
    ({"v": 1, "type": "hello", "id": 1}, Hello(id=1)),
    (
        {"v": 1, "type": "hello", "id": 1, "client": "mode2-example", "versions": [1]},
        Hello(id=1, client="mode2-example", versions=[1]),
    ),
    ({"v": 1, "type": "register", "id": 2, "tools": TOOLS}, Register(id=2, tools=TOOLS)),
    (
        {"v": 1, "type": "register", "id": "r2", "tools": TOOLS, "system": None, "template": "v2"},
        Register(id="r2", tools=TOOLS, template="v2"),
    ),
    (
        {
            "v": 1,
            "type": "decide",
            "id": 3,
            "handle": "ab.1",
            "tick": 1,
            "deadline_ms": 60.0,
            "turn": {"query": "", "observation": {"x": 0.01, "v": -0.34}, "history": []},
        },
        Decide(
            id=3, handle="ab.1", tick=1, deadline_ms=60.0, turn=WireTurn(observation={"x": 0.01, "v": -0.34})
        ),
    ),
    (
        {
            "v": 1,
            "type": "decide",
            "id": 4,
            "handle": "ab.1",
            "tick": 7,
            "turn": {"query": "tgt=SE"},
            "sent_ms": 12.5,
            "deadline_ms": 62,
            "stream": "npc1",
            "future_key": "ignored",
        },
        Decide(
            id=4,
            handle="ab.1",
            tick=7,
            turn=WireTurn(query="tgt=SE"),
            sent_ms=12.5,
            deadline_ms=62.0,
            stream="npc1",
        ),
    ),
    ({"v": 1, "type": "ping", "id": 5, "sent_ms": 1.0}, Ping(id=5, sent_ms=1.0)),
    ({"v": 1, "type": "bye", "id": 6}, Bye(id=6)),
]


@pytest.mark.parametrize(("old", "typed"), OLD_REQUESTS)
def test_old_style_requests_decode_into_typed_structs(old, typed):
    payload = msgpack.packb(old, use_bin_type=True)
    assert P.decode_request(payload, 1 << 20) == typed
    # and the typed request, encoded, is the old map again (keys left out stay out; "ignored" is not kept)
    expect = {k: v for k, v in old.items() if v is not None and k != "future_key"}
    back = msgpack.unpackb(P.encode(typed), raw=False)
    if "turn" in back:
        assert WireTurn(**back.pop("turn")) == typed.turn
        expect.pop("turn")
    assert back == expect


def test_hello_is_byte_for_byte_the_documented_frame():
    documented = bytes.fromhex("83 a1 76 01 a4 74 79 70 65 a5 68 65 6c 6c 6f a2 69 64 01")
    assert P.encode(Hello(id=1)) == documented == msgpack.packb({"v": 1, "type": "hello", "id": 1})


def _call_reply() -> CallReply:
    return CallReply(
        id=3,
        epoch="e1",
        tick=1,
        handle="e1.1",
        call=WireCall("push", {"dir": "left"}),
        legal=True,
        reason="",
        heads={"function": "push", "arg1": "left"},
        tokens=Tokens(prompt=5, cached=40, generated={"function": 2, "arg1": 2}),
        timings_ms=Timings(queue=0.1, prefill=1.0, decode=2.0, assemble=0.1, engine=3.2, server=3.4),
        batch=1,
        sent_ms=None,
    )


def test_typed_replies_encode_to_the_maps_an_old_peer_reads():
    old = msgpack.unpackb(P.encode(_call_reply()), raw=False)
    assert list(old)[:4] == ["v", "type", "id", "epoch"]
    assert old == {
        "v": 1,
        "type": "call",
        "id": 3,
        "epoch": "e1",
        "tick": 1,
        "handle": "e1.1",
        "call": {"name": "push", "arguments": {"dir": "left"}},
        "legal": True,
        "reason": "",
        "heads": {"function": "push", "arg1": "left"},
        "tokens": {"prompt": 5, "cached": 40, "generated": {"function": 2, "arg1": 2}},
        "timings_ms": {
            "queue": 0.1,
            "prefill": 1.0,
            "decode": 2.0,
            "assemble": 0.1,
            "engine": 3.2,
            "server": 3.4,
        },
        "batch": 1,
        "sent_ms": None,
    }  # call and sent_ms: always present, nil when unset
    no_call = msgspec.structs.replace(_call_reply(), call=None, legal=False, reason="no offered tool named")
    assert msgpack.unpackb(P.encode(no_call), raw=False)["call"] is None
    err = msgpack.unpackb(
        P.encode(P.error_reply("expired", "too late", 9, "e1", tick=4, handle="e1.1", late_ms=2.5)), raw=False
    )
    assert err == {
        "v": 1,
        "type": "error",
        "id": 9,
        "epoch": "e1",
        "code": "expired",
        "message": "too late",
        "tick": 4,
        "handle": "e1.1",
        "late_ms": 2.5,
    }  # "where known" extras only
    bare = msgpack.unpackb(P.encode(P.error_reply("malformed", "not msgpack", None, "e1")), raw=False)
    assert bare == {
        "v": 1,
        "type": "error",
        "id": None,
        "epoch": "e1",
        "code": "malformed",
        "message": "not msgpack",
    }
    pong = msgpack.unpackb(P.encode(Pong(id=5, epoch="e1", sent_ms=None, queued=0, busy_ms=0.0)), raw=False)
    assert pong == {
        "v": 1,
        "type": "pong",
        "id": 5,
        "epoch": "e1",
        "sent_ms": None,
        "queued": 0,
        "busy_ms": 0.0,
    }


def test_old_style_replies_decode_into_typed_structs():
    """Replies as a v1 server wrote them (plain dicts, its own key order) read back typed."""
    welcome = {
        "v": 1,
        "type": "welcome",
        "id": 1,
        "epoch": "e1",
        "versions": [1],
        "server": {"name": "tickcall", "version": "0.1.0"},
        "engine": {"backend": "noop"},
        "templates": ["v1", "v2", "compact"],
        "limits": {
            "max_message_bytes": 1 << 20,
            "max_batch": 32,
            "max_registrations": 64,
            "max_deadline_ms": 3.6e6,
        },
    }
    w = P.decode_reply(msgpack.packb(welcome))
    assert w == Welcome(
        id=1,
        epoch="e1",
        versions=[1],
        server=ServerInfo("tickcall", "0.1.0"),
        engine={"backend": "noop"},
        templates=["v1", "v2", "compact"],
        limits=Limits(1 << 20, 32, 64, 3.6e6),
    )
    reg = {
        "v": 1,
        "type": "registered",
        "id": 2,
        "epoch": "e1",
        "handle": "e1.1",
        "heads": ["function", "arg1"],
        "head_count": 2,
        "prefix_tokens": 40,
        "template": "v2",
        "tools": ["push"],
    }
    assert P.decode_reply(msgpack.packb(reg)) == Registered(
        id=2,
        epoch="e1",
        handle="e1.1",
        heads=["function", "arg1"],
        head_count=2,
        prefix_tokens=40,
        template="v2",
        tools=["push"],
    )
    call = msgpack.unpackb(P.encode(_call_reply()), raw=False)
    assert P.decode_reply(msgpack.packb(dict(reversed(list(call.items()))))) == _call_reply()  # order-free
    err = {
        "v": 1,
        "type": "error",
        "id": 3,
        "epoch": "e1",
        "code": "superseded",
        "message": "tick 1 replaced",
        "tick": 1,
        "handle": "e1.1",
        "by_tick": 2,
    }
    assert P.decode_reply(msgpack.packb(err)) == ErrorReply(
        id=3, epoch="e1", code="superseded", message="tick 1 replaced", tick=1, handle="e1.1", by_tick=2
    )
    assert P.decode_reply(msgpack.packb({"v": 1, "type": "bye", "id": 6, "epoch": "e1"})) == ByeReply(
        id=6, epoch="e1"
    )
    for bad in ({**err, "v": 2}, {**err, "type": "oops"}, {**err, "tick": "1"}, {**err, "message": None}):
        with pytest.raises(P.ProtocolError):
            P.decode_reply(msgpack.packb(bad))


def test_in_process_policy_answers_as_the_server_does():
    from tickcall.agent.client import PolicyClient

    srv = PolicyServer(NoOpEngine(), ServeConfig(bind="tcp://127.0.0.1:0"))
    client = PolicyClient(srv.start(), timeout_ms=5000)
    inproc = InProcPolicy(NoOpEngine())
    try:
        w_net, w_in = client.hello(), inproc.hello()
        assert (w_net.engine, w_net.templates, w_net.server) == (w_in.engine, w_in.templates, w_in.server)
        r_net, r_in = client.register(TOOLS), inproc.register(TOOLS)
        assert (r_net.heads, r_net.prefix_tokens, r_net.tool_names) == (
            r_in.heads,
            r_in.prefix_tokens,
            r_in.tools,
        )
        turn = {"query": "go", "observation": {"x": 0.25}, "history": ['push(dir="left")']}
        a, b = (
            client.decide(turn, tick_id=7, deadline_ms=1000),
            inproc.decide(turn, tick_id=7, deadline_ms=1000),
        )
        assert type(a) is type(b) is CallReply
        same = ("type", "tick", "call", "legal", "reason", "heads", "tokens", "batch")
        assert {k: getattr(a, k) for k in same} == {k: getattr(b, k) for k in same}
        with pytest.raises(P.PolicyError) as exc:
            inproc.register(
                [
                    {
                        "name": "f",
                        "parameters": {
                            "type": "object",
                            "properties": {f"p{i}": {"type": "number"} for i in range(65)},
                        },
                    }
                ]
            )
        assert exc.value.code == "illegal_tools"
        with pytest.raises(P.ProtocolError) as exc:  # the server's validation path, limits included
            inproc.send_decide(WireTurn(history=["a"] * (P.MAX_HISTORY_ITEMS + 1)), tick_id=8)
        assert exc.value.code == "malformed"
    finally:
        client.close()
        srv.stop()
        inproc.close()


# --------------------------------------------------------------------------- the one validation path


def _decide(**kw):
    msg = {"v": 1, "type": "decide", "id": 3, "handle": "h", "tick": 1, "turn": {"query": "x"}}
    msg.update(kw)
    return msg


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        ({"v": 1, "type": "fly", "id": 1}, "unknown_type"),
        ({"v": 2, "type": "hello", "id": 1}, "version_mismatch"),
        ({"v": 1, "type": "hello", "id": 1, "versions": [2, 3]}, "version_mismatch"),
        ({"type": "hello", "id": 1}, "malformed"),
        ({"v": 1, "type": "hello"}, "malformed"),
        ({"v": 1, "type": "hello", "id": 1.5}, "malformed"),
        ({"v": True, "type": "hello", "id": 1}, "malformed"),
        ({"v": 1, "type": 7, "id": 1}, "malformed"),
        (_decide(handle=None), "malformed"),
        (_decide(tick="1"), "malformed"),
        (_decide(tick=True), "malformed"),
        (_decide(turn="x"), "malformed"),
        (_decide(turn={"query": 3}), "malformed"),
        (_decide(turn={"history": ["a", 1]}), "malformed"),
        (_decide(turn={"observation": {"x": [1]}}), "malformed"),
        (_decide(turn={"observation": {"x": float("nan")}}), "malformed"),
        (_decide(deadline_ms=0), "malformed"),
        (_decide(deadline_ms=-5), "malformed"),
        (_decide(deadline_ms=float("inf")), "malformed"),
        (_decide(sent_ms="now"), "malformed"),
        (_decide(stream=5), "malformed"),
        ({"v": 1, "type": "register", "id": 1, "tools": []}, "malformed"),
        ({"v": 1, "type": "register", "id": 1, "tools": ["push"]}, "malformed"),
        ({"v": 1, "type": "register", "id": 1, "tools": [{}] * (P.MAX_TOOLS + 1)}, "illegal_tools"),
        ({"v": 1, "type": "register", "id": 1, "tools": TOOLS, "system": 5}, "malformed"),
    ],
)
def test_parse_errors_have_codes(msg, code):
    with pytest.raises(P.ProtocolError) as exc:
        P.parse_request(msg)
    assert exc.value.code == code
    if code == "version_mismatch":
        assert exc.value.extra["versions"] == [1]


def test_decode_refuses_non_maps_ext_and_oversize():
    hello = {"v": 1, "type": "hello", "id": 1}
    for payload in (
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({1: 2}),
        b"\x82\xa1a",
        msgpack.packb(msgpack.ExtType(5, b"x")),
        msgpack.packb({**hello, "client": msgpack.ExtType(5, b"x")}),
        msgpack.packb(
            {"v": 1, "type": "register", "id": 1, "tools": [{"name": "f", "x": msgpack.Timestamp(1, 0)}]}
        ),
    ):
        with pytest.raises(P.ProtocolError) as exc:
            P.decode_request(payload, 1024)
        assert exc.value.code == "malformed"
    with pytest.raises(P.ProtocolError) as exc:
        P.decode_request(b"\x80" * 2000, 1024)
    assert exc.value.code == "oversized"


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        ({"v": 1, "type": "hello", "id": "x" * (P.MAX_ID_CHARS + 1)}, "malformed"),
        ({"v": 1, "type": "hello", "id": 2**64}, "malformed"),
        ({"v": 1, "type": "hello", "id": 1, "client": "c" * (P.MAX_NAME_CHARS + 1)}, "malformed"),
        (_decide(handle="h" * (P.MAX_NAME_CHARS + 1)), "malformed"),
        (_decide(tick=2**63), "malformed"),
        (_decide(deadline_ms=P.MAX_DEADLINE_MS + 1), "malformed"),
        (_decide(turn={"history": ["a"] * (P.MAX_HISTORY_ITEMS + 1)}), "malformed"),
        (_decide(turn={"environment": ["a"] * (P.MAX_ENV_ITEMS + 1)}), "malformed"),
        (_decide(turn={"observation": {f"k{i}": i for i in range(P.MAX_OBS_KEYS + 1)}}), "malformed"),
    ],
)
def test_field_limits(msg, code):
    with pytest.raises(P.ProtocolError) as exc:
        P.parse_request(msg)
    assert exc.value.code == code


def test_limits_are_inclusive():
    req = P.parse_request(
        _decide(
            tick=2**63 - 1,
            deadline_ms=P.MAX_DEADLINE_MS,
            id="x" * P.MAX_ID_CHARS,
            turn={"history": ["a"] * P.MAX_HISTORY_ITEMS, "query": None},
        )
    )
    assert req.tick == 2**63 - 1 and req.turn.query == "" and len(req.turn.history) == P.MAX_HISTORY_ITEMS
    assert P.parse_request({"v": 1, "type": "hello", "id": 2**64 - 1}).id == 2**64 - 1
