"""Values and calls drawn from tool schemas: random (``sample_value``, ``sample_call``) or minimal and
deterministic (``minimal_value``, ``default_call``). The stand-in backends (``models.stand_ins``,
``models.random_engine``) answer with them, so every call they make is legal by construction.

Covered JSON-schema keywords: ``type`` (one or a list; none: any JSON value, or the type its other
keywords imply), ``enum``, ``const``, ``anyOf``/``oneOf`` (one branch), ``allOf`` (merged), numbers
(``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``, ``multipleOf``), strings
(``minLength``, ``maxLength``, ``pattern`` via ``rstr.xeger``), arrays (``items`` as one schema or
the tuple form with ``additionalItems``, ``minItems``, ``maxItems``, ``uniqueItems``) and objects
(``properties``, ``required``, ``additionalProperties``, ``minProperties``, ``maxProperties``).

Invariant: a value returned by ``sample_valid``/``minimal_value`` passes ``is_legal`` (the project's
``validate_value`` and, where it can judge the schema, jsonschema's own validator, which also checks
``multipleOf`` and ``uniqueItems``). A schema nothing legal can be drawn from (a pattern ``rstr``
cannot write, ``exclusiveMinimum`` 0 with ``exclusiveMaximum`` 5e-324, contradictory ``allOf``)
raises ``SchemaSamplingError``, a ``ToolSchemaError``, naming the tool and parameter.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import string
from collections.abc import Mapping
from typing import Any

import jsonschema
import rstr
from tickcall.models.calls import Call
from tickcall.models.tools import ToolSchemaError, ToolSpec, validate_arguments, validate_value

SPAN = 100  # an unbounded number is drawn within SPAN of its one bound (or of 0)
MAX_DEPTH = 3  # below this nesting depth arrays and objects get only what their schema requires
EXTRA_ITEMS = 3  # an array without maxItems gets at most minItems + EXTRA_ITEMS items
EXTRA_CHARS = 12  # a string without maxLength gets at most minLength + EXTRA_CHARS characters
TRIES = 24  # draws per value before a schema is declared unsampleable
_ALPHABET = string.ascii_letters + string.digits
_ANY_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")
_SCALARS = ("null", "boolean", "integer", "number", "string")
# What a draw from an unsatisfiable or unusual schema raises (an empty range, a regex rstr cannot write)
_DRAW_ERRORS = (ValueError, OverflowError, TypeError, ZeroDivisionError, re.error, RecursionError)


class SchemaSamplingError(ToolSchemaError):
    """No legal value could be drawn from a schema (the message names where and why)."""


# --------------------------------------------------------------------------- legality


def is_legal(value: Any, schema: Any) -> bool:
    """True when ``value`` satisfies ``schema``: ``models.tools.validate_value`` and jsonschema (Draft 7
    unless ``$schema`` says otherwise). A schema jsonschema cannot resolve alone (a ``$ref`` into the
    enclosing document) is judged by ``validate_value`` only."""
    if not isinstance(schema, Mapping):
        return schema is not False
    if validate_value(value, schema) is not None:
        return False
    try:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
        return bool(cls(schema).is_valid(value))
    except Exception:  # noqa: BLE001 - an unresolvable $ref: validate_value has judged it
        return True


# --------------------------------------------------------------------------- random values


def sample_value(schema: Any, rng: random.Random, *, depth: int = 0) -> Any:
    """One random value shaped by ``schema`` (not checked: ``sample_valid`` checks and retries)."""
    if not isinstance(schema, Mapping):
        return _sample_type(rng.choice(_SCALARS), {}, rng, depth)  # ``true`` schema: anything
    if "const" in schema:
        return copy.deepcopy(schema["const"])
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return copy.deepcopy(rng.choice(schema["enum"]))
    branches = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(branches, list) and branches:
        base = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
        return sample_value(_merge(base, rng.choice(branches)), rng, depth=depth)
    if isinstance(schema.get("allOf"), list):
        return sample_value(_flatten_all_of(schema), rng, depth=depth)
    types = _types(schema)
    if not types:
        types = list(_ANY_TYPES if depth < MAX_DEPTH else _SCALARS)
    return _sample_type(rng.choice(types), schema, rng, depth)


def sample_valid(schema: Any, rng: random.Random, *, where: str = "value", tries: int = TRIES) -> Any:
    """A random value that ``is_legal`` for ``schema``; raises SchemaSamplingError after ``tries`` draws."""
    last = "no draw"
    for _ in range(tries):
        try:
            value = sample_value(schema, rng)
        except _DRAW_ERRORS as exc:
            last = f"{type(exc).__name__}: {exc}"
            continue
        if is_legal(value, schema):
            return value
        last = validate_value(value, schema, where) or f"{where}={_short(value)} fails the schema"
    raise SchemaSamplingError(
        f"{where}: no legal value found in {tries} random draws ({last}); "
        "simplify the schema (pattern, bounds, allOf)"
    )


def sample_arguments(tool: ToolSpec, rng: random.Random, *, optional_p: float = 0.5) -> dict[str, Any]:
    """Arguments for ``tool``: every required parameter, each optional one with probability
    ``optional_p``; keys in schema order. Raises SchemaSamplingError naming the parameter."""
    required = set(tool.required)
    out: dict[str, Any] = {}
    for name, schema in tool.properties.items():
        if name in required or rng.random() < optional_p:
            out[name] = sample_valid(schema, rng, where=f"tool {tool.name!r}, parameter {name!r}")
    return out


def sample_call(tool: ToolSpec, rng: random.Random, *, tries: int = 4) -> Call:
    """A random legal call of ``tool`` (passes ``validate_arguments``). Raises SchemaSamplingError."""
    err = "no draw"
    for _ in range(tries):
        args = sample_arguments(tool, rng)
        err = validate_arguments(tool, args)
        if err is None:
            return Call(tool.name, args)
    raise SchemaSamplingError(f"tool {tool.name!r}: no legal call found in {tries} draws ({err})")


def _sample_type(t: str, schema: Mapping[str, Any], rng: random.Random, depth: int) -> Any:
    if t == "null":
        return None
    if t == "boolean":
        return rng.random() < 0.5
    if t == "integer":
        return _sample_integer(schema, rng)
    if t == "number":
        return _sample_number(schema, rng)
    if t == "string":
        return _sample_string(schema, rng)
    if t == "array":
        return _sample_array(schema, rng, depth)
    if t == "object":
        return _sample_object(schema, rng, depth)
    raise ValueError(f"unknown type {t!r}")


def _sample_integer(schema: Mapping[str, Any], rng: random.Random) -> int:
    lo, hi = _int_range(schema)
    m = _number(schema.get("multipleOf"))
    if m is not None and float(m).is_integer():
        step = int(m)
        k_lo, k_hi = -(-lo // step), hi // step  # ceil and floor, exact on ints
        if k_lo > k_hi:
            raise ValueError(f"no multiple of {m} in [{lo}, {hi}]")
        return rng.randint(k_lo, k_hi) * step
    if m is not None:  # a fractional step: the integers that happen to be multiples of it
        for _ in range(TRIES):
            v = rng.randint(lo, hi)
            if _multiple_ok(v, m):
                return v
        raise ValueError(f"no integer multiple of {m} found in [{lo}, {hi}]")
    return rng.randint(lo, hi)


def _sample_number(schema: Mapping[str, Any], rng: random.Random) -> float | int:
    lo, lo_open, hi, hi_open = _float_range(schema)
    m = _number(schema.get("multipleOf"))
    if m is not None:
        k_lo, k_hi = math.ceil(lo / m), math.floor(hi / m)
        if k_lo > k_hi:
            raise ValueError(f"no multiple of {m} in [{lo}, {hi}]")
        # k * m in floating point is a multiple exactly when the product is exact; draw until one is
        v = _pick_multiple(rng, k_lo, k_hi, m)
        return v if _in_range(v, lo, lo_open, hi, hi_open) else _fail(f"{v} is out of range")
    v = _uniform(rng, lo, hi)
    nice = round(v, 4)  # what a model would write; the exact draw when rounding leaves the range
    v = nice if _in_range(nice, lo, lo_open, hi, hi_open) else v
    if not _in_range(v, lo, lo_open, hi, hi_open):
        raise ValueError(f"{v} is out of range")
    return v


def _sample_string(schema: Mapping[str, Any], rng: random.Random) -> str:
    lo = int(_number(schema.get("minLength")) or 0)
    max_len = _number(schema.get("maxLength"))
    hi = int(max_len) if max_len is not None else lo + EXTRA_CHARS
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        # xeger writes a full match; re.search (the validator's rule) then finds it. Open repeats
        # (``+``, ``*``) run to a drawn cap or, half the time, exactly to the longest length allowed,
        # so a pattern can meet a maxLength as well as a minLength.
        longest = max(1, int(max_len) if max_len is not None else max(EXTRA_CHARS, lo))
        full = rng.random() < 0.5
        return _Xeger(rng, longest if full else rng.randint(1, longest), full).xeger(pattern)
    n = rng.randint(lo, max(lo, hi))
    return "".join(rng.choice(_ALPHABET) for _ in range(n))


def _sample_array(schema: Mapping[str, Any], rng: random.Random, depth: int) -> list[Any]:
    items = schema.get("items")
    lo = int(_number(schema.get("minItems")) or 0)
    max_items = _number(schema.get("maxItems"))
    if isinstance(items, list):  # tuple form: position i follows items[i], the rest additionalItems
        extra = schema.get("additionalItems", True)
        cap = len(items) + (EXTRA_ITEMS if extra is not False else 0)
    else:
        extra = items if items is not None else True
        cap = lo + EXTRA_ITEMS
    hi = min(int(max_items), cap) if max_items is not None else cap
    n = lo if depth + 1 >= MAX_DEPTH else rng.randint(lo, max(lo, hi))
    out: list[Any] = []
    for i in range(n):
        sub = items[i] if isinstance(items, list) and i < len(items) else extra
        for _ in range(TRIES if schema.get("uniqueItems") else 1):
            value = sample_value(sub, rng, depth=depth + 1)
            if not schema.get("uniqueItems") or value not in out:
                break
        out.append(value)
    return out


def _sample_object(schema: Mapping[str, Any], rng: random.Random, depth: int) -> dict[str, Any]:
    props = schema.get("properties") or {}
    required = list(schema.get("required") or ())
    extra = schema.get("additionalProperties", True)
    out: dict[str, Any] = {}
    shallow = depth + 1 >= MAX_DEPTH
    for name, sub in props.items():
        if name in required or (not shallow and rng.random() < 0.5):
            out[name] = sample_value(sub, rng, depth=depth + 1)
    for name in required:
        if name not in out:
            out[name] = sample_value(extra if isinstance(extra, Mapping) else {}, rng, depth=depth + 1)
    _fill_properties(out, schema, lambda sub: sample_value(sub, rng, depth=depth + 1))
    return out


# --------------------------------------------------------------------------- minimal values


def minimal_value(schema: Any, *, where: str = "value") -> Any:
    """The deterministic "smallest" legal value: ``const``, the first ``enum`` member, 0 (or 0.0) moved
    into the range and onto ``multipleOf``, ``false``, ``null`` for a schema without type, the
    shortest string of at least one character (an empty head reads as "omitted"), arrays of
    ``minItems`` minimal items, objects with their required keys (each its ``default`` when legal).
    Where that is not legal (``uniqueItems``, a ``pattern``), a draw from a fixed seed. Raises
    SchemaSamplingError."""
    try:
        value = _minimal(schema)
        if is_legal(value, schema):
            return value
    except _DRAW_ERRORS:  # e.g. integer bounds 0.5..0.7: no integer at all; the draws say so below
        pass
    return sample_valid(schema, random.Random(0), where=where)


def default_value(schema: Any, *, where: str = "value") -> Any:
    """The schema's ``default`` when it is legal, else ``minimal_value``."""
    if isinstance(schema, Mapping) and "default" in schema and is_legal(schema["default"], schema):
        return copy.deepcopy(schema["default"])
    return minimal_value(schema, where=where)


