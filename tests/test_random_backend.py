"""The stand-in backends answer legal calls: the schema sampler (models.sampling), the ``random``
backend (models.random_engine) and the no-op backend (models.stand_ins), on generated schemas and on
the tool sets the project derives for real gymnasium envs.

Legality is judged by the project's own rules (``validate_value``/``validate_arguments``, and the strict
assembly every decision goes through) and, for values, by jsonschema too (multipleOf, uniqueItems).
"""

from __future__ import annotations

import json
import random

import gymnasium as gym
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tickcall.agent.engines import build_engine
from tickcall.envs.binding import make_binding
from tickcall.models.calls import Call
from tickcall.models.format import Turn
from tickcall.models.loading import BACKENDS, load_engine
from tickcall.models.random_engine import RandomEngine
from tickcall.models.sampling import (
    SchemaSamplingError,
    default_call,
    minimal_value,
    sample_call,
    sample_valid,
)
from tickcall.models.stand_ins import NoOpEngine
from tickcall.models.tools import ToolSchemaError, normalize_tool, validate_arguments, validate_value

# --------------------------------------------------------------------------- generated schemas

_PATTERNS = [
    r"^[a-z]{2,5}$",
    r"\d{3}-\d{2}",
    r"^(red|green|blue)$",
    r"^[A-Z][a-z]*_\d+$",
    r"x+y?z*",
    r"^\w{1,8}@\w{1,8}\.com$",
]
_finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def integer_schemas(draw):
    schema: dict = {"type": "integer"}
    lo = draw(st.integers(-1000, 1000))
    width = draw(st.integers(0, 500))
    step = draw(st.sampled_from([None, 1, 2, 3, 5, 10]))
    if step:
        schema["multipleOf"] = step
        width = max(width, step)  # the range holds a multiple
    if draw(st.booleans()):
        schema["exclusiveMinimum" if draw(st.booleans()) and width > 1 else "minimum"] = lo
    if draw(st.booleans()):
        key = "exclusiveMaximum" if draw(st.booleans()) and width > 1 + (step or 0) else "maximum"
        schema[key] = lo + width + (step or 0) * (key == "exclusiveMaximum")
    return schema


@st.composite
def number_schemas(draw):
    schema: dict = {"type": "number"}
    lo = draw(_finite)
    width = draw(st.floats(min_value=1e-3, max_value=1e4))
    if draw(st.booleans()):
        schema["exclusiveMinimum" if draw(st.booleans()) else "minimum"] = lo
    if draw(st.booleans()):
        schema["exclusiveMaximum" if draw(st.booleans()) else "maximum"] = lo + width
    if draw(st.booleans()):
        schema["multipleOf"] = draw(st.sampled_from([0.5, 0.25, 0.1, 2, 0.01]))
        if schema["multipleOf"] > width / 4:
            schema.pop("exclusiveMaximum", None), schema.pop("maximum", None)
    return schema


@st.composite
def string_schemas(draw):
    if draw(st.booleans()):
        return {"type": "string", "pattern": draw(st.sampled_from(_PATTERNS))}
    schema: dict = {"type": "string"}
    lo = draw(st.integers(0, 20))
    if draw(st.booleans()):
        schema["minLength"] = lo
    if draw(st.booleans()):
        schema["maxLength"] = lo + draw(st.integers(0, 10))
    return schema


scalar_schemas = st.one_of(
    integer_schemas(),
    number_schemas(),
    string_schemas(),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.just({}),
    st.lists(
        st.one_of(st.integers(-5, 5), st.text(max_size=6), st.booleans()), min_size=1, max_size=5, unique=True
    ).map(lambda xs: {"enum": xs}),
    st.one_of(st.integers(), st.text(max_size=8)).map(lambda v: {"const": v}),
    st.lists(
        st.sampled_from(["integer", "string", "boolean", "null", "number"]),
        min_size=1,
        max_size=3,
        unique=True,
    ).map(lambda ts: {"type": ts}),
)


def _containers(children):
    arrays = st.builds(
        lambda items, lo, extra: {"type": "array", "items": items, "minItems": lo, "maxItems": lo + extra},
        children,
        st.integers(0, 3),
        st.integers(0, 3),
    )
    unique = st.builds(
        lambda lo: {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": 999},
            "uniqueItems": True,
            "minItems": lo,
        },
        st.integers(0, 5),
    )
    tuples = st.builds(
        lambda items, more: {"type": "array", "items": items, "additionalItems": more},
        st.lists(children, min_size=1, max_size=3),
        st.booleans(),
    )
    objects = st.builds(
        lambda props, req_mask, closed: {
            "type": "object",
            "properties": props,
            "required": [k for k, r in zip(props, req_mask, strict=False) if r],
            **({"additionalProperties": False} if closed else {}),
        },
        st.dictionaries(st.text("abcdefgh", min_size=1, max_size=4), children, max_size=4),
        st.lists(st.booleans(), max_size=4),
        st.booleans(),
    )
    any_of = st.lists(children, min_size=1, max_size=3).map(lambda bs: {"anyOf": bs})
    return st.one_of(arrays, unique, tuples, objects, any_of)


