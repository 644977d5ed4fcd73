"""Engine bridge protocol (mode 1) as data: typed messages, decoding, field checks, error codes,
value rendering, and compatibility with peers that speak plain msgpack maps.

Pure functions, no sockets: envs/engine_bridge_messages.py and envs/engine_bridge_protocol.py. The
socket-level behaviour is in test_bridge_server.py (a raw protocol peer) and test_bridge_engine.py
(the C++ reference engine).
"""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tickcall.envs.engine_bridge_protocol import (
    BRIDGE_MESSAGES,
    ENGINE_MESSAGES,
    ERROR_CODES,
    AckMsg,
    ByeMsg,
    CallMsg,
    DefaultCall,
    ErrorMsg,
    HelloMsg,
    ObsField,
    ObsMsg,
    ObsSpec,
    PingMsg,
    PongMsg,
    ProtocolError,
    ResultError,
    StepMsg,
    WelcomeMsg,
    check_obs,
    decode,
    decode_bridge,
    encode,
    render_values,
)

TOOLS = [{"type": "function", "function": {
    "name": "move", "description": "Move.",
    "parameters": {"type": "object", "properties": {
        "direction": {"type": "string", "enum": ["N", "S"]}}, "required": ["direction"]}}}]


def hello(**kw):
    return {"v": 1, "type": "hello", "engine": "test", "session": "s1", "tools": TOOLS, **kw}


def code_of(fn, *args):
    with pytest.raises(ProtocolError) as info:
        fn(*args)
    return info.value


def parse(msg: dict):
    """A message map as an engine sends it, through the bridge's one validation path."""
    return decode(msgpack.packb(msg))


def parse_obs(msg: dict, spec: ObsSpec) -> ObsMsg:
    obs = parse(msg)
    check_obs(obs, spec)
    return obs


def test_round_trip_and_version_rules():
    msg = decode(encode(hello()))
    assert isinstance(msg, HelloMsg) and msg.engine == "test"
    err = code_of(decode, encode({**hello(), "v": 2}))
    assert err.code == "version_mismatch" and err.fatal  # a wrong-version hello ends the handshake
    assert "v in [1]" in err.message
    err = code_of(decode, encode({"type": "obs", "seq": 1}))
    assert err.code == "version_mismatch" and not err.fatal
    assert code_of(decode, encode({"v": True, "type": "obs"})).code == "version_mismatch"


def test_malformed_payloads_say_what_is_wrong():
    assert code_of(decode, b"\xc1garbage").code == "malformed"
    assert "map" in code_of(decode, msgpack.packb([1, 2, 3])).message
    assert code_of(decode, msgpack.packb({1: 2})).code == "malformed"  # non-string keys
    assert code_of(decode, encode({"v": 1, "type": 7})).code == "bad_field"
    big = encode({"v": 1, "type": "obs", "text": "x" * 5000})
    err = code_of(decode, big, 4096)
    assert err.code == "oversized" and "4096" in err.message


def test_hello_fields():
    h = parse(hello(observation={"format": "values", "fields": [{"name": "x", "unit": "m"}]},
                          lockstep=3, heartbeat_ms=100))
    assert h.lockstep == 3 and h.heartbeat_ms == 100.0
    assert h.observation.fields == (ObsField("x", "m", "", 3),)
    for bad, where in [({"engine": ""}, "engine"), ({"session": 5}, "session"),
                       ({"observation": {"format": "pixels"}}, "format"),
                       ({"observation": {"format": "values"}}, "fields"),
                       ({"lockstep": -1}, "lockstep"), ({"heartbeat_ms": 1}, "heartbeat_ms"),
                       ({"frame_hz": float("nan")}, "frame_hz")]:
        err = code_of(parse, {**hello(), **bad})
        assert err.code == "bad_field" and where in err.message and err.fatal, (bad, err)
    assert code_of(parse, hello(tools=[])).code == "bad_tools"
    assert code_of(parse, hello(tools=["move"])).code == "bad_tools"
    assert code_of(parse, hello(tools="move")).code == "bad_field"
    missing = hello()
    del missing["tools"]
    assert "hello.tools is required" in code_of(parse, missing).message
    assert parse(hello(frame_hz=None, lockstep=None)).lockstep == 0  # nil counts as absent


