"""Tool schemas that are wrong but used to be accepted: each is refused at normalisation with a
ToolSchemaError naming the tool, the parameter and the fault, and the policy answers ``illegal_tools``
(never ``engine_failure``, which is what a schema that crashed the engine's register used to give)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from tickcall.agent import protocol as P
from tickcall.agent.inproc import InProcPolicy
from tickcall.models.stand_ins import NoOpEngine
from tickcall.models.tools import ToolSchemaError, normalize_tools


def _tool(props: dict[Any, Any], **params: Any) -> dict[str, Any]:
    return {"name": "move", "parameters": {"type": "object", "properties": props, **params}}


def _param(**schema: Any) -> dict[str, Any]:
    return _tool({"speed": {"type": "number", **schema}})


# (case id, tool, phrases the message must contain)
BAD = [
    ("enum-not-a-list", _param(enum=5), ["'move'", "'speed'", "enum must be a non-empty list"]),
    ("enum-empty", _param(enum=[]), ["'move'", "'speed'", "enum must be a non-empty list"]),
    ("property-a-number", _tool({"speed": 5}), ["'move'", "'speed'", "schema must be an object"]),
    ("property-a-bool", _tool({"speed": True}), ["'move'", "'speed'", "schema must be an object"]),
    ("minimum-nan", _param(minimum=math.nan), ["'move'", "'speed'", "minimum is nan, not a finite"]),
    ("maximum-inf", _param(maximum=math.inf), ["'move'", "'speed'", "maximum is inf, not a finite"]),
    ("enum-nan", _param(enum=[1.0, math.nan]), ["'speed'", "enum[1] is nan, not a finite"]),
    (
        "minimum-above-maximum",
        _param(minimum=3, maximum=1),
        ["'move'", "'speed'", "minimum 3 is above maximum 1"],
    ),
    (
        "exclusive-bounds-crossed",
        _param(exclusiveMinimum=2, exclusiveMaximum=1),
        ["'speed'", "exclusiveMinimum 2 is above exclusiveMaximum 1"],
    ),
    (
        "min-length-above-max",
        _tool({"name": {"type": "string", "minLength": 5, "maxLength": 2}}),
        ["'name'", "minLength 5 is above maxLength 2"],
    ),
    (
        "nested-enum-empty",
        _tool({"path": {"type": "array", "items": {"enum": []}}}),
        ["'path'", "items", "enum must be a non-empty list"],
    ),
    ("empty-name", _tool({"": {"type": "number"}}), ["'move'", "parameter name '' is empty"]),
    ("blank-name", _tool({"  ": {"type": "number"}}), ["'move'", "is empty"]),
    ("newline-name", _tool({"a\nb": {"type": "number"}}), ["'move'", "single line"]),
    ("type-a-dict", _tool({"speed": {"type": {"x": 1}}}), ["move.speed", "a type must be a string"]),
    (
        "required-not-a-list",
        _tool({"speed": {"type": "number"}}, required=5),
        ["'move'", "invalid JSON schema at parameters.required"],
    ),
    (
        "negative-min-length",
        _tool({"name": {"type": "string", "minLength": -1}}),
        ["'move'", "parameters.properties.name.minLength"],
    ),
    ("bad-pattern", _tool({"name": {"type": "string", "pattern": "("}}), ["'move'", "pattern", "regex"]),
    ("items-a-number", _tool({"path": {"type": "array", "items": 5}}), ["'move'", "'path'"]),
]


@pytest.mark.parametrize("tool,phrases", [pytest.param(t, p, id=i) for i, t, p in BAD])
def test_bad_schema_is_refused_with_a_clear_message(tool, phrases):
    with pytest.raises(ToolSchemaError) as exc:
        normalize_tools([tool])
    for phrase in phrases:
        assert phrase in str(exc.value), (phrase, str(exc.value))


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "number", "minimum": -1.0, "maximum": 1.0},
        {"type": "number", "minimum": 2, "maximum": 2},
        {"type": "string", "enum": ["left", "right"]},
        {"type": "array", "items": [{"type": "number"}, {"type": "string"}]},  # tuple form (draft 7)
        {"type": ["integer", "null"], "default": None},
        {"anyOf": [{"type": "number"}, {"type": "string", "pattern": "^@f[0-9]+$"}]},
        {},
    ],
)
def test_sound_schemas_still_pass(schema):
    assert normalize_tools([_tool({"speed": schema})])[0].param_names == ("speed",)


def test_bfcl_dialect_still_passes():
    tool = {
        "name": "f",
        "parameters": {
            "type": "dict",
            "properties": {"x": {"type": "float", "minimum": 0}, "t": {"type": "tuple"}},
        },
    }
    spec = normalize_tools([tool])[0]
    assert spec.properties["x"]["type"] == "number" and spec.properties["t"]["type"] == "array"


@pytest.mark.parametrize(
    "tool",
    [
        t
        for i, t, _ in BAD
        if i
        in (
            "enum-not-a-list",
            "property-a-number",
            "minimum-nan",
            "minimum-above-maximum",
            "newline-name",
            "type-a-dict",
        )
    ],
)
def test_policy_answers_illegal_tools_not_engine_failure(tool):
    policy = InProcPolicy(NoOpEngine())
    try:
        policy.hello()
        with pytest.raises(P.PolicyError) as exc:
            policy.register([tool])
        assert exc.value.code == "illegal_tools", exc.value
        assert "move" in str(exc.value)
    finally:
        policy.close()


def test_a_tool_holding_bytes_is_refused_and_the_policy_goes_on():
    """msgpack bin values reach the tools as bytes: the refusal's message must still render (it once
    raised TypeError inside the service's engine thread, which then answered nothing more)."""
    policy = InProcPolicy(NoOpEngine())
    try:
        policy.hello()
        with pytest.raises(P.PolicyError) as exc:
            policy.register([{"type": "function", "function": {"description": b"\x00\xff"}}])
        assert exc.value.code == "illegal_tools" and "without a name" in str(exc.value)
        assert policy.register([{"name": "ok", "parameters": {"type": "object", "properties": {}}}])
    finally:
        policy.close()


