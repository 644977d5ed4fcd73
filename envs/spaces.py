"""Tools from gymnasium action spaces: action -> ``Call`` -> action, for any registered env.

Supported spaces: ``Discrete``, ``Box``, ``MultiDiscrete``, ``MultiBinary``, ``Dict`` and ``Tuple``
(nested freely). Each space becomes a JSON-schema value:

=================  ===========================================================================
``Discrete``       ``integer`` in ``[start, start+n-1]``, or a ``string`` enum when labels are given
``Box``            ``number`` (``integer`` for integer dtypes) with ``minimum``/``maximum`` where the
                   bounds are finite; a Box of more than one element is a flat array (row-major)
``MultiDiscrete``  array of integers, each with its own range
``MultiBinary``    array of booleans
``Dict``           object with one property per key (all required, nothing else allowed)
``Tuple``          array with one item per entry (``prefixItems``)
=================  ===========================================================================

The top level becomes **one tool**. When the top-level value is an array or object with at most
six entries (the SimpleTool heads carry at most six arguments) each entry is its own parameter
(``a0``.. or the given names; the Dict's keys); otherwise one parameter carries the whole value.

Invariants (tested with Hypothesis): for every action ``a`` in the space, ``from_call(to_call(a))``
equals ``a`` exactly (floats are written with ``repr`` precision, so float32 values survive JSON), and
``to_call(a)`` passes ``models.tools.validate_arguments`` for the tool.

Decoding a call never returns an action outside the space: a number out of range is clipped (and
reported) when ``clip=True`` or rejected with a reason otherwise; anything else that is wrong (unknown
tool, missing or extra argument, wrong type, unknown label, NaN) raises ``ActionError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tickcall.models.calls import Call
from tickcall.models.tools import MAX_ARITY, ToolSpec, normalize_tool


class ActionError(ValueError):
    """A call that cannot be turned into a valid action (the message says why)."""


class UnsupportedSpaceError(TypeError):
    """An action space the adapter cannot express as a tool (Text, Graph, Sequence, ...)."""


# --------------------------------------------------------------------------- codecs
# A codec converts one (sub)space element <-> a JSON value, and knows its JSON schema.
# ``decode(value, clip, where)`` returns ``(element, clipped)``; it raises ActionError.


def _finite(x: float) -> bool:
    return bool(np.isfinite(x))


def _as_number(value: Any, where: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ActionError(f"{where}={value!r} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ActionError(f"{where}={value!r} is not finite")
    return value


def _as_int(value: Any, where: str) -> int:
    value = _as_number(value, where)
    if isinstance(value, float):
        if not value.is_integer():
            raise ActionError(f"{where}={value!r} is not an integer")
        value = int(value)
    return value


class _IntCodec:
    """One integer in [lo, hi], optionally written as a label (``labels[i - lo]``)."""

    def __init__(self, lo: int, hi: int, labels: Sequence[str] | None = None) -> None:
        self.lo, self.hi = int(lo), int(hi)
        self.labels = list(labels) if labels is not None else None
        if self.labels is not None and len(self.labels) != self.hi - self.lo + 1:
            raise ValueError(f"{len(self.labels)} labels for {self.hi - self.lo + 1} actions")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be distinct: {self.labels}")

    def schema(self) -> dict[str, Any]:
        if self.labels is not None:
            return {"type": "string", "enum": list(self.labels)}
        return {"type": "integer", "minimum": self.lo, "maximum": self.hi}

    def encode(self, x: Any) -> Any:
        i = int(x)
        return self.labels[i - self.lo] if self.labels is not None else i

    def decode(self, value: Any, clip: bool, where: str) -> tuple[int, bool]:
        if self.labels is not None:
            if not isinstance(value, str) or value not in self.labels:
                raise ActionError(f"{where}={value!r} is not one of {self.labels}")
            return self.lo + self.labels.index(value), False
        i = _as_int(value, where)
        if self.lo <= i <= self.hi:
            return i, False
        if not clip:
            raise ActionError(f"{where}={i} is outside [{self.lo}, {self.hi}]")
        return min(max(i, self.lo), self.hi), True


def _shortest(x: float, dtype: Any) -> float:
    """The shortest decimal that names the same ``dtype`` value (``float32(0.73)`` -> ``0.73``, not
    ``0.7300000190734863``), so texts stay short and still round-trip exactly."""
    if dtype is None or np.dtype(dtype) == np.float64 or not np.isfinite(x):
        return float(x)
    return float(str(np.dtype(dtype).type(x)))


class _NumCodec:
    """One number in [lo, hi] (bounds may be infinite); ``integer`` for integer-dtype Boxes.

    Numbers of a float32 Box are written with their shortest float32 decimal (see ``_shortest``)."""

    def __init__(self, lo: float, hi: float, integer: bool, dtype: Any = None) -> None:
        self.integer, self.dtype = integer, dtype
        self.lo, self.hi = _shortest(lo, dtype), _shortest(hi, dtype)

    def schema(self) -> dict[str, Any]:
        s: dict[str, Any] = {"type": "integer" if self.integer else "number"}
        if _finite(self.lo):
            s["minimum"] = int(self.lo) if self.integer else float(self.lo)
        if _finite(self.hi):
            s["maximum"] = int(self.hi) if self.integer else float(self.hi)
        return s

    def encode(self, x: Any) -> Any:
        return int(x) if self.integer else _shortest(x, self.dtype)

    def decode(self, value: Any, clip: bool, where: str) -> tuple[float | int, bool]:
        v = _as_int(value, where) if self.integer else float(_as_number(value, where))
        if self.lo <= v <= self.hi:
            return v, False
        if not clip:
            raise ActionError(f"{where}={v} is outside [{self.lo}, {self.hi}]")
        return (min(max(v, self.lo), self.hi)), True


class _BoolCodec:
    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}

    def encode(self, x: Any) -> Any:
        return bool(x)

    def decode(self, value: Any, clip: bool, where: str) -> tuple[int, bool]:
        if isinstance(value, bool):
            return int(value), False
        if isinstance(value, int) and value in (0, 1):
            return value, False
        raise ActionError(f"{where}={value!r} is not a boolean")


class _ArrayCodec:
    """A fixed-length list of element codecs, built into a numpy array of ``shape``/``dtype``.

    ``dtype=None`` builds a tuple (for ``Tuple`` spaces) instead of an array.
    """

    def __init__(self, items: list[Any], shape: tuple[int, ...] | None, dtype: Any,
                 scalar: bool = False) -> None:
        self.items, self.shape, self.dtype, self.scalar = items, shape, dtype, scalar

    def item_schemas(self) -> list[dict[str, Any]]:
        return [c.schema() for c in self.items]

    def schema(self) -> dict[str, Any]:
        if self.scalar:
            return self.items[0].schema()
        schemas = self.item_schemas()
        s: dict[str, Any] = {"type": "array", "minItems": len(schemas), "maxItems": len(schemas)}
        if schemas and all(x == schemas[0] for x in schemas):
            s["items"] = schemas[0]
        else:
            s["prefixItems"] = schemas
        return s

    def encode(self, x: Any) -> Any:
        if self.dtype is None:  # Tuple
            return [c.encode(e) for c, e in zip(self.items, x, strict=True)]
        flat = np.asarray(x).reshape(-1)
        values = [c.encode(e) for c, e in zip(self.items, flat, strict=True)]
        return values[0] if self.scalar else values

    def decode(self, value: Any, clip: bool, where: str) -> tuple[Any, bool]:
        if self.scalar:
            value = [value]
        if not isinstance(value, list | tuple):
            raise ActionError(f"{where}={value!r} is not an array")
        if len(value) != len(self.items):
            raise ActionError(f"{where} has {len(value)} items, expected {len(self.items)}")
        out, clipped = [], False
        for i, (c, v) in enumerate(zip(self.items, value, strict=True)):
            e, ch = c.decode(v, clip, f"{where}[{i}]")
            out.append(e)
            clipped |= ch
        if self.dtype is None:
            return tuple(out), clipped
        arr = np.asarray(out, dtype=self.dtype).reshape(self.shape)
        return arr, clipped


class _BoxCodec(_ArrayCodec):
    """Box: elementwise number codecs; after the dtype cast the value is clipped into the bounds
    again (a float64 inside the bounds can round outside them in float32)."""

    def __init__(self, space: Any) -> None:
        low = np.asarray(space.low, dtype=np.float64).reshape(-1)
        high = np.asarray(space.high, dtype=np.float64).reshape(-1)
        integer = np.issubdtype(space.dtype, np.integer)
        dtype = None if integer else space.dtype
        items = [_NumCodec(lo, hi, integer, dtype) for lo, hi in zip(low, high, strict=True)]
        super().__init__(items, tuple(space.shape), space.dtype, scalar=(low.size == 1))
        self.space = space

    def decode(self, value: Any, clip: bool, where: str) -> tuple[Any, bool]:
        arr, clipped = super().decode(value, clip, where)
        if not np.issubdtype(self.dtype, np.integer):
            arr = np.asarray(np.clip(arr, self.space.low, self.space.high), dtype=self.dtype).reshape(self.shape)
        return arr, clipped


class _DictCodec:
    def __init__(self, items: dict[str, Any]) -> None:
        self.items = items

    def item_schemas(self) -> dict[str, dict[str, Any]]:
        return {k: c.schema() for k, c in self.items.items()}

    def schema(self) -> dict[str, Any]:
        return {"type": "object", "properties": self.item_schemas(), "required": list(self.items),
                "additionalProperties": False}

    def encode(self, x: Mapping[str, Any]) -> Any:
        return {k: c.encode(x[k]) for k, c in self.items.items()}

    def decode(self, value: Any, clip: bool, where: str) -> tuple[Any, bool]:
        if not isinstance(value, Mapping):
            raise ActionError(f"{where}={value!r} is not an object")
        extra = [k for k in value if k not in self.items]
        if extra:
            raise ActionError(f"{where} has unexpected keys {extra}")
        missing = [k for k in self.items if k not in value]
        if missing:
            raise ActionError(f"{where} lacks keys {missing}")
        out, clipped = {}, False
        for k, c in self.items.items():
            out[k], ch = c.decode(value[k], clip, f"{where}.{k}")
            clipped |= ch
        return out, clipped


def codec_for(space: Any, labels: Sequence[str] | None = None) -> Any:
    """The codec of a gymnasium space (``labels`` name the actions of a top-level Discrete)."""
    from gymnasium import spaces as S

    if isinstance(space, S.Discrete):
        start = int(space.start)
        return _IntCodec(start, start + int(space.n) - 1, labels)
    if labels is not None:
        raise ValueError("labels are only for Discrete action spaces")
    if isinstance(space, S.Box):
        return _BoxCodec(space)
    if isinstance(space, S.MultiDiscrete):
        nvec = np.asarray(space.nvec).reshape(-1)
        start = np.asarray(space.start).reshape(-1)
        items = [_IntCodec(int(s), int(s) + int(n) - 1) for s, n in zip(start, nvec, strict=True)]
        return _ArrayCodec(items, tuple(space.shape), space.dtype)
    if isinstance(space, S.MultiBinary):
        size = int(np.prod(space.shape))
        return _ArrayCodec([_BoolCodec() for _ in range(size)], tuple(space.shape), space.dtype)
    if isinstance(space, S.Dict):
        return _DictCodec({str(k): codec_for(sub) for k, sub in space.spaces.items()})
    if isinstance(space, S.Tuple):
        return _ArrayCodec([codec_for(sub) for sub in space.spaces], None, None)
    raise UnsupportedSpaceError(f"cannot offer a {type(space).__name__} action space as a tool")


# --------------------------------------------------------------------------- the adapter


@dataclass(frozen=True)
class Decoded:
    """An action decoded from a call; ``clipped`` says a number was moved into range."""

    action: Any
    clipped: bool
    reason: str = ""


class SpaceAdapter:
    """One tool for an action space: ``to_call(action) -> Call``, ``from_call(call) -> Decoded``.

    Args:
        space: the gymnasium action space.
        name: the tool name (default ``act``).
        description: the tool description (shown to the model in the prompt).
        param_names: names of the top-level parameters (default ``action`` for a single value,
            ``a0``.. for array entries, the keys for a Dict).
        labels: names for the actions of a ``Discrete`` space (``["left", "right"]``).
        param_descriptions: optional text per parameter.
    """

    def __init__(self, space: Any, *, name: str = "act", description: str = "",
                 param_names: Sequence[str] | None = None, labels: Sequence[str] | None = None,
                 param_descriptions: Mapping[str, str] | None = None) -> None:
        self.space = space
        self.codec = codec_for(space, labels)
        schema = self.codec.schema()
        # how the top-level value splits into parameters
        if isinstance(self.codec, _DictCodec) and 0 < len(self.codec.items) <= MAX_ARITY:
            self.mode = "dict"
            default_names = list(self.codec.items)
            param_schemas = list(self.codec.item_schemas().values())
        elif (isinstance(self.codec, _ArrayCodec) and not self.codec.scalar
              and 0 < len(self.codec.items) <= MAX_ARITY):
            self.mode = "list"
            default_names = [f"a{i}" for i in range(len(self.codec.items))]
            param_schemas = self.codec.item_schemas()
        else:
            self.mode = "single"
            default_names = ["action"]
            param_schemas = [schema]
        if param_names is not None:
            if len(param_names) != len(default_names):
                raise ValueError(f"{len(param_names)} parameter names given, the space needs "
                                 f"{len(default_names)} ({', '.join(default_names)})")
            if len(set(param_names)) != len(param_names):
                raise ValueError(f"parameter names must be distinct: {list(param_names)}")
        self.param_names: tuple[str, ...] = tuple(param_names or default_names)
        self._keys = default_names  # dict keys when mode == "dict"
        descs = dict(param_descriptions or {})
        props = {}
        for pname, ps in zip(self.param_names, param_schemas, strict=True):
            ps = dict(ps)
            if pname in descs:
                ps = {"description": descs[pname], **ps}
            props[pname] = ps
        self.name = name
        self.tool: dict[str, Any] = {
            "type": "function",
            "function": {
                "name": name,
                "description": description or f"Set the action ({type(space).__name__} space).",
                "parameters": {"type": "object", "properties": props,
                               "required": list(self.param_names)},
            },
        }
        self.spec: ToolSpec = normalize_tool(self.tool)

    def to_call(self, action: Any) -> Call:
        value = self.codec.encode(action)
        if self.mode == "dict":
            args = {p: value[k] for p, k in zip(self.param_names, self._keys, strict=True)}
        elif self.mode == "list":
            args = dict(zip(self.param_names, value, strict=True))
        else:
            args = {self.param_names[0]: value}
        return Call(self.name, args)

    def from_call(self, call: Call, *, clip: bool = True) -> Decoded:
        """The action a call asks for. Raises ``ActionError`` when it cannot be made valid."""
        if call.name != self.name:
            raise ActionError(f"unknown tool {call.name!r}; the tool is {self.name!r}")
        args = call.arguments
        extra = [k for k in args if k not in self.param_names]
        if extra:
            raise ActionError(f"{self.name} has no parameter(s) {extra}")
        missing = [p for p in self.param_names if p not in args]
        if missing:
            raise ActionError(f"{self.name}: missing argument(s) {missing}")
        if self.mode == "dict":
            value: Any = {k: args[p] for p, k in zip(self.param_names, self._keys, strict=True)}
        elif self.mode == "list":
            value = [args[p] for p in self.param_names]
        else:
            value = args[self.param_names[0]]
        where = self.name if self.mode == "single" else f"{self.name}"
        if self.mode == "list":
            # name the parameter, not the index, in error messages
            try:
                action, clipped = self.codec.decode(value, clip, where)
            except ActionError as exc:
                raise ActionError(_rename_index(str(exc), where, self.param_names)) from None
        elif self.mode == "single":
            action, clipped = self.codec.decode(value, clip, f"{self.name}.{self.param_names[0]}")
        else:
            action, clipped = self.codec.decode(value, clip, where)
        return Decoded(action, clipped, "clipped into range" if clipped else "")


def _rename_index(message: str, where: str, names: Sequence[str]) -> str:
    for i, n in enumerate(names):
        message = message.replace(f"{where}[{i}]", f"{where}.{n}")
    return message


def actions_equal(a: Any, b: Any) -> bool:
    """Exact equality of two actions of the same space (arrays, dicts, tuples, ints)."""
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(actions_equal(a[k], b[k]) for k in a)
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(map(actions_equal, a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a_arr, b_arr = np.asarray(a), np.asarray(b)
        return a_arr.shape == b_arr.shape and a_arr.dtype == b_arr.dtype and bool(np.array_equal(a_arr, b_arr))
    return bool(a == b)