def test_obs_checks_against_the_declared_format():
    text_spec = ObsSpec(format="text")
    o = parse_obs({"v": 1, "type": "obs", "seq": 4, "frame": 12, "text": "x=1", "episode": 2,
                   "return": 1.5, "wait": True}, text_spec)
    assert (o.seq, o.frame, o.text, o.episode, o.ret, o.wait) == (4, 12, "x=1", 2, 1.5, True)
    assert "obs.text is required" in code_of(
        parse_obs, {"v": 1, "type": "obs", "seq": 1, "frame": 1}, text_spec).message
    spec = ObsSpec(format="values", fields=(ObsField("x"), ObsField("y")))
    err = code_of(parse_obs, {"v": 1, "type": "obs", "seq": 1, "frame": 1, "values": {"x": 1.0}}, spec)
    assert "['y']" in err.message
    err = code_of(parse_obs, {"v": 1, "type": "obs", "seq": 1, "frame": 1,
                              "values": {"x": 1.0, "y": float("inf")}}, spec)
    assert err.code == "bad_field"
    assert code_of(parse_obs, {"v": 1, "type": "obs", "seq": "1", "frame": 1, "text": ""},
                   text_spec).code == "bad_field"
    assert code_of(parse_obs, {"v": 1, "type": "obs", "seq": True, "frame": 1, "text": ""},
                   text_spec).code == "bad_field"  # bools are not integers here


def test_ack_result_episode():
    assert parse({"v": 1, "type": "ack", "id": 3, "frame": 9}).frame == 9
    r = parse({"v": 1, "type": "result", "id": 3, "ok": False,
               "error": {"code": "cooldown", "message": "wait"}})
    assert (r.ok, r.error) == (False, ResultError("cooldown", "wait"))
    assert code_of(parse, {"v": 1, "type": "result", "id": 3, "ok": False}).code == "bad_field"
    e = parse({"v": 1, "type": "episode", "index": 0, "return": 2, "length": 300})
    assert (e.ret, e.length) == (2.0, 300) and isinstance(e.ret, float)


def test_render_values_in_declared_order():
    spec = ObsSpec(format="values", fields=(ObsField("y", precision=1), ObsField("x"),
                                            ObsField("aim"), ObsField("n", precision=0), ObsField("ok"),
                                            ObsField("z")))
    text = render_values({"x": -0.0123, "y": 2, "aim": "NE", "n": 3.0, "ok": True, "z": -0.0001}, spec)
    assert text == "y=+2.0 x=-0.012 aim=NE n=3 ok=true z=+0.000"  # ints and floats alike


def test_every_error_code_is_documented():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text(encoding="utf-8")
    for code in ERROR_CODES:
        assert f"`{code}`" in doc, f"error code {code} missing from docs/protocol.md"


VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=12)
FIELDS = ["v", "type", "engine", "session", "tools", "observation", "seq", "frame", "text", "values",
          "id", "ok", "error", "index", "return", "length", "lockstep", "heartbeat_ms", "wait"]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200), VALUES.map(msgpack.packb)))
def test_decode_fails_only_with_protocol_errors(payload):
    try:
        decode(payload, 1024)
    except ProtocolError as err:
        assert err.code in ERROR_CODES


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["hello", "obs", "ack", "result", "episode"]),
       st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=8))
def test_message_checks_fail_only_with_protocol_errors(mtype, fields):
    msg = {**fields, "v": 1, "type": mtype}
    try:
        if mtype == "obs":
            parse_obs(msg, ObsSpec(format="text"))
        else:
            parse(msg)
    except ProtocolError as err:
        assert err.code in ERROR_CODES and err.message


# --------------------------------------------------------------------------- compatibility

# Every engine -> bridge message exactly as docs/protocol.md writes it (what existing engines send).
DOC_ENGINE_MESSAGES = [
    {"v": 1, "type": "hello", "engine": "arena-cpp", "engine_version": "1.0", "session": "a1b2",
     "tools": TOOLS, "observation": {"format": "values", "description": "the arena", "fields": [
         {"name": "x", "unit": "m", "description": "x position", "precision": 2}]},
     "frame_hz": 60, "heartbeat_ms": 250, "lockstep": 0,
     "default_call": {"name": "move", "arguments": {"direction": "N"}}, "instructions": "win"},
    {"v": 1, "type": "obs", "seq": 7, "frame": 14, "t_ms": 233.5, "values": {"x": 1.5},
     "episode": 2, "return": 3, "done": False, "wait": False},
    {"v": 1, "type": "obs", "seq": 8, "frame": 16, "text": "tgt=SE d=2.4 aim=N cd=0 dcd=0 tl=3.0"},
    {"v": 1, "type": "ack", "id": 5, "frame": 15},
    {"v": 1, "type": "result", "id": 5, "ok": True, "frame": 16, "value": {"hit": True}},
    {"v": 1, "type": "result", "id": 6, "ok": False, "frame": 16,
     "error": {"code": "cooldown", "message": "3 steps left"}},
    {"v": 1, "type": "episode", "index": 2, "return": 1.25, "length": 300, "reason": "timeout"},
    {"v": 1, "type": "ping", "t_ms": 1000.0},
    {"v": 1, "type": "pong", "t_ms": 998.5},
    {"v": 1, "type": "bye", "reason": "quit"},
]