@pytest.mark.parametrize(
    "bfcl_type,expected",
    [
        ("String", {"type": "string"}),
        ("char", {"type": "string", "minLength": 1, "maxLength": 1}),
        ("byte", {"type": "integer", "minimum": -128, "maximum": 127}),
        ("short", {"type": "integer", "minimum": -32768, "maximum": 32767}),
        ("long", {"type": "integer"}),
        ("double", {"type": "number"}),
        ("Array", {"type": "array"}),
        ("ArrayList", {"type": "array"}),
        ("HashMap", {"type": "object"}),
        ("Hashtable", {"type": "object"}),
        ("Boolean", {"type": "boolean"}),
        ("Bigint", {"type": "integer"}),
        ("any", {}),
        ("Any", {}),
    ],
)
def test_bfcl_java_and_javascript_types(bfcl_type, expected):
    """BFCL's Java/JS type names map to the JSON schema of the values they hold (as its checker reads them)."""
    spec = normalize_tools([_tool({"x": {"type": bfcl_type}})])[0]
    assert spec.properties["x"] == expected
    assert f'"{bfcl_type}"' not in str(spec.rendered).replace("'", '"')


def test_java_bounds_do_not_override_the_schema_and_nest():
    spec = normalize_tools(
        [
            _tool(
                {
                    "b": {"type": "byte", "minimum": 0},
                    "ids": {"type": "ArrayList", "items": {"type": "long"}},
                    "pair": {"type": "tuple", "items": [{"type": "String"}, {"type": "short"}]},
                }
            )
        ]
    )[0]
    assert spec.properties["b"] == {"type": "integer", "minimum": 0, "maximum": 127}
    assert spec.properties["ids"] == {"type": "array", "items": {"type": "integer"}}
    assert spec.properties["pair"]["items"][1] == {"type": "integer", "minimum": -32768, "maximum": 32767}


def test_unknown_and_empty_type_names_still_refused():
    for name in ("Widget", "", "Set"):
        with pytest.raises(ToolSchemaError, match="unsupported parameter type"):
            normalize_tools([_tool({"x": {"type": name}})])
