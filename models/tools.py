"""Tool schemas: one normalised ``ToolSpec`` from the dialects users bring.

Accepted inputs
---------------
* OpenAI style: ``{"type": "function", "function": {"name", "description", "parameters"}}`` or the
  bare inner ``{"name", "description", "parameters"}``.
* The Berkeley Function Calling Leaderboard dialect: ``"type": "dict"`` (object), ``float`` (number),
  ``tuple`` (array), ``any`` (no type constraint), also ``int``/``bool``/``str``/``list``, and the
  Java and JavaScript type names of its ``simple_java``/``simple_javascript`` tools (``String``,
  ``long``, ``Array``, ``HashMap``, ...; table ``_BFCL_TYPES``). Java's ``byte``, ``short`` and ``char``
  also get their range/length as ``minimum``/``maximum``/``minLength``/``maxLength`` (where the
  schema sets none), so the value a head may carry is the value the Java method can take.
* Python callables with type hints and a docstring (Google-style ``Args:`` give parameter text).

Invariant: argument order is the insertion order of ``parameters.properties`` (never sorted, never
required-first). Head ``<argI>`` carries parameter ``param_names[I-1]``.
"""

from __future__ import annotations

import enum
import inspect
import json
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema

# Heads <arg1>..<arg6>: the public SimpleTool checkpoints' limit and the default. A model of ours may
# declare more (``max_heads`` in its tickcall.json, ``format.max_heads_of``); pass it as ``max_arity``.
MAX_ARITY = 6


class ToolSchemaError(ValueError):
    """A tool that cannot be offered to the model (bad schema, too many parameters, duplicates)."""


@dataclass(frozen=True)
class ToolSpec:
    """One tool, normalised.

    ``parameters`` is a standard JSON-schema object (BFCL types converted); ``rendered`` is the dict
    written into the prompt (``{"type": "function", "function": {...}}``), kept in the key order the
    user gave so the prompt matches the public checkpoints byte for byte.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    rendered: dict[str, Any] = field(compare=False)
    # The tool dict as the caller gave it (for a callable: the dict made from it). SimpleTool's HTTP servers write
    # this, not ``rendered``, into their prompts (``format.Template`` variants ``v1-server``/``v2-server``).
    source: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def properties(self) -> dict[str, Any]:
        return self.parameters.get("properties") or {}

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(self.properties)

    @property
    def arity(self) -> int:
        return len(self.properties)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(self.parameters.get("required") or ())

    def param_is_string(self, name: str) -> bool:
        """True when the parameter's value is written raw (not as JSON) in its head."""
        return self.properties.get(name, {}).get("type") == "string"


# --------------------------------------------------------------------------- BFCL dialect

# BFCL type name -> JSON-schema type. Java/JavaScript names describe the value, as BFCL's own checker
# reads them (its ground truth holds values, e.g. ``true`` for ``boolean``, ``{...}`` for ``HashMap``),
# not the Java/JS source text BFCL asks chat models to write for them.
_BFCL_TYPES = {
    # Python dialect
    "dict": "object",
    "float": "number",
    "tuple": "array",
    "int": "integer",
    "bool": "boolean",
    "str": "string",
    "list": "array",
    # Java (simple_java)
    "String": "string",
    "char": "string",
    "byte": "integer",
    "short": "integer",
    "long": "integer",
    "double": "number",
    "Array": "array",
    "ArrayList": "array",
    "Queue": "array",
    "Stack": "array",
    "HashMap": "object",
    "Hashtable": "object",
    # JavaScript (simple_javascript; "dict", "array", "float", "integer" as above)
    "Boolean": "boolean",
    "Bigint": "integer",
}
_BFCL_ANY = {"any", "Any"}  # no type constraint: the value may be anything JSON can carry
# Bounds a Java type implies; applied only where the schema gives none of its own. ``long`` gets none:
# its 64-bit range is wider than any value a head carries, and 19-digit bounds would only cost prompt.
_JAVA_BOUNDS: dict[str, dict[str, int]] = {
    "byte": {"minimum": -(2**7), "maximum": 2**7 - 1},
    "short": {"minimum": -(2**15), "maximum": 2**15 - 1},
    "char": {"minLength": 1, "maxLength": 1},
}
_JSON_TYPES = {"object", "number", "integer", "string", "boolean", "array", "null"}