def default_call(tool: ToolSpec) -> Call:
    """``tool`` called with each required parameter at its ``default_value`` (optional ones omitted).
    Raises SchemaSamplingError when no legal value exists for one of them."""
    required = set(tool.required)
    args = {
        name: default_value(schema, where=f"tool {tool.name!r}, parameter {name!r}")
        for name, schema in tool.properties.items()
        if name in required
    }
    err = validate_arguments(tool, args)
    if err is not None:
        raise SchemaSamplingError(f"tool {tool.name!r}: its default call is illegal ({err})")
    return Call(tool.name, args)


def _minimal(schema: Any) -> Any:
    if not isinstance(schema, Mapping):
        return None
    if "const" in schema:
        return copy.deepcopy(schema["const"])
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return copy.deepcopy(next((v for v in schema["enum"] if is_legal(v, schema)), schema["enum"][0]))
    branches = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(branches, list) and branches:
        base = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
        values = [_minimal(_merge(base, b)) for b in branches]
        return next((v for v in values if is_legal(v, schema)), values[0])
    if isinstance(schema.get("allOf"), list):
        return _minimal(_flatten_all_of(schema))
    types = _types(schema)
    if not types:
        return None
    values = [_minimal_of_type(t, schema) for t in types]
    return next((v for v in values if is_legal(v, schema)), values[0])


