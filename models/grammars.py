"""Head grammars: what each SimpleTool head may legally produce, built from the registered schemas.

A grammar describes a head's *text* (its tokens before the stop token). The stop tokens are not in
the grammar: the backends pass them as the grammar's stop tokens (the head's closing tag, and
``<|null|>`` only where the head may be omitted), so they are allowed exactly when the text so far
is a complete sentence, and only as the real special token, never spelled out in characters.

* ``<function>``: one of the registered tool names; the empty text (no call) only where the
  registration allows it.
* ``<argI>`` for one tool: the value of that tool's I-th parameter; the empty text (the head stops
  at once: omitted) where the parameter is optional, and only that where the tool has fewer than I
  parameters. ``type: "string"`` parameters are raw text (enum members as literals, ``pattern`` as
  a regex, ``minLength``/``maxLength`` as a repeat count, otherwise one or more characters); every
  other parameter is JSON under its schema (xgrammar's JSON-schema converter: ranges, ``multipleOf``
  for integers, enums, arrays, objects; objects get no undeclared keys).
* ``<argI>`` before the function head has resolved: the union over the tools of the above.

Where a schema feature has no grammar form (a regex xgrammar cannot parse, a JSON schema it refuses)
the grammar falls back to the plain type and ``HeadGrammars.weaker`` names the spot: assembly still
validates the value, so such a call can be illegal, never silently accepted.

Grammars are xgrammar ``Grammar`` objects; ``str(grammar)`` is the EBNF text the vLLM backend hands to
vLLM's structured outputs, so both backends decode under the same grammar.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import xgrammar as xgr
from tickcall.models.tools import ToolSpec

FUNCTION_HEAD = "function"


def literal(text: str) -> str:
    """An EBNF string literal for ``text`` (JSON escapes, which xgrammar's EBNF reads)."""
    return json.dumps(text, ensure_ascii=False)


def literals(texts: Sequence[str]) -> xgr.Grammar:
    """A grammar matching exactly one of ``texts``."""
    return xgr.Grammar.from_ebnf("root ::= " + " | ".join(literal(t) for t in texts))




def _regex_for_string(schema: Mapping[str, Any]) -> str:
    """A full-match regex for a raw string under ``pattern`` or length limits (JSON-schema ``pattern``
    is a search: unanchored sides may hold any text)."""
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        head = pattern[1:] if pattern.startswith("^") else pattern
        anchored_end = head.endswith("$") and not head.endswith("\\$")
        body = head[:-1] if anchored_end else head
        left = "" if pattern.startswith("^") else "[\\s\\S]*"
        right = "" if anchored_end else "[\\s\\S]*"
        return f"{left}(?:{body}){right}" if (left or right) else body
    lo = max(1, int(schema.get("minLength", 1)))
    hi = schema.get("maxLength")
    if hi is not None:
        return f"[\\s\\S]{{{lo},{int(hi)}}}"
    return f"[\\s\\S]{{{lo},}}"


def string_literals(schema: Mapping[str, Any]) -> list[str] | None:
    """The texts a ``type: "string"`` parameter's ``enum``/``const`` allows (non-empty strings), or
    None where it names none (then the parameter is a pattern or free text)."""
    options = schema.get("enum")
    if options is None and "const" in schema:
        options = [schema["const"]]
    if options is None:
        return None
    return [o for o in options if isinstance(o, str) and o] or None


def string_value(schema: Mapping[str, Any], where: str, weaker: list[str]) -> xgr.Grammar:
    """The raw text of a ``type: "string"`` parameter."""
    texts = string_literals(schema)
    if texts:
        return literals(texts)
    if "enum" in schema or "const" in schema:
        weaker.append(f"{where}: no non-empty string among enum/const")
    try:
        return xgr.Grammar.from_regex(_regex_for_string(schema))
    except Exception as exc:  # xgrammar's regex subset (no look-arounds, no back-references)
        weaker.append(f"{where}: pattern {schema.get('pattern')!r} has no grammar form ({exc}); any text")
        return xgr.Grammar.from_regex("[\\s\\S]+")


NUMBER_LIMIT = 1e15  # implicit bound of an unbounded ``number``: see ``bounded_numbers``


def bounded_numbers(schema: Any) -> Any:
    """``schema`` with every ``number`` that lacks a bound given one (+-1e15). xgrammar writes a bounded
    number without an exponent; an unbounded one may take any exponent, and ``1e999`` parses to
    infinity, which no ``number`` accepts. Every finite value a user would send is still allowed."""
    if isinstance(schema, list):
        return [bounded_numbers(s) for s in schema]
    if not isinstance(schema, Mapping):
        return schema
    out = {k: bounded_numbers(v) for k, v in schema.items()}
    t = schema.get("type")
    if t == "number" or (isinstance(t, list) and "number" in t):
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -NUMBER_LIMIT
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = NUMBER_LIMIT
    return out


MAX_ENUMERATED = 256  # a number with multipleOf in a range of at most this many values becomes an enum


def _plain(x: float) -> int | float:
    """1.0 -> 1 (the shorter JSON a model writes), 0.5 stays."""
    return int(x) if float(x).is_integer() else x


def enumerate_multiples(schema: Any, where: str, weaker: list[str]) -> Any:
    """``schema`` with each bounded ``number`` that has ``multipleOf`` (xgrammar enforces it for integers
    only) written as the enum of its values; an unbounded or too wide one is noted in ``weaker``.
    ``uniqueItems`` and ``format`` have no grammar form either: noted."""
    if isinstance(schema, list):
        return [enumerate_multiples(s, where, weaker) for s in schema]
    if not isinstance(schema, Mapping):
        return schema
    out = {k: enumerate_multiples(v, where, weaker) for k, v in schema.items()}
    if schema.get("uniqueItems"):
        weaker.append(f"{where}: uniqueItems is checked by assembly only")
    if "format" in schema:
        weaker.append(f"{where}: format {schema['format']!r} is not in the grammar")
    step, lo, hi = schema.get("multipleOf"), schema.get("minimum"), schema.get("maximum")
    if schema.get("type") == "number" and isinstance(step, int | float) and step > 0:
        if isinstance(lo, int | float) and isinstance(hi, int | float) and (hi - lo) / step <= MAX_ENUMERATED:
            first = math.ceil(lo / step - 1e-9)
            values = [_plain(round(k * step, 12)) for k in range(first, math.floor(hi / step + 1e-9) + 1)]
            if values:
                return {"enum": values}
        weaker.append(f"{where}: multipleOf {step} of an unbounded or wide number is checked by assembly only")
    return out


def json_value(schema: Mapping[str, Any], where: str, weaker: list[str]) -> xgr.Grammar:
    """The JSON text of a non-string parameter (at most 2 whitespace characters in a row)."""
    try:
        prepared = bounded_numbers(enumerate_multiples(dict(schema), where, weaker))
        return xgr.Grammar.from_json_schema(prepared, any_whitespace=True, max_whitespace_cnt=2)
    except Exception as exc:
        weaker.append(f"{where}: schema has no grammar form ({exc}); any JSON value")
        return xgr.Grammar.from_json_schema({}, any_whitespace=True, max_whitespace_cnt=2)


def param_value(tool: ToolSpec, index: int, weaker: list[str]) -> xgr.Grammar:
    """The text of ``tool``'s parameter at ``index`` (0-based), without tags."""
    name = tool.param_names[index]
    schema = tool.properties[name]
    where = f"{tool.name}.{name}"
    return string_value(schema, where, weaker) if tool.param_is_string(name) else json_value(schema, where, weaker)


@dataclass
class SlotRule:
    """What one argument slot of one tool allows: a value grammar and/or ``<|null|>``. ``texts``: every
    value text it allows where that is a finite set of literals (a string enum), else None."""

    value: xgr.Grammar | None  # None: the tool has no parameter at this slot
    nullable: bool
    texts: frozenset[str] | None = frozenset()


def slot_rule(tool: ToolSpec, index: int, weaker: list[str]) -> SlotRule:
    if index >= tool.arity:
        return SlotRule(None, True)
    name = tool.param_names[index]
    texts = string_literals(tool.properties[name]) if tool.param_is_string(name) else None
    return SlotRule(param_value(tool, index, weaker), name not in tool.required,
                    frozenset(texts) if texts else None)


EMPTY = "root ::= \"\""


@dataclass(frozen=True)
class HeadRule:
    """A head's grammar and whether it may be omitted (then its grammar holds the empty text and
    ``<|null|>`` is one of its stop tokens). ``texts``: the non-empty texts the grammar allows where
    they are a finite set of literals (tool names, string enums), else None (see
    ``models.constrain``'s canonical literals)."""

    grammar: xgr.Grammar
    nullable: bool
    texts: frozenset[str] | None = None


def head_rule(rules: Sequence[SlotRule]) -> HeadRule:
    """The union of ``rules``: any of their values, or nothing where one of them may be omitted."""
    values = [r.value for r in rules if r.value is not None]
    nullable = any(r.nullable for r in rules)
    alternatives = ([xgr.Grammar.from_ebnf(EMPTY)] if nullable else []) + values
    grammar = alternatives[0] if len(alternatives) == 1 else xgr.Grammar.union(*alternatives)
    finite = all(r.texts is not None for r in rules if r.value is not None)
    texts = frozenset().union(*(r.texts or () for r in rules)) if finite else None
    return HeadRule(grammar, nullable, texts)


def function_rule(tools: Sequence[ToolSpec], allow_no_call: bool) -> HeadRule:
    names = literals([t.name for t in tools])
    return HeadRule(xgr.Grammar.union(xgr.Grammar.from_ebnf(EMPTY), names) if allow_no_call else names,
                    allow_no_call, frozenset(t.name for t in tools))


@dataclass
class HeadGrammars:
    """Every head rule a registration needs, built once.

    ``start[head]``: the rule a head decodes under from its first token (for an argument head, the
    union over all tools). ``chosen[(tool, head)]``: the argument head's rule once the function
    head has chosen ``tool``. ``weaker``: schema spots enforced by assembly only (see module doc)."""

    start: dict[str, HeadRule]
    chosen: dict[tuple[str, str], HeadRule]
    weaker: list[str] = field(default_factory=list)


def build_head_grammars(tools: Sequence[ToolSpec], heads: Sequence[str],
                        allow_no_call: bool = False) -> HeadGrammars:
    """Rules for ``heads`` (``function``, ``arg1``..) over ``tools``."""
    weaker: list[str] = []
    start = {FUNCTION_HEAD: function_rule(tools, allow_no_call)}
    chosen: dict[tuple[str, str], HeadRule] = {}
    for head in heads[1:]:
        index = int(head[3:]) - 1
        rules = {t.name: slot_rule(t, index, weaker) for t in tools}
        start[head] = head_rule(list(rules.values()))
        for name, rule in rules.items():
            chosen[(name, head)] = head_rule([rule])
    return HeadGrammars(start=start, chosen=chosen, weaker=sorted(set(weaker)))