def _convert_schema(schema: Any, where: str) -> tuple[Any, bool]:
    """Convert a BFCL-dialect schema to JSON schema. Returns (schema, changed)."""
    if not isinstance(schema, Mapping):
        return schema, False
    out: dict[str, Any] = {}
    changed = False
    for key, value in schema.items():
        if key == "type":
            types_in = value if isinstance(value, list) else [value]
            conv = []
            for t in types_in:
                if not isinstance(t, str):
                    raise ToolSchemaError(f"{where}: a type must be a string, got {_short(t)}")
                if t in _BFCL_ANY:
                    changed = True
                    continue
                if t in _BFCL_TYPES:
                    conv.append(_BFCL_TYPES[t])
                    changed = True
                    for bound, limit in _JAVA_BOUNDS.get(t, {}).items():
                        if bound not in schema:
                            out[bound] = limit
                elif t in _JSON_TYPES:
                    conv.append(t)
                else:
                    raise ToolSchemaError(f"{where}: unsupported parameter type {t!r}")
            if conv:
                out["type"] = conv if isinstance(value, list) else conv[0]
            continue
        if key == "properties" and isinstance(value, Mapping):
            props = {}
            for pname, pschema in value.items():
                props[pname], ch = _convert_schema(pschema, f"{where}.{pname}")
                changed |= ch
            out[key] = props
            continue
        if key in ("items", "additionalProperties") and isinstance(value, Mapping):
            out[key], ch = _convert_schema(value, f"{where}[]")
            changed |= ch
            continue
        if key == "items" and isinstance(value, list):  # tuple form: one schema per position
            conv_items = []
            for i, s in enumerate(value):
                c, ch = _convert_schema(s, f"{where}[{i}]")
                conv_items.append(c)
                changed |= ch
            out[key] = conv_items
            continue
        if key in ("anyOf", "oneOf") and isinstance(value, list):
            conv_list = []
            for i, s in enumerate(value):
                c, ch = _convert_schema(s, f"{where}|{i}")
                conv_list.append(c)
                changed |= ch
            out[key] = conv_list
            continue
        out[key] = value
    return out, changed


# --------------------------------------------------------------------------- callables

_PY_TYPES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    tuple: "array",
    dict: "object",
    type(None): "null",
}


def _annotation_schema(ann: Any, where: str) -> dict[str, Any]:
    if ann is inspect.Parameter.empty or ann is Any:
        return {}
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is typing.Literal:
        values = list(args)
        kinds = {type(v) for v in values}
        schema: dict[str, Any] = {"enum": values}
        if len(kinds) == 1 and next(iter(kinds)) in _PY_TYPES:
            schema = {"type": _PY_TYPES[next(iter(kinds))], "enum": values}
        return schema
    if origin in (typing.Union, types.UnionType):
        non_null = [a for a in args if a is not type(None)]
        if len(non_null) == 1:
            inner = _annotation_schema(non_null[0], where)
            if len(non_null) < len(args) and "type" in inner:
                inner = {**inner, "type": [inner["type"], "null"]}
            return inner
        return {"anyOf": [_annotation_schema(a, where) for a in args]}
    if origin in (list, tuple, Sequence):
        schema = {"type": "array"}
        if args and args[-1] is not Ellipsis and origin is list:
            schema["items"] = _annotation_schema(args[0], where)
        return schema
    if origin in (dict, Mapping):
        return {"type": "object"}
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        return {"type": "string", "enum": [m.value for m in ann]}
    if ann in _PY_TYPES:
        return {"type": _PY_TYPES[ann]}
    raise ToolSchemaError(f"{where}: cannot express type {ann!r} as JSON schema")


