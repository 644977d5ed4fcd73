"""The SimpleTool format: golden prompt strings (docs/simpletool-format.md), tools, assembly, BFCL."""

from __future__ import annotations

import json
from typing import Literal

import bfcl_round_trip
import pytest
from tickcall.models.assembly import assemble
from tickcall.models.calls import Call, render_call
from tickcall.models.format import (
    HEAD_NAMES,
    NULL,
    SPECIAL_TOKENS,
    V1_SYSTEM_BLOCK,
    Turn,
    encode_call_heads,
    get_template,
    head_names,
    head_target,
    heads_for,
    max_heads_of,
    special_tokens,
)
from tickcall.models.tools import ToolSchemaError, normalize_tool, normalize_tools

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
WEATHER_LINE = (
    '{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": '
    '{"type": "integer"}}, "required": ["city"]}}}'
)


def test_seventeen_tokens():
    assert len(SPECIAL_TOKENS) == 17 and len(set(SPECIAL_TOKENS)) == 17
    assert HEAD_NAMES == ("function", "arg1", "arg2", "arg3", "arg4", "arg5", "arg6")


def test_v2_golden():
    tools = normalize_tools([WEATHER])
    t = get_template("v2")
    prompt = t.prefix(tools) + t.suffix(Turn("Weather in Paris?", ['get_weather(city="Rome")']))
    expected = (
        "<|im_start|>system\nYou are a real-time function calling assistant. Convert user commands into "
        "function calls using the available tools.\n\n## Available Tools:\n\n"
        + WEATHER_LINE
        + '\n<|im_end|>\n<|im_start|>user\nhistory: [get_weather(city="Rome")]\n\nWeather in Paris?'
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompt == expected
    # environment lines are prepended to the query as a JSON list
    assert t.suffix(Turn("go", environment=["hp=3", "ammo=2"])) == (
        '<|im_start|>user\nhistory: []\n\nenvironment: ["hp=3", "ammo=2"]\ngo<|im_end|>\n<|im_start|>assistant\n'
    )
    assert t.prefix(tools, system="Be quick.").startswith(
        "<|im_start|>system\nBe quick.\n\n## Available Tools:"
    )


def test_v1_golden():
    block = (
        "You are a multi-head parallel function calling model. \n## Output Heads\n\n"
        "**Head 0 - <content>**: Natural language response\n- Format: <content>response text</content>\n"
        "- Answer what you want to say while you are calling a function\n\n"
        "**Head 1 - <function>**: Function names to call\n- Format: <function>name</function>\n"
        "- Name: must match tool defined name\n\n"
        "**Head 2-7 - <arg1>、<arg2>、<arg3>、<arg4>、<arg5>、<arg6>**: Function arguments by position\n"
        "- Format: <argN>value</argN> \n"
        "- Strictly fill in according to the parameter order of the tool you intend to call\n"
        "- Note the special restrictions of parameter definitions for corresponding positions\n"
        "- If the corresponding tool definition has required parameters, these must be filled in\n"
        "- Infer the user's actual needs.\n- If Unnecessary: <argN><|null|></argN>\n\n"
        "**Environment - The information you have.\n**History - The tools you have called."
    )
    assert block == V1_SYSTEM_BLOCK
    tools = normalize_tools([WEATHER])
    t = get_template("v1")
    prompt = t.prefix(tools) + t.suffix(Turn("Weather?", [], environment=["city=Paris"]))
    assert prompt == (
        "<|im_start|>system\n" + block + "\n## Available Tools:\n\n" + WEATHER_LINE + "<|im_end|>\n"
        "<|im_start|>user\nenvironment: [city=Paris]\nhistory: []\n\nWeather?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_prefix_is_static_and_turn_goes_only_in_suffix():
    tools = normalize_tools([WEATHER])
    for name in ("v1", "v2", "compact"):
        t = get_template(name)
        assert t.prefix(tools) == t.prefix(tools)
        assert "Paris" not in t.prefix(tools) and "Paris" in t.suffix(Turn("Paris"))


def test_history_rendering():
    assert (
        render_call(Call("move", {"x": 3, "name": 'a"b', "ok": True, "v": [1, 2]}))
        == 'move(x=3, name="a\\"b", ok=true, v=[1, 2])'
    )
    assert render_call(Call("move", {"b": 1, "a": 2}), ("a", "b")) == "move(a=2, b=1)"


# ------------------------------------------------------------------ tools


def test_bfcl_dialect_converted_and_order_kept():
    spec = normalize_tool(
        {
            "name": "f",
            "description": "d",
            "parameters": {
                "type": "dict",
                "properties": {
                    "z": {"type": "float"},
                    "a": {"type": "tuple", "items": {"type": "integer"}},
                    "m": {"type": "any"},
                    "d": {"type": "dict", "properties": {"k": {"type": "float"}}},
                },
                "required": ["z"],
            },
        }
    )
    assert spec.param_names == ("z", "a", "m", "d")
    assert spec.parameters["type"] == "object"
    assert spec.properties["z"]["type"] == "number" and spec.properties["a"]["type"] == "array"
    assert "type" not in spec.properties["m"] and spec.properties["d"]["properties"]["k"]["type"] == "number"
    assert '"dict"' not in json.dumps(spec.rendered)


def test_openai_rendering_preserved_byte_for_byte():
    spec = normalize_tool(WEATHER)
    assert json.dumps(spec.rendered, ensure_ascii=False) == WEATHER_LINE
    bare = normalize_tool(WEATHER["function"])
    assert json.dumps(bare.rendered, ensure_ascii=False) == WEATHER_LINE


def test_callable_tool():
    def dash(direction: Literal["north", "south"], distance: float = 2.0, boost: bool | None = None) -> None:
        """Dash quickly.

        Args:
            direction: where to dash
            distance: metres
        """

    spec = normalize_tool(dash)
    assert spec.name == "dash" and spec.description == "Dash quickly."
    assert spec.param_names == ("direction", "distance", "boost")
    assert spec.required == ("direction",)
    assert spec.properties["direction"] == {
        "type": "string",
        "enum": ["north", "south"],
        "description": "where to dash",
    }
    assert spec.properties["distance"]["type"] == "number" and spec.properties["distance"]["default"] == 2.0
    assert spec.properties["boost"]["type"] == ["boolean", "null"]


def test_too_many_parameters_refused_clearly():
    props = {f"p{i}": {"type": "integer"} for i in range(7)}
    with pytest.raises(ToolSchemaError, match="7 parameters.*at most 6"):
        normalize_tools([{"name": "big", "parameters": {"type": "object", "properties": props}}])


def test_bad_tools_refused():
    with pytest.raises(ToolSchemaError, match="defined twice"):
        normalize_tools([WEATHER, WEATHER])
    with pytest.raises(ToolSchemaError, match="unsupported parameter type"):
        normalize_tool(
            {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "Widget"}}}}
        )
    with pytest.raises(ToolSchemaError, match="no tools"):
        normalize_tools([])
    with pytest.raises(ToolSchemaError, match="not in properties"):
        normalize_tool({"name": "f", "parameters": {"type": "object", "properties": {}, "required": ["x"]}})