@pytest.mark.parametrize("doc", DOC_ENGINE_MESSAGES, ids=lambda m: m["type"])
def test_docs_style_engine_messages_decode_into_their_structs(doc):
    msg = decode(msgpack.packb(doc))
    assert type(msg) is ENGINE_MESSAGES[doc["type"]]
    back = msgpack.unpackb(encode(msg))  # every documented field survives, under its wire name
    for key, value in doc.items():
        assert back[key] == value, key


def test_struct_fields_carry_the_documented_values():
    hello_msg, obs = (decode(msgpack.packb(m)) for m in DOC_ENGINE_MESSAGES[:2])
    assert hello_msg.observation == ObsSpec("values", "the arena", (ObsField("x", "m", "x position", 2),))
    assert hello_msg.default_call == DefaultCall("move", {"direction": "N"})
    assert (hello_msg.frame_hz, hello_msg.heartbeat_ms) == (60.0, 250.0)
    assert (obs.seq, obs.values, obs.ret, obs.episode) == (7, {"x": 1.5}, 3.0, 2)
    extra = decode(msgpack.packb({**DOC_ENGINE_MESSAGES[3], "future_field": [1, 2]}))
    assert extra == AckMsg(id=5, frame=15)  # unknown keys are ignored (additions within v1)


# What the bridge sent before its messages were typed (plain maps, every key present): an old
# engine reads these keys, so the structs must encode to exactly these maps.
OLD_BRIDGE_MAPS = [
    (WelcomeMsg(epoch="e1", session="s1", heartbeat_ms=250.0, max_msg_bytes=1 << 20,
                tools=["move"], lockstep=0),
     {"v": 1, "type": "welcome", "server": "tickcall", "epoch": "e1", "session": "s1",
      "heartbeat_ms": 250.0, "max_msg_bytes": 1 << 20, "tools": ["move"], "lockstep": 0}),
    (CallMsg(id=3, name="move", arguments={"direction": "N"}, tick=9, obs_seq=7),
     {"v": 1, "type": "call", "id": 3, "name": "move", "arguments": {"direction": "N"}, "tick": 9,
      "obs_seq": 7, "obs_t_ms": None}),  # obs_t_ms: an addition within v1 (old engines ignore the key)
    (StepMsg(seq=7, calls=[3]), {"v": 1, "type": "step", "seq": 7, "calls": [3]}),
    (PingMsg(epoch="e1", t_ms=12.5), {"v": 1, "type": "ping", "epoch": "e1", "t_ms": 12.5}),
    (PongMsg(epoch="e1", t_ms=12.5), {"v": 1, "type": "pong", "epoch": "e1", "t_ms": 12.5}),
    (ByeMsg(reason="stopping"), {"v": 1, "type": "bye", "reason": "stopping"}),
    (ErrorMsg(code="bad_field", message="obs.text is required", fatal=False, ref_type="obs", ref_id=4),
     {"v": 1, "type": "error", "code": "bad_field", "message": "obs.text is required", "fatal": False,
      "ref_type": "obs", "ref_id": 4}),
    (ProtocolError("malformed", "not a map").to_message(),
     {"v": 1, "type": "error", "code": "malformed", "message": "not a map", "fatal": False,
      "ref_type": None, "ref_id": None}),
]


@pytest.mark.parametrize(("struct", "old"), OLD_BRIDGE_MAPS, ids=lambda x: x.__class__.__name__)
def test_bridge_structs_encode_to_the_maps_an_old_engine_reads(struct, old):
    # an old peer: plain msgpack, string keys only, no extension types
    assert msgpack.unpackb(encode(struct), raw=False, strict_map_key=True) == old
    assert decode_bridge(msgpack.packb(old)) == struct  # and a typed engine reads the old maps
    assert set(BRIDGE_MESSAGES) == {"welcome", "call", "step", "ping", "pong", "error", "bye"}


def test_every_message_type_is_documented():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text(encoding="utf-8")
    section = doc[doc.index("BEGIN engine-bridge section"):]
    for mtype in {*ENGINE_MESSAGES, *BRIDGE_MESSAGES}:
        assert f"`{mtype}`" in section, mtype
    for cls in {*ENGINE_MESSAGES.values(), *BRIDGE_MESSAGES.values()}:
        assert cls.__name__ in section, f"{cls.__name__} not named in docs/protocol.md"


def test_extension_types_and_nested_non_string_keys_are_refused():
    ext = msgpack.packb({"v": 1, "type": "ack", "id": msgpack.ExtType(5, b"x")})
    assert code_of(decode, ext).code == "malformed"
    err = code_of(decode, msgpack.packb({"v": 1, "type": "obs", "seq": 1, "frame": 1, "values": {1: 2}}))
    assert err.code == "bad_field" and "obs.values" in err.message