_ARGS_RE = re.compile(r"^\s*(?:Args|Arguments|Parameters):\s*$", re.M)


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    doc = inspect.cleandoc(doc or "")
    m = _ARGS_RE.search(doc)
    if not m:
        return doc.split("\n\n")[0].strip(), {}
    head = doc[: m.start()].strip().split("\n\n")[0].strip()
    params: dict[str, str] = {}
    current = None
    for line in doc[m.end() :].splitlines():
        if not line.strip():
            if params:
                break
            continue
        pm = re.match(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", line)
        if pm and (current is None or len(line) - len(line.lstrip()) <= 4):
            current = pm.group(1)
            params[current] = pm.group(2).strip()
        elif current:
            params[current] = (params[current] + " " + line.strip()).strip()
    return head, params


def tool_from_callable(fn: Callable[..., Any]) -> dict[str, Any]:
    """OpenAI-style tool dict from a Python function's signature, type hints and docstring."""
    name = fn.__name__
    description, param_docs = _parse_docstring(fn.__doc__ or "")
    hints = typing.get_type_hints(fn)
    props: dict[str, Any] = {}
    required: list[str] = []
    for pname, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolSchemaError(f"tool {name}: *args/**kwargs cannot be offered as parameters")
        schema = dict(_annotation_schema(hints.get(pname, param.annotation), f"{name}.{pname}"))
        if pname in param_docs:
            schema["description"] = param_docs[pname]
        if param.default is param.empty:
            required.append(pname)
        elif param.default is not None:
            schema["default"] = param.default
        props[pname] = schema
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": props, "required": required},
        },
    }


# --------------------------------------------------------------------------- normalisation


def normalize_tool(tool: Any) -> ToolSpec:
    """One ``ToolSpec`` from an OpenAI/BFCL dict, a bare function dict, a ToolSpec or a callable."""
    if isinstance(tool, ToolSpec):
        return tool
    if callable(tool) and not isinstance(tool, Mapping):
        tool = tool_from_callable(tool)
    if not isinstance(tool, Mapping):
        raise ToolSchemaError(f"a tool must be a dict or a callable, got {type(tool).__name__}")
    wrapped = tool.get("type") == "function" and isinstance(tool.get("function"), Mapping)
    fn = tool["function"] if wrapped else tool
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        # default=repr: an error message must not fail on a value JSON cannot show (bytes from msgpack)
        raise ToolSchemaError(f"tool without a name: {json.dumps(tool, default=repr)[:200]}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", name):
        raise ToolSchemaError(f"tool {name!r}: names must be identifiers (letters, digits, _ . -)")
    params = fn.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    if not isinstance(params, Mapping):
        raise ToolSchemaError(f"tool {name}: parameters must be a JSON-schema object")
    params, changed = _convert_schema(params, name)
    props = params.get("properties") or {}
    if not isinstance(props, Mapping):
        raise ToolSchemaError(f"tool {name}: parameters.properties must be an object")
    check_parameters(name, params)
    for req in params.get("required") or ():
        if req not in props:
            raise ToolSchemaError(f"tool {name}: required parameter {req!r} is not in properties")
    if changed:
        inner = {k: v for k, v in fn.items() if k != "parameters"}
        inner["parameters"] = params
        rendered = {"type": "function", "function": inner}
    else:
        rendered = dict(tool) if wrapped else {"type": "function", "function": dict(fn)}
    return ToolSpec(
        name=name, description=str(fn.get("description") or ""), parameters=dict(params), rendered=rendered,
        source=dict(tool),
    )