# ------------------------------------------------------------------ assembly

TOOLS = {
    t.name: t
    for t in normalize_tools(
        [
            WEATHER,
            {
                "name": "move",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "dir": {"type": "string", "enum": ["n", "s"]},
                        "speed": {"type": "number", "minimum": 0, "maximum": 1},
                        "tags": {"type": "array", "items": {"type": "string"}},
                    },
                    "required": ["dir"],
                },
            },
        ]
    )
}


@pytest.mark.parametrize(
    "heads,legal,reason",
    [
        ({"function": "move", "arg1": "n", "arg2": "0.5", "arg3": NULL}, True, "ok"),
        ({"function": " move ", "arg1": "n", "arg2": NULL, "arg3": ""}, True, "ok"),
        ({"function": "jump", "arg1": NULL}, False, "unknown function 'jump'"),
        ({"function": NULL}, False, "no function"),
        ({"function": "move", "arg1": "e"}, False, "not one of"),
        ({"function": "move", "arg1": "n", "arg2": "1.5"}, False, "above the maximum"),
        ({"function": "move", "arg1": "n", "arg2": "NaN"}, False, "not valid JSON"),
        ({"function": "move", "arg1": "n", "arg2": "fast"}, False, "not valid JSON"),
        ({"function": "move", "arg1": NULL, "arg2": "0.5"}, False, "required argument 'dir' is missing"),
        ({"function": "get_weather", "arg1": "Paris", "arg2": "2", "arg3": "7"}, False, "takes 2 parameter"),
        ({"function": "get_weather", "arg1": "Paris", "arg2": "null"}, False, "not of type integer"),
        ({"function": "move", "arg1": "n", "arg3": '["a", 1]'}, False, "not of type string"),
    ],
)
def test_assembly_rules(heads, legal, reason):
    a = assemble(heads, TOOLS)
    assert a.legal is legal, a.reason
    assert reason in a.reason
    assert a.heads == heads


def test_assembly_duplicate_keys_rejected():
    tools = {
        t.name: t
        for t in normalize_tools(
            [{"name": "f", "parameters": {"type": "object", "properties": {"o": {"type": "object"}}}}]
        )
    }
    assert not assemble({"function": "f", "arg1": '{"a":1,"a":2}'}, tools).legal
    a = assemble({"function": "f", "arg1": '{"a":1}'}, tools)
    assert a.legal and a.call == Call("f", {"o": {"a": 1}})


def test_unfinished_head_is_illegal():
    a = assemble({"function": "move", "arg1": "nnnn"}, TOOLS, unfinished={"arg1"})
    assert not a.legal and "did not stop" in a.reason


def test_encode_and_training_target():
    tool = TOOLS["move"]
    heads = heads_for(list(TOOLS.values()))
    texts = encode_call_heads(Call("move", {"dir": "n", "tags": ["a"]}), tool, heads)
    assert texts == {"function": "move", "arg1": "n", "arg2": NULL, "arg3": '["a"]'}
    assert head_target("arg2", NULL) == "<|null|></arg2><|im_end|>"
    assert head_target("function", "move") == "move</function><|im_end|>"


