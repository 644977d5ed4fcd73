"""Engine bridge protocol (mode 1) as data: decoding, field checks, error codes, value rendering.

Pure functions, no sockets: envs/engine_bridge_protocol.py. The socket-level behaviour is in
test_bridge_server.py (a raw protocol peer) and test_bridge_engine.py (the C++ reference engine).
"""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickcall.envs.engine_bridge_protocol import (
    ERROR_CODES,
    ObsField,
    ObsSpec,
    ProtocolError,
    decode,
    encode,
    parse_ack,
    parse_episode,
    parse_hello,
    parse_obs,
    parse_result,
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


def test_round_trip_and_version_rules():
    msg = decode(encode(hello()))
    assert msg["engine"] == "test"
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
    h = parse_hello(hello(observation={"format": "values", "fields": [{"name": "x", "unit": "m"}]},
                          lockstep=3, heartbeat_ms=100))
    assert h.lockstep == 3 and h.heartbeat_ms == 100.0
    assert h.observation.fields == (ObsField("x", "m", "", 3),)
    for bad, where in [({"engine": ""}, "engine"), ({"session": 5}, "session"),
                       ({"observation": {"format": "pixels"}}, "format"),
                       ({"observation": {"format": "values"}}, "fields"),
                       ({"lockstep": -1}, "lockstep"), ({"heartbeat_ms": 1}, "heartbeat_ms"),
                       ({"frame_hz": float("nan")}, "frame_hz")]:
        err = code_of(parse_hello, {**hello(), **bad})
        assert err.code == "bad_field" and where in err.message, (bad, err)
    assert code_of(parse_hello, hello(tools=[])).code == "bad_tools"
    missing = hello()
    del missing["tools"]
    assert "hello.tools is required" in code_of(parse_hello, missing).message


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
    assert parse_ack({"v": 1, "type": "ack", "id": 3, "frame": 9}).frame == 9
    r = parse_result({"v": 1, "type": "result", "id": 3, "ok": False,
                      "error": {"code": "cooldown", "message": "wait"}})
    assert (r.ok, r.error_code, r.error_message) == (False, "cooldown", "wait")
    assert code_of(parse_result, {"v": 1, "type": "result", "id": 3, "ok": False}).code == "bad_field"
    e = parse_episode({"v": 1, "type": "episode", "index": 0, "return": 2, "length": 300})
    assert (e.ret, e.length) == (2.0, 300)


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
    parse = {"hello": parse_hello, "obs": lambda m: parse_obs(m, ObsSpec(format="text")),
             "ack": parse_ack, "result": parse_result, "episode": parse_episode}[mtype]
    try:
        parse(msg)
    except ProtocolError as err:
        assert err.code in ERROR_CODES and err.message
