"""Space adapter: action -> call -> (text heads) -> call -> action round trips for every space type."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gymnasium import spaces as S
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tickcall.envs.spaces import ActionError, SpaceAdapter, UnsupportedSpaceError, actions_equal
from tickcall.models.assembly import assemble
from tickcall.models.calls import Call
from tickcall.models.format import encode_call_heads, heads_for
from tickcall.models.tools import validate_arguments

# ---------------------------------------------------------------------------- space strategies

bounds = st.floats(min_value=-100, max_value=100, allow_nan=False, width=32)


@st.composite
def discrete(draw):
    return S.Discrete(draw(st.integers(1, 12)), start=draw(st.integers(-5, 5)))


@st.composite
def box(draw):
    shape = draw(st.sampled_from([(), (1,), (2,), (3,), (6,), (7,), (2, 3)]))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int64]))
    lo = draw(bounds)
    hi = lo + draw(st.floats(min_value=0.5, max_value=50, width=32))
    if dtype is np.int64:
        return S.Box(int(np.floor(lo)), int(np.ceil(hi)), shape=shape, dtype=dtype)
    kind = draw(st.sampled_from(["finite", "infinite", "per-element"]))
    if kind == "infinite":
        return S.Box(-np.inf, np.inf, shape=shape, dtype=dtype)
    if kind == "per-element" and shape:
        n = int(np.prod(shape))
        lows = np.array(draw(st.lists(bounds, min_size=n, max_size=n)), dtype=dtype).reshape(shape)
        return S.Box(lows, lows + 1.0, shape=shape, dtype=dtype)
    return S.Box(lo, hi, shape=shape, dtype=dtype)


@st.composite
def multidiscrete(draw):
    n = draw(st.integers(1, 8))
    nvec = draw(st.lists(st.integers(1, 6), min_size=n, max_size=n))
    start = draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n))
    return S.MultiDiscrete(nvec, start=start)


@st.composite
def multibinary(draw):
    return S.MultiBinary(draw(st.sampled_from([1, 3, 6, 9, [2, 3]])))


leaf = st.one_of(discrete(), box(), multidiscrete(), multibinary())


@st.composite
def dict_space(draw, inner=leaf):
    n = draw(st.integers(1, 8))
    return S.Dict({f"k{i}": draw(inner) for i in range(n)})


@st.composite
def tuple_space(draw, inner=leaf):
    return S.Tuple([draw(inner) for _ in range(draw(st.integers(1, 8)))])


nested = st.one_of(dict_space(st.one_of(leaf, dict_space(), tuple_space())),
                   tuple_space(st.one_of(leaf, dict_space(), tuple_space())))


def _round_trip(space, seed: int) -> None:
    space.seed(seed)
    adapter = SpaceAdapter(space)
    action = space.sample()
    call = adapter.to_call(action)
    # the call is legal for its own tool
    assert validate_arguments(adapter.spec, call.arguments) is None, (space, call)
    # through JSON (what a wire carries) ...
    again = Call(call.name, json.loads(json.dumps(call.arguments)))
    dec = adapter.from_call(again, clip=False)
    assert not dec.clipped
    assert actions_equal(dec.action, action), (space, action, dec.action)
    assert space.contains(dec.action)
    # ... and through the head texts the model writes, assembled by the strict decoder
    heads = heads_for([adapter.spec])
    texts = encode_call_heads(call, adapter.spec, heads)
    assembled = assemble(texts, {adapter.spec.name: adapter.spec})
    assert assembled.legal, assembled.reason
    dec2 = adapter.from_call(assembled.call, clip=False)
    assert actions_equal(dec2.action, action)


@pytest.mark.parametrize("strategy", [discrete(), box(), multidiscrete(), multibinary(), dict_space(),
                                      tuple_space(), nested],
                         ids=["Discrete", "Box", "MultiDiscrete", "MultiBinary", "Dict", "Tuple", "nested"])
def test_round_trip_every_space_type(strategy):
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(space=strategy, seed=st.integers(0, 2**31 - 1))
    def check(space, seed):
        _round_trip(space, seed)

    check()


def test_small_spaces_split_into_parameters_large_ones_do_not():
    assert SpaceAdapter(S.Box(-1, 1, shape=(3,))).spec.param_names == ("a0", "a1", "a2")
    assert SpaceAdapter(S.Box(-1, 1, shape=(7,))).spec.param_names == ("action",)
    assert SpaceAdapter(S.Box(-2, 2, shape=(1,))).spec.param_names == ("action",)
    assert SpaceAdapter(S.Dict({"a": S.Discrete(2), "b": S.MultiBinary(2)})).spec.param_names == ("a", "b")
    big = SpaceAdapter(S.MultiBinary(9))
    assert big.spec.arity == 1
    schema = big.spec.properties["action"]
    assert schema["type"] == "array" and schema["minItems"] == schema["maxItems"] == 9


def test_schema_carries_types_enums_and_ranges():
    a = SpaceAdapter(S.Discrete(3), name="push", param_names=["direction"], labels=["l", "n", "r"])
    assert a.spec.properties["direction"] == {"type": "string", "enum": ["l", "n", "r"]}
    b = SpaceAdapter(S.Box(np.array([-1, 0], dtype=np.float32), np.array([1, 5], dtype=np.float32)))
    assert b.spec.properties["a0"] == {"type": "number", "minimum": -1.0, "maximum": 1.0}
    assert b.spec.properties["a1"] == {"type": "number", "minimum": 0.0, "maximum": 5.0}
    c = SpaceAdapter(S.Box(-np.inf, np.inf, shape=(1,)))
    assert c.spec.properties["action"] == {"type": "number"}
    d = SpaceAdapter(S.MultiDiscrete([3, 2], start=[1, 0]))
    assert d.spec.properties["a0"] == {"type": "integer", "minimum": 1, "maximum": 3}
    assert SpaceAdapter(S.Discrete(4)).spec.properties["action"] == {"type": "integer", "minimum": 0,
                                                                      "maximum": 3}


def test_out_of_range_numbers_clip_or_reject():
    a = SpaceAdapter(S.Box(-2, 2, shape=(2,), dtype=np.float32))
    dec = a.from_call(Call("act", {"a0": 5.0, "a1": -0.5}), clip=True)
    assert dec.clipped and dec.action.tolist() == [2.0, -0.5]
    with pytest.raises(ActionError, match=r"act\.a0=5.0 is outside"):
        a.from_call(Call("act", {"a0": 5.0, "a1": -0.5}), clip=False)
    d = SpaceAdapter(S.Discrete(3))
    assert d.from_call(Call("act", {"action": 7}), clip=True).action == 2
    with pytest.raises(ActionError, match="outside"):
        d.from_call(Call("act", {"action": 7}), clip=False)


@pytest.mark.parametrize("call, message", [
    (Call("move", {"action": 1}), "unknown tool"),
    (Call("act", {}), "missing"),
    (Call("act", {"action": 1, "x": 2}), "no parameter"),
    (Call("act", {"action": "1"}), "not a number"),
    (Call("act", {"action": 1.5}), "not an integer"),
    (Call("act", {"action": True}), "not a number"),
])
def test_bad_calls_raise_a_clear_error(call, message):
    with pytest.raises(ActionError, match=message):
        SpaceAdapter(S.Discrete(3)).from_call(call)


def test_non_finite_and_unknown_labels_are_rejected_even_when_clipping():
    box = SpaceAdapter(S.Box(-1, 1, shape=(1,)))
    with pytest.raises(ActionError, match="not finite"):
        box.from_call(Call("act", {"action": float("nan")}), clip=True)
    lab = SpaceAdapter(S.Discrete(2), labels=["left", "right"])
    with pytest.raises(ActionError, match="not one of"):
        lab.from_call(Call("act", {"action": "up"}), clip=True)


def test_unsupported_space_is_refused():
    with pytest.raises(UnsupportedSpaceError):
        SpaceAdapter(S.Text(5))


def test_wrong_number_of_names_or_labels_is_refused():
    with pytest.raises(ValueError, match="parameter names"):
        SpaceAdapter(S.Box(-1, 1, shape=(2,)), param_names=["x"])
    with pytest.raises(ValueError, match="labels"):
        SpaceAdapter(S.Discrete(3), labels=["a", "b"])