# ------------------------------------------------------------------ BFCL round trip


# Answers BFCL gives that its own schema refuses (ids and reasons: ``pytest -s tests/test_bfcl_table.py``).
# They are counted, not round-tripped; a change in these counts means the data or our converter changed.
#   live_simple 1: ``record`` gives no value for required arrays.
#   live_multiple 14: enum misses ('openai', 'Reggaeton', '5 minutes', ...), booleans/ints/null for
#     string-typed parameters, a parameter the tool does not have.
#   parallel_multiple 4: parameters the tool does not have, a variable name for an array, strings
#     for integer items.
#   simple_java 10, simple_javascript 8: variable names or constant expressions ("textBuffer",
#     "EventRequest.SUSPEND_ALL") for array/object/integer parameters (BFCL's "string representation").
ANSWER_ILLEGAL = {
    "simple_python": 0,
    "multiple": 0,
    "live_simple": 1,
    "live_multiple": 14,
    "parallel_multiple": 4,
    "simple_java": 10,
    "simple_javascript": 8,
}


@pytest.mark.parametrize("category", bfcl_round_trip.CATEGORIES)
def test_bfcl_round_trip(category):
    """Every BFCL answer that is legal under its schema comes back from its head texts equal and legal."""
    if bfcl_round_trip.data_dir() is None:
        pytest.skip("bfcl-eval data not installed (scripts/setup.sh --dev)")
    tally = bfcl_round_trip.round_trip(category)
    assert not tally.failures, tally.failures[:5]
    illegal = [f"{i}: {why}" for i, why in tally.answer_illegal]
    assert len(illegal) == ANSWER_ILLEGAL[category], illegal
    assert tally.round_tripped + len(illegal) == tally.calls
    assert tally.round_tripped >= 40 and tally.round_tripped > 0.8 * tally.calls


def test_future_references_only_when_allowed():
    heads = {"function": "move", "arg1": "n", "arg2": "@f17"}
    assert not assemble(heads, TOOLS).legal  # strict: not JSON for a number parameter
    a = assemble(heads, TOOLS, allow_future_refs=True)
    assert a.legal and a.call == Call("move", {"dir": "n", "speed": "@f17"})
    b = assemble({"function": "move", "arg1": "@f3"}, TOOLS, allow_future_refs=True)
    assert b.legal and b.call.arguments == {"dir": "@f3"}  # a required argument given as a future


# ------------------------------------------------------------------ arity beyond 6


def test_head_names_and_special_tokens_of_n_heads():
    assert head_names(6) == HEAD_NAMES and head_names() == HEAD_NAMES
    assert special_tokens(6) == SPECIAL_TOKENS and special_tokens() == SPECIAL_TOKENS
    ten = special_tokens(10)
    assert len(ten) == 25 == len(set(ten)) and ten[:-1][: len(SPECIAL_TOKENS) - 1] == SPECIAL_TOKENS[:-1]
    assert ten[-3:] == ("<arg10>", "</arg10>", NULL)
    assert head_names(1) == ("function", "arg1") and len(head_names(20)) == 21
    for bad in (0, -1, 65, 6.0, True, "6", None):
        with pytest.raises(ValueError, match="max_heads must be an integer"):
            head_names(bad)
        with pytest.raises(ValueError, match="max_heads must be an integer"):
            special_tokens(bad)


def test_max_heads_of_tickcall_json():
    assert max_heads_of(None) == 6 and max_heads_of({}) == 6 and max_heads_of({"template": "v2"}) == 6
    assert max_heads_of({"max_heads": None}) == 6 and max_heads_of({"max_heads": 12}) == 12
    with pytest.raises(ValueError, match="got '12'"):
        max_heads_of({"max_heads": "12"})


def test_tools_over_six_parameters_with_more_heads():
    props = {f"p{i}": {"type": "integer"} for i in range(9)}
    big = {"name": "big", "parameters": {"type": "object", "properties": props, "required": ["p8"]}}
    with pytest.raises(ToolSchemaError, match="9 parameters.*at most 6.*max_heads"):
        normalize_tools([big])
    specs = normalize_tools([big, WEATHER], max_arity=10)
    with pytest.raises(ValueError, match="largest arity 9 exceeds the model's 6 argument heads"):
        heads_for(specs)
    heads = heads_for(specs, max_heads=10)
    assert heads == head_names(10)[:10] and heads[-1] == "arg9"
    tools = {s.name: s for s in specs}
    call = Call("big", {"p0": 1, "p7": -4, "p8": 9})
    texts = encode_call_heads(call, tools["big"], heads)
    assert texts["arg8"] == "-4" and texts["arg9"] == "9" and texts["arg2"] == NULL
    for mode in ("strict", "lenient"):
        back = assemble(texts, tools, mode=mode)
        assert back.legal and back.call == call, back.reason
    weather = encode_call_heads(Call("get_weather", {"city": "Oslo"}), tools["get_weather"], heads)
    assert assemble(weather, tools).call == Call("get_weather", {"city": "Oslo"})
