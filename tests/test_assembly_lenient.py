"""Lenient assembly: SimpleTool's reference-server readings of head texts, then strict validation.

The server's rules (``tickcall.models.lenient``) are checked on their own, against a re-statement of
the server's argument loop (``_server_args``, written from reading ``rt_server.py``), and through
``assemble(..., mode="lenient")``; the properties: lenient never returns a legal call that
``validate_arguments`` refuses, never raises on model output, and accepts what strict accepts.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tickcall.models.assembly import ASSEMBLY_MODES, assemble
from tickcall.models.calls import Call
from tickcall.models.format import NULL
from tickcall.models.lenient import clean_text, is_omitted, server_value
from tickcall.models.tools import ToolSpec, normalize_tools, validate_arguments


def _tools(*tools: dict[str, Any]) -> dict[str, ToolSpec]:
    return {t.name: t for t in normalize_tools(list(tools))}


def _tool(name: str, props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"name": name, "parameters": {"type": "object", "properties": props, "required": list(required)}}


TOOLS = _tools(
    _tool(
        "move",
        {
            "dir": {"type": "string", "enum": ["n", "s"]},
            "speed": {"type": "number", "minimum": 0, "maximum": 1},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        ("dir",),
    ),
    _tool("get_weather", {"city": {"type": "string"}, "days": {"type": "integer"}}, ("city",)),
    _tool(
        "face",
        {
            "heading": {"type": "string", "enum": ["North", "South"]},
            "run": {"type": "boolean"},
            "opts": {"type": "object"},
            "note": {},
        },
    ),
)


def test_modes_constant_and_unknown_mode():
    assert ASSEMBLY_MODES == ("strict", "lenient")
    with pytest.raises(ValueError, match="unknown assembly mode 'loose'"):
        assemble({"function": "move", "arg1": "n"}, TOOLS, mode="loose")  # type: ignore[arg-type]


# ------------------------------------------------------------------ the server's rules alone


@pytest.mark.parametrize(
    "text,clean",
    [
        ("  up ", "up"),
        ("up</arg1>", "up"),
        (" up </arg3> ", "up"),
        ("up<|null|>", "up"),
        ("<|null|></arg2>", NULL),
        ("up</arg1></arg1>", "up</arg1>"),  # one marker only, as the server cuts one
        ("move</function>", "move"),
        ("x<|im_end|>", "x"),
        ("   ", ""),
        (None, ""),
    ],
)
def test_clean_text(text, clean):
    assert clean_text(text) == clean


@pytest.mark.parametrize(
    "clean,value",
    [
        ("42", 42),
        ("007", 7),
        ("-3", -3.0),  # the server's int rule has no sign: a negative integer reads as a float
        ("--3", "--3"),  # the server's float() raises here (its request fails); we keep the text
        (".5", 0.5),
        ("1.", 1.0),
        ("-1.25", -1.25),
        ("1e3", "1e3"),
        ("+1", "+1"),
        ("1.2.3", "1.2.3"),
        ("North", "north"),
        ("True", "true"),
        ('{"A": 1}', '{"a": 1}'),
        ("²", "²"),  # isdigit() accepts it, int() refuses it
        ("٣", 3),  # an Arabic-Indic digit: isdigit() and int() both accept it
    ],
)
def test_server_value(clean, value):
    got = server_value(clean)
    assert got == value and type(got) is type(value)


def test_omitted():
    assert is_omitted("") and is_omitted(NULL) and not is_omitted("null") and not is_omitted("0")


# ------------------------------------------------------------------ through assemble


@pytest.mark.parametrize(
    "heads,call,reason",
    [
        (
            {"function": " move</function>", "arg1": " N ", "arg2": " .5 "},
            Call("move", {"dir": "n", "speed": 0.5}),
            "",
        ),
        ({"function": "move", "arg1": "n", "arg2": "1e-1"}, Call("move", {"dir": "n", "speed": 0.1}), ""),
        (
            {"function": "move", "arg1": "n", "arg3": '["A", "b"]'},
            Call("move", {"dir": "n", "tags": ["A", "b"]}),
            "",
        ),
        ({"function": "move", "arg1": "E"}, None, "not one of"),
        ({"function": "move", "arg1": "n", "arg2": "1.5"}, None, "above the maximum"),
        ({"function": "move", "arg1": "n", "arg2": "fast"}, None, "'fast' is not of type number"),
        (
            {"function": "get_weather", "arg1": "Paris", "arg2": "007"},
            Call("get_weather", {"city": "paris", "days": 7}),
            "",
        ),
        ({"function": "get_weather", "arg1": "42"}, Call("get_weather", {"city": "42"}), ""),
        (
            {"function": "get_weather", "arg1": "Rome", "arg2": "-3"},
            Call("get_weather", {"city": "rome", "days": -3.0}),
            "",
        ),
        ({"function": "get_weather", "arg1": "Rome", "arg2": "2.5"}, None, "not of type integer"),
        (
            {"function": "get_weather", "arg1": "   ", "arg2": "2"},
            None,
            "required argument 'city' is missing",
        ),
        (
            {"function": "get_weather", "arg1": "Oslo", "arg2": NULL, "arg3": "junk"},
            Call("get_weather", {"city": "oslo"}),
            "",
        ),
        (
            {"function": "face", "arg1": "north", "arg2": "True"},
            Call("face", {"heading": "North", "run": True}),
            "",
        ),
        (
            {"function": "face", "arg1": "SOUTH", "arg2": "false"},
            Call("face", {"heading": "South", "run": False}),
            "",
        ),
        ({"function": "face", "arg2": "yes"}, None, "'yes' is not of type boolean"),
        ({"function": "face", "arg3": '{"Mode": "Fast"}'}, Call("face", {"opts": {"Mode": "Fast"}}), ""),
        ({"function": "face", "arg3": '{"a":1,"a":2}'}, None, "not of type object"),
        ({"function": "face", "arg4": " Hello World "}, Call("face", {"note": "hello world"}), ""),
        ({"function": "face", "arg4": "12"}, Call("face", {"note": 12}), ""),
        ({"function": "jump", "arg1": "n"}, None, "unknown function 'jump'"),
        ({"function": "Move", "arg1": "n"}, None, "unknown function 'Move'"),
        ({"function": " <|null|> "}, None, "no function"),
    ],
)
def test_lenient_assembly(heads, call, reason):
    a = assemble(heads, TOOLS, mode="lenient")
    assert a.heads == heads
    if call is None:
        assert not a.legal and reason in a.reason, a.reason
    else:
        assert a.legal and a.reason == "ok", a.reason
        assert a.call == call and all(type(a.call.arguments[k]) is type(v) for k, v in call.arguments.items())


def test_strict_is_the_default_and_unchanged():
    heads = {"function": "get_weather", "arg1": " Paris ", "arg2": "007"}
    assert assemble(heads, TOOLS) == assemble(heads, TOOLS, mode="strict")
    assert not assemble(heads, TOOLS).legal  # 007 is not JSON
    assert assemble({"function": "get_weather", "arg1": " Paris "}, TOOLS).call.arguments == {
        "city": " Paris "
    }
    extra = {"function": "get_weather", "arg1": "Oslo", "arg3": "junk"}
    assert not assemble(extra, TOOLS).legal and assemble(extra, TOOLS, mode="lenient").legal


def test_unfinished_and_futures_in_lenient():
    a = assemble({"function": "move", "arg1": "n"}, TOOLS, unfinished={"arg1"}, mode="lenient")
    assert not a.legal and "did not stop" in a.reason
    heads = {"function": "move", "arg1": "n", "arg2": " @f17 "}
    assert not assemble(heads, TOOLS, mode="lenient").legal  # '@f17' is a string, not a number
    b = assemble(heads, TOOLS, allow_future_refs=True, mode="lenient")
    assert b.legal and b.call == Call("move", {"dir": "n", "speed": "@f17"})


# ------------------------------------------------------------------ against the server's own loop


def _server_args(heads: dict[str, str], tools: list[dict[str, Any]]) -> dict[str, Any]:
    """What rt_server.py puts in ``args`` (restated): union of parameter names, first 6, by slot."""
    names: list[str] = []
    for tool in tools:
        for pname in tool["parameters"]["properties"]:
            if pname not in names:
                names.append(pname)
    args = {}
    for i, pname in enumerate(names[:6]):
        val = clean_text(heads.get(f"arg{i + 1}", ""))
        if not is_omitted(val):
            args[pname] = server_value(val)
    return args


SERVER_TOOL = _tool(
    "drive", {"gear": {"type": "integer"}, "mode": {"type": "string"}, "amount": {"type": "number"}}
)
_SLOT_TEXT = st.text(alphabet="0123456789-. AbZz<>|/null", max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.lists(_SLOT_TEXT, min_size=3, max_size=3))
def test_lenient_gives_the_servers_args_when_they_are_legal(texts):
    """Single tool (where the server's union of names is the tool's own): when the server's arguments
    pass the schema, lenient returns exactly them; when they do not, lenient's call is still legal
    under the schema or illegal with a reason (its later readings are the only difference)."""
    heads = {"function": "drive", **{f"arg{i + 1}": t for i, t in enumerate(texts)}}
    tools = _tools(SERVER_TOOL)
    expected = _server_args(heads, [SERVER_TOOL])
    got = assemble(heads, tools, mode="lenient")
    if validate_arguments(tools["drive"], expected) is None:
        assert got.legal and got.call.arguments == expected
        assert all(type(got.call.arguments[k]) is type(v) for k, v in expected.items())
    if got.legal:
        assert validate_arguments(tools["drive"], got.call.arguments) is None


_ANY_TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["n", "s", "N", "0.5", "-1", "007", "true", "True", "[]", '["a"]', "{}", "null", NULL, "@f3"]
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(sorted(TOOLS)),
    st.lists(_ANY_TEXT, min_size=4, max_size=4),
    st.booleans(),
)
def test_lenient_legal_means_valid_and_strict_legal_means_lenient_legal(name, texts, futures):
    heads = {"function": name, **{f"arg{i + 1}": t for i, t in enumerate(texts)}}
    lenient = assemble(heads, TOOLS, allow_future_refs=futures, mode="lenient")
    strict = assemble(heads, TOOLS, allow_future_refs=futures)
    if lenient.legal and not futures:
        assert validate_arguments(TOOLS[name], lenient.call.arguments) is None
    plain = all(t == t.strip() and t.strip() and clean_text(t) == t for t in texts if t not in ("", NULL))
    if strict.legal and plain:
        assert lenient.legal, (heads, lenient.reason)