schemas = st.recursive(scalar_schemas, _containers, max_leaves=8)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_everywhere(value, schema) -> bool:
    """The project's validator and jsonschema's (Draft 7) both accept ``value``."""
    return validate_value(value, schema) is None and jsonschema.Draft7Validator(schema).is_valid(value)


@FAST
@given(schema=schemas, seed=st.integers(0, 2**32))
def test_every_sampled_value_is_legal(schema, seed):
    rng = random.Random(seed)
    for _ in range(3):
        value = sample_valid(schema, rng)
        assert _valid_everywhere(value, schema), (schema, value)
        json.dumps(value, allow_nan=False)  # a head can write it


@FAST
@given(schema=schemas)
def test_minimal_value_is_legal_and_deterministic(schema):
    value = minimal_value(schema)
    assert _valid_everywhere(value, schema), (schema, value)
    assert minimal_value(schema) == value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    params=st.dictionaries(st.text("abcdefghij", min_size=1, max_size=6), schemas, min_size=0, max_size=6),
    required=st.lists(st.booleans(), max_size=6),
    seed=st.integers(0, 2**32),
)
def test_random_engine_answers_legal_calls_on_generated_tools(params, required, seed):
    req = [p for p, r in zip(params, required, strict=False) if r]
    tool = {
        "name": "act",
        "description": "",
        "parameters": {"type": "object", "properties": params, "required": req},
    }
    other = {
        "name": "other",
        "description": "",
        "parameters": {
            "type": "object",
            "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 3}},
            "required": ["n"],
        },
    }
    spec = normalize_tool(tool)
    engine = RandomEngine(seed=seed % 1000)
    try:
        handle = engine.register([tool, other]).handle
    except ToolSchemaError:  # only a tool with no legal call through the heads may be refused
        assert any(
            s.get("type") == "string" and s.get("maxLength") == 0 for p, s in params.items() if p in req
        )
        return
    for _ in range(4):
        d = engine.decide(handle, Turn(query="obs"))
        assert d.legal and d.reason == "ok", d.reason
        if d.call.name == "act":
            assert validate_arguments(spec, d.call.arguments) is None
    noop = NoOpEngine()
    d = noop.decide(noop.register([tool, other]).handle, Turn(query="obs"))
    assert d.legal, d.reason


# --------------------------------------------------------------------------- keyword coverage


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "exclusiveMinimum": 3, "exclusiveMaximum": 5},  # only 4
        {"type": "integer", "minimum": 7, "maximum": 7},
        {"type": "integer", "minimum": -20, "maximum": -10, "multipleOf": 7},  # only -14
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1e-9},
        {"type": "number", "minimum": 0.3, "maximum": 0.7, "multipleOf": 0.1},
        {"type": "number", "minimum": -1.7e308, "maximum": 1.7e308},  # the width overflows a float
        {"type": "string", "minLength": 3, "maxLength": 3},
        {"type": "string", "pattern": r"^[0-9a-f]{8}-[0-9a-f]{4}$"},
        {"type": "string", "pattern": r"^\w+@\w+\.(com|org)$", "maxLength": 10},  # open repeats, tight length
        {"type": "string", "pattern": r"^a+$", "minLength": 30},
        {
            "type": "array",
            "items": [{"type": "integer"}, {"type": "string", "enum": ["a", "b"]}],
            "additionalItems": False,
            "minItems": 2,
        },
        {"type": "array", "items": {"type": "boolean"}, "uniqueItems": True, "minItems": 2, "maxItems": 2},
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}},
            "required": ["a", "b"],
            "additionalProperties": {"type": "string"},
        },
        {"type": "object", "minProperties": 3, "additionalProperties": {"type": "null"}},
        {"allOf": [{"type": "integer", "minimum": 0}, {"maximum": 3}]},
        {"oneOf": [{"type": "string", "maxLength": 2}, {"type": "integer", "minimum": 100}]},
        {"type": ["integer", "null"], "minimum": 5},
        {"minimum": 2, "maximum": 3},  # no type: the keywords say number
    ],
)
def test_schema_keywords_are_honoured(schema):
    rng = random.Random(7)
    for _ in range(20):
        assert _valid_everywhere(sample_valid(schema, rng), schema)
    assert _valid_everywhere(minimal_value(schema), schema)


def test_minimal_values_are_the_documented_ones():
    assert minimal_value({"type": "string", "enum": ["b", "a"]}) == "b"
    assert minimal_value({"type": "integer", "minimum": 3, "maximum": 9, "multipleOf": 4}) == 4
    assert minimal_value({"type": "number", "minimum": -2.0, "maximum": 2.0}) == 0.0
    assert minimal_value({"type": "number", "exclusiveMinimum": 1.0}) == 2.0
    assert minimal_value({"type": "boolean"}) is False
    assert minimal_value({"type": "string", "minLength": 0}) == "a"  # an empty head would read as omitted
    assert minimal_value({"type": "array", "items": {"type": "integer"}, "minItems": 2}) == [0, 0]
    assert minimal_value({}) is None
    tool = normalize_tool(
        {
            "name": "go",
            "parameters": {
                "type": "object",
                "properties": {
                    "speed": {"type": "number", "minimum": 1, "maximum": 5, "default": 3},
                    "mode": {"type": "string", "enum": ["slow", "fast"]},
                    "note": {"type": "string"},
                },
                "required": ["speed", "mode"],
            },
        }
    )
    assert default_call(tool) == Call("go", {"speed": 3, "mode": "slow"})