def normalize_tools(tools: Sequence[Any], *, max_arity: int = MAX_ARITY) -> list[ToolSpec]:
    """Normalise a tool list; refuse duplicates and tools with more than ``max_arity`` parameters."""
    specs = [normalize_tool(t) for t in tools]
    if not specs:
        raise ToolSchemaError("no tools given: at least one tool is needed")
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ToolSchemaError(f"tool {spec.name!r} is defined twice")
        seen.add(spec.name)
        if spec.arity > max_arity:
            raise ToolSchemaError(
                f"tool {spec.name!r} has {spec.arity} parameters ({', '.join(spec.param_names)}); "
                f"this model's heads carry at most {max_arity} arguments (<arg1>..<arg{max_arity}>; "
                "the public SimpleTool checkpoints have 6). Split the tool, group parameters into an "
                "object parameter, or train a model with more heads (max_heads in the training config's "
                "model section, recorded in its tickcall.json) and serve that one."
            )
    return specs


# --------------------------------------------------------------------------- schema checks
# A schema accepted here reaches the engine and the argument validator, which assume it is sound: a bad
# one must be refused now as a ToolSchemaError (``illegal_tools``), not crash there (``engine_failure``).

_SUBSCHEMA_KEYS = ("items", "additionalProperties", "not")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "items")
_BOUNDS = (
    ("minimum", "maximum"),
    ("exclusiveMinimum", "exclusiveMaximum"),
    ("minLength", "maxLength"),
    ("minItems", "maxItems"),
    ("minProperties", "maxProperties"),
)
_LINE_BREAKS = re.compile(r"[\r\n\v\f\x85\u2028\u2029]")


def check_parameters(tool: str, params: Mapping[str, Any]) -> None:
    """Refuse a parameters schema SimpleTool cannot offer. Raises ToolSchemaError naming what is wrong.

    Our rules come first (clearer messages, and they cover what the metaschema allows: ``enum: []``,
    NaN bounds, minimum above maximum, names that break a head); then the JSON-schema metaschema."""
    for pname, pschema in (params.get("properties") or {}).items():
        where = f"tool {tool!r}, parameter {pname!r}"
        if not isinstance(pname, str) or not pname.strip():
            raise ToolSchemaError(f"tool {tool!r}: parameter name {pname!r} is empty; heads need a name")
        if _LINE_BREAKS.search(pname):
            raise ToolSchemaError(f"{where}: a parameter name must be a single line (no line breaks)")
        _check_finite(pschema, where)
        _check_subschema(pschema, where)
    _check_finite(params, f"tool {tool!r}", "parameters")
    _check_metaschema(tool, params)


def _check_subschema(schema: Any, where: str) -> None:
    """Our rules on one (sub)schema and, recursively, the schemas inside it."""
    if not isinstance(schema, Mapping):
        raise ToolSchemaError(f"{where}: the schema must be an object, got {_short(schema)}")
    if "enum" in schema and (not isinstance(schema["enum"], list) or not schema["enum"]):
        raise ToolSchemaError(
            f"{where}: enum must be a non-empty list of values, got {_short(schema['enum'])}"
        )
    for low, high in _BOUNDS:
        lo, hi = schema.get(low), schema.get(high)
        if _is_number(lo) and _is_number(hi) and lo > hi:
            raise ToolSchemaError(f"{where}: {low} {lo} is above {high} {hi}; no value can satisfy both")
    for key in _SUBSCHEMA_KEYS:
        if isinstance(schema.get(key), Mapping):
            _check_subschema(schema[key], f"{where}.{key}")
    for key in _SUBSCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            for i, sub in enumerate(schema[key]):
                _check_subschema(sub, f"{where}.{key}[{i}]")
    if isinstance(schema.get("properties"), Mapping):
        for key, sub in schema["properties"].items():
            _check_subschema(sub, f"{where}.{key}")