def _minimal_of_type(t: str, schema: Mapping[str, Any]) -> Any:
    if t == "boolean":
        return False
    if t == "integer":
        lo, hi = _int_range(schema)
        m = _number(schema.get("multipleOf"))
        step = int(m) if m is not None and float(m).is_integer() else 1
        v = min(max(0, lo), hi)
        if v % step:  # onto the step, inside the range when possible
            v = v - v % step if v - v % step >= lo else v + (step - v % step)
        return v
    if t == "number":
        lo, lo_open, hi, hi_open = _float_range(schema, bounded=False)
        m = _number(schema.get("multipleOf"))
        if m is not None:
            k = 0 if lo <= 0 <= hi else (math.ceil(lo / m) if lo > 0 else math.floor(hi / m))
            return float(k * m)
        if _in_range(0.0, lo, lo_open, hi, hi_open):
            return 0.0
        if lo > 0:
            return lo if not lo_open else (lo + min(1.0, (hi - lo) / 2) if math.isfinite(hi) else lo + 1.0)
        return hi if not hi_open else (hi - min(1.0, (hi - lo) / 2) if math.isfinite(lo) else hi - 1.0)
    if t == "string":
        lo = int(_number(schema.get("minLength")) or 0)
        max_len = _number(schema.get("maxLength"))
        n = max(lo, 1) if max_len is None or max_len >= 1 else 0
        return "a" * n
    if t == "array":
        items = schema.get("items")
        n = int(_number(schema.get("minItems")) or 0)
        if isinstance(items, list):
            extra = schema.get("additionalItems", True)
            return [_minimal(items[i] if i < len(items) else extra) for i in range(n)]
        return [_minimal(items if items is not None else {}) for _ in range(n)]
    if t == "object":
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties", True)
        out = {}
        for name in schema.get("required") or ():
            sub = props.get(name, extra if isinstance(extra, Mapping) else {})
            legal_default = isinstance(sub, Mapping) and "default" in sub and is_legal(sub["default"], sub)
            out[name] = copy.deepcopy(sub["default"]) if legal_default else _minimal(sub)
        _fill_properties(out, schema, _minimal)
        return out
    return None  # null