def test_unsampleable_schemas_are_refused_at_registration():
    no_float = {
        "name": "f",
        "parameters": {
            "type": "object",
            "properties": {"x": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 5e-324}},
            "required": ["x"],
        },
    }
    with pytest.raises(SchemaSamplingError, match="parameter 'x'"):
        sample_call(normalize_tool(no_float), random.Random(0))
    with pytest.raises(ToolSchemaError, match="tool 'f' cannot be called legally"):
        RandomEngine().register([no_float])
    # a required string that can only be "": legal as a value, but an empty head reads as "omitted"
    empty = {
        "name": "say",
        "parameters": {
            "type": "object",
            "properties": {"text": {"type": "string", "maxLength": 0}},
            "required": ["text"],
        },
    }
    with pytest.raises(ToolSchemaError, match="tool 'say'"):
        RandomEngine().register([empty])
    # the no-op engine answers an explicit no-call there, never an illegal call
    noop = NoOpEngine()
    d = noop.decide(noop.register([empty]).handle, Turn(query="x"))
    assert d.call is None and not d.legal and "no function" in d.reason


def test_random_engine_is_seeded_and_covers_every_tool():
    tools = make_binding("tickcall/Arena-v0").tools

    def calls(seed: int) -> list[Call]:
        e = RandomEngine(seed=seed)
        h = e.register(tools).handle
        return [e.decide(h, Turn(query="x")).call for _ in range(60)]

    first = calls(3)
    assert first == calls(3) and first != calls(4)
    assert {c.name for c in first} == {"wait", "move", "aim", "fire", "dash"}


def test_backend_is_registered_everywhere():
    from tickcall.control_loop.config import BACKENDS as RUN_BACKENDS
    from tickcall.control_loop.config import load_run_config

    assert "random" in BACKENDS and "random" in RUN_BACKENDS
    assert isinstance(load_engine({"backend": "random", "seed": 5}), RandomEngine)
    engine = build_engine({"backend": "random", "seed": 2})
    assert isinstance(engine, RandomEngine) and engine.seed == 2 and engine.info()["backend"] == "random"
    with pytest.raises(ValueError, match="random engine takes only"):
        build_engine({"backend": "random", "device": "cpu"})
    spec = load_run_config(None, {"backend": "random", "seed": 9}).engine_spec()
    assert spec == {"backend": "random", "seed": 9}


# --------------------------------------------------------------------------- real gymnasium envs

ENVS = [
    "Pendulum-v1",
    "MountainCar-v0",
    "MountainCarContinuous-v0",
    "Acrobot-v1",
    "CartPole-v1",
    "FrozenLake-v1",
    "Blackjack-v1",
    "CliffWalking-v1",
    "LunarLander-v3",
    "BipedalWalker-v3",
    "CarRacing-v3",
    "tickcall/Arena-v0",
]


@pytest.mark.parametrize("env_id", ENVS)
@pytest.mark.parametrize("backend", ["random", "noop"])
def test_stand_ins_are_legal_on_gymnasium_tool_sets(env_id, backend):
    try:
        binding = make_binding(env_id)
    except gym.error.DependencyNotInstalled as exc:  # box2d envs without the extra
        pytest.skip(str(exc))
    engine = load_engine({"backend": backend, "seed": 1})
    handle = engine.register(binding.tools).handle
    for _ in range(25):  # the stand-ins ignore the observation (CarRacing's pixels have no text form)
        d = engine.decide(handle, Turn(query="observation"))
        assert d.legal and d.call is not None, d.reason
        result = binding.call_to_action(d.call)
        assert result.status == "ok", result.reason  # the env takes it as it is: not clipped, not rejected
    binding.env.close()


def test_noop_answers_the_declared_default_call():
    def answer(env_id: str) -> Call:
        e = NoOpEngine()
        return e.decide(e.register(make_binding(env_id).tools).handle, Turn(query="x")).call

    assert answer("tickcall/Arena-v0") == Call("wait", {})  # a tool without required parameters
    assert answer("Pendulum-v1") == Call("torque", {"value": 0.0})  # 0 inside [-2, 2]
    assert answer("MountainCar-v0") == Call("push", {"direction": "left"})  # enum[0]
    with_default = {
        "name": "turn",
        "parameters": {
            "type": "object",
            "properties": {"deg": {"type": "integer", "minimum": -90, "maximum": 90, "default": 15}},
            "required": ["deg"],
        },
    }
    idle = {"name": "idle", "parameters": {"type": "object", "properties": {"why": {"type": "string"}}}}
    e = NoOpEngine()
    assert e.decide(e.register([with_default]).handle, Turn(query="x")).call == Call("turn", {"deg": 15})
    h = e.register([with_default, idle]).handle
    assert e.decide(h, Turn(query="x")).call == Call("idle", {})