def _check_finite(value: Any, where: str, path: str = "") -> None:
    """NaN and infinity are not JSON: they would break the prompt and every comparison against them."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolSchemaError(f"{where}: {path.lstrip('.') or 'value'} is {value}, not a finite number")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_finite(item, where, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_finite(item, where, f"{path}[{i}]")


def _check_metaschema(tool: str, params: Mapping[str, Any]) -> None:
    """Draft 7 unless ``$schema`` names another: it keeps the tuple form of ``items`` BFCL tools use."""
    cls = jsonschema.validators.validator_for(params, default=jsonschema.Draft7Validator)
    try:
        cls.check_schema(params)
    except jsonschema.SchemaError as exc:
        at = list(exc.absolute_path)
        path = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in at)
        param = f", parameter {at[1]!r}" if len(at) > 1 and at[0] == "properties" else ""
        raise ToolSchemaError(
            f"tool {tool!r}{param}: invalid JSON schema at parameters{path}: {exc.message}"
        ) from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --------------------------------------------------------------------------- validation


def _type_ok(value: Any, t: str) -> bool:
    if t == "string":
        return isinstance(value, str)
    if t == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if t == "number":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "array":
        return isinstance(value, list)
    if t == "object":
        return isinstance(value, dict)
    if t == "null":
        return value is None
    return True


def validate_value(value: Any, schema: Mapping[str, Any], where: str = "value") -> str | None:
    """Check ``value`` against a JSON-schema subset. Returns None when valid, else the reason.

    Covers: type (or list of types), enum, const, minimum/maximum (and exclusive), multipleOf,
    string length/pattern, array items/length/uniqueItems, object
    properties/required/additionalProperties, anyOf/oneOf.
    """
    if not schema:
        return None
    if "anyOf" in schema or "oneOf" in schema:
        options = schema.get("anyOf") or schema.get("oneOf")
        if not any(validate_value(value, s, where) is None for s in options):
            return f"{where}={_short(value)} matches none of the allowed forms"
    t = schema.get("type")
    if t is not None:
        allowed = t if isinstance(t, list) else [t]
        if not any(_type_ok(value, a) for a in allowed):
            return f"{where}={_short(value)} is not of type {'/'.join(allowed)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where}={_short(value)} is not one of {schema['enum']}"
    if "const" in schema and value != schema["const"]:
        return f"{where}={_short(value)} must be {schema['const']!r}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{where}={value} is below the minimum {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{where}={value} is above the maximum {schema['maximum']}"
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            return f"{where}={value} must be > {schema['exclusiveMinimum']}"
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            return f"{where}={value} must be < {schema['exclusiveMaximum']}"
        step = schema.get("multipleOf")
        if _is_number(step) and step > 0 and abs(value / step - round(value / step)) > 1e-9:
            return f"{where}={value} is not a multiple of {step}"
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            return f"{where} is shorter than {schema['minLength']} characters"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return f"{where} is longer than {schema['maxLength']} characters"
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return f"{where}={_short(value)} does not match {schema['pattern']!r}"
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            return f"{where} has fewer than {schema['minItems']} items"
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            return f"{where} has more than {schema['maxItems']} items"
        if schema.get("uniqueItems") and len({json.dumps(v, sort_keys=True) for v in value}) < len(value):
            return f"{where} has repeated items (uniqueItems)"
        items = schema.get("items")
        if isinstance(items, Mapping):
            for i, item in enumerate(value):
                err = validate_value(item, items, f"{where}[{i}]")
                if err:
                    return err
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for req in schema.get("required") or ():
            if req not in value:
                return f"{where} lacks required key {req!r}"
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                err = validate_value(item, props[key], f"{where}.{key}")
                if err:
                    return err
            elif extra is False:
                return f"{where} has unexpected key {key!r}"
            elif isinstance(extra, Mapping):
                err = validate_value(item, extra, f"{where}.{key}")
                if err:
                    return err
    return None


def validate_arguments(
    spec: ToolSpec, arguments: Mapping[str, Any], present: frozenset[str] = frozenset()
) -> str | None:
    """Validate a call's arguments against its tool. Returns None when legal, else the reason.

    ``present``: parameters given but not checkable yet (future references), counted as supplied."""
    for name in arguments:
        if name not in spec.properties:
            return f"{spec.name} has no parameter {name!r}"
    for req in spec.required:
        if req not in arguments and req not in present:
            return f"{spec.name}: required argument {req!r} is missing"
    for name, value in arguments.items():
        err = validate_value(value, spec.properties[name], f"{spec.name}.{name}")
        if err:
            return err
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