# --------------------------------------------------------------------------- helpers


class _Xeger(rstr.Rstr):
    """``rstr.xeger`` with repeats (``*``, ``+``, ``{n,m}``) capped at ``cap`` instead of rstr's 100, and
    with ``full`` each repeat run to its cap. Overrides rstr's ``_handle_repeat`` hook (rstr 3.x); were
    it renamed, repeats would be rstr's own and only patterns with tight length bounds would draw worse
    (never an illegal value: every draw is checked)."""

    def __init__(self, rng: random.Random, cap: int, full: bool = False) -> None:
        super().__init__(rng)
        self.cap, self.full = cap, full

    def _handle_repeat(self, start_range: int, end_range: int, value: Any) -> str:
        end = max(start_range, min(end_range, self.cap))
        return super()._handle_repeat(end if self.full else start_range, end, value)


def _types(schema: Mapping[str, Any]) -> list[str]:
    """The declared type(s), else the one the schema's keywords imply, else [] (any)."""
    t = schema.get("type")
    if isinstance(t, str):
        return [t]
    if isinstance(t, list):
        return [x for x in t if isinstance(x, str)]
    keys = set(schema)
    if keys & {"properties", "required", "additionalProperties", "minProperties", "maxProperties"}:
        return ["object"]
    if keys & {"items", "minItems", "maxItems", "uniqueItems", "additionalItems"}:
        return ["array"]
    if keys & {"minLength", "maxLength", "pattern"}:
        return ["string"]
    if keys & {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}:
        return ["number"]
    return []


def _merge(base: Mapping[str, Any], extra: Any) -> dict[str, Any]:
    """Two schemas that must both hold, as one (types intersected, properties and required joined)."""
    if not isinstance(extra, Mapping):
        return dict(base)
    out = {**base, **extra}
    if "type" in base and "type" in extra:
        a, b = _types(base), _types(extra)
        both = [t for t in b if t in a or (t == "integer" and "number" in a)]
        out["type"] = both or b
    if isinstance(base.get("properties"), Mapping) and isinstance(extra.get("properties"), Mapping):
        out["properties"] = {**base["properties"], **extra["properties"]}
    if base.get("required") or extra.get("required"):
        out["required"] = list(dict.fromkeys([*(base.get("required") or ()), *(extra.get("required") or ())]))
    return out


def _flatten_all_of(schema: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in schema.items() if k != "allOf"}
    for sub in schema["allOf"]:
        out = _merge(out, sub)
    return out


def _fill_properties(out: dict[str, Any], schema: Mapping[str, Any], make: Any) -> None:
    """Meet ``minProperties`` (optional properties first, then ``x1``, ``x2``... where extra keys are
    allowed) and ``maxProperties`` (optional keys dropped, last first)."""
    props = schema.get("properties") or {}
    extra = schema.get("additionalProperties", True)
    want = int(_number(schema.get("minProperties")) or 0)
    for name, sub in props.items():
        if len(out) >= want:
            break
        out.setdefault(name, make(sub))
    i = 1
    while len(out) < want and extra is not False and i <= want + len(out):
        out.setdefault(f"x{i}", make(extra if isinstance(extra, Mapping) else {}))
        i += 1
    cap = _number(schema.get("maxProperties"))
    required = set(schema.get("required") or ())
    for name in reversed(list(out)):
        if cap is None or len(out) <= cap:
            break
        if name not in required:
            del out[name]


def _int_range(schema: Mapping[str, Any]) -> tuple[int, int]:
    """Inclusive integer bounds; a missing side lies 2 * SPAN from the other (or SPAN from 0)."""
    lo: int | None = None
    hi: int | None = None
    if (v := _number(schema.get("minimum"))) is not None:
        lo = math.ceil(v)
    if (v := _number(schema.get("exclusiveMinimum"))) is not None:
        lo = max(lo if lo is not None else math.floor(v) + 1, math.floor(v) + 1)
    if (v := _number(schema.get("maximum"))) is not None:
        hi = math.floor(v)
    if (v := _number(schema.get("exclusiveMaximum"))) is not None:
        hi = min(hi if hi is not None else math.ceil(v) - 1, math.ceil(v) - 1)
    if lo is None and hi is None:
        return -SPAN, SPAN
    if lo is None:
        return hi - 2 * SPAN, hi
    if hi is None:
        return lo, lo + 2 * SPAN
    if lo > hi:
        raise ValueError(f"no integer in [{lo}, {hi}]")
    return lo, hi


def _float_range(schema: Mapping[str, Any], *, bounded: bool = True) -> tuple[float, bool, float, bool]:
    """(low, low is exclusive, high, high is exclusive). ``bounded``: a missing side lies 2 * SPAN from
    the other (or SPAN from 0); else it is infinite."""
    lo, lo_open, hi, hi_open = -math.inf, False, math.inf, False
    if (v := _number(schema.get("minimum"))) is not None:
        lo = float(v)
    if (v := _number(schema.get("exclusiveMinimum"))) is not None and float(v) >= lo:
        lo, lo_open = float(v), True
    if (v := _number(schema.get("maximum"))) is not None:
        hi = float(v)
    if (v := _number(schema.get("exclusiveMaximum"))) is not None and float(v) <= hi:
        hi, hi_open = float(v), True
    if bounded:
        if math.isinf(lo) and math.isinf(hi):
            lo, hi = -float(SPAN), float(SPAN)
        elif math.isinf(lo):
            lo = hi - 2 * SPAN
        elif math.isinf(hi):
            hi = lo + 2 * SPAN
    return lo, lo_open, hi, hi_open


def _in_range(v: float, lo: float, lo_open: bool, hi: float, hi_open: bool) -> bool:
    return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)


def _uniform(rng: random.Random, lo: float, hi: float) -> float:
    """uniform(lo, hi) that cannot overflow when hi - lo exceeds the largest float."""
    u = rng.random()
    return lo * (1.0 - u) + hi * u


def _pick_multiple(rng: random.Random, k_lo: int, k_hi: int, m: float) -> float | int:
    for _ in range(TRIES):
        v = rng.randint(k_lo, k_hi) * m
        if _multiple_ok(v, m):
            return v
    if k_lo <= 0 <= k_hi:
        return 0 * m
    raise ValueError(f"no exact multiple of {m} drawn")


def _multiple_ok(v: float, m: float) -> bool:
    """A multiple of ``m`` as jsonschema judges it (``v / m`` integral: ``0.5`` is a multiple of ``0.1``,
    ``0.30000000000000004`` is not); exact on integers."""
    if isinstance(v, int) and isinstance(m, int):
        return v % m == 0
    try:
        return float(v / m).is_integer()
    except (OverflowError, ZeroDivisionError):
        return False


def _number(v: Any) -> int | float | None:
    return v if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def _fail(message: str) -> Any:
    raise ValueError(message)


def _short(value: Any) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."
