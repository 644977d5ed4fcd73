"""Strict assembly: decoded head texts -> a typed, validated call (or an illegal one, with a reason).

Rules (docs/simpletool-format.md, "From heads to a call"):

* ``function`` must name an offered tool (surrounding whitespace is ignored, nothing else).
* ``argI`` carries the I-th key of the tool's ``parameters.properties`` in insertion order.
* ``<|null|>`` or empty text means "omitted"; JSON ``null`` is an explicit null.
* ``type: "string"`` parameters take the raw text; everything else must parse as strict JSON
  (no NaN/Infinity, no duplicate keys).
* Slots beyond the tool's arity must be null. Arguments are validated against the schema; a missing
  required argument is illegal, never silently defaulted.
* A head that did not finish (no stop token within its token budget) makes the call illegal.
* With ``allow_future_refs``, a whole argument ``@fN`` names the future of an earlier call (AsyncFC):
  it is kept as the string ``"@fN"`` for any parameter type and validated after the futures layer
  substitutes the result (off by default: strict SimpleTool rules).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tickcall.models.calls import Call
from tickcall.models.format import NULL
from tickcall.models.tools import ToolSpec, validate_arguments


@dataclass
class Assembled:
    """The outcome of assembly. ``call`` is set even when illegal (as far as it could be parsed)."""

    call: Call | None
    legal: bool
    reason: str
    heads: dict[str, str] = field(default_factory=dict)


class _StrictJSONError(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _StrictJSONError(f"{name} is not allowed")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _StrictJSONError(f"duplicate key {k!r}")
        out[k] = v
    return out


def parse_json_strict(text: str) -> Any:
    """json.loads without NaN/Infinity and without duplicate keys."""
    return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)


def is_null_text(text: str | None) -> bool:
    """Omitted: no text, empty text, or the ``<|null|>`` token (a whitespace-only string is a value)."""
    return text is None or text == "" or text.strip() == NULL


FUTURE_REF = re.compile(r"@f\d+")


def assemble(
    heads: Mapping[str, str],
    tools: Mapping[str, ToolSpec],
    unfinished: frozenset[str] | set[str] = frozenset(),
    allow_future_refs: bool = False,
) -> Assembled:
    """Heads (``{"function": ..., "arg1": ...}``) -> :class:`Assembled`. Never raises on model output."""
    raw = dict(heads)
    if unfinished:
        names = ", ".join(sorted(unfinished))
        return Assembled(None, False, f"head(s) {names} did not stop within the token budget", raw)
    name = (heads.get("function") or "").strip()
    if not name or name == NULL:
        return Assembled(None, False, "no function was chosen (<function> head is null)", raw)
    tool = tools.get(name)
    if tool is None:
        return Assembled(None, False, f"unknown function {name!r}; offered: {', '.join(tools)}", raw)

    arguments: dict[str, Any] = {}
    futures: set[str] = set()  # parameters given as "@fN" (validated once the future resolves)
    params = tool.param_names
    slot_heads = sorted((h for h in heads if h.startswith("arg")), key=lambda h: int(h[3:]))
    for head in slot_heads:
        i = int(head[3:]) - 1
        text = heads[head]
        if is_null_text(text):
            continue
        if i >= len(params):
            return Assembled(
                Call(name, arguments),
                False,
                f"{head} is set ({text[:40]!r}) but {name} takes {len(params)} parameter(s)",
                raw,
            )
        pname = params[i]
        if allow_future_refs and FUTURE_REF.fullmatch(text.strip()):
            arguments[pname] = text.strip()
            futures.add(pname)
            continue
        if tool.param_is_string(pname):
            arguments[pname] = text
            continue
        try:
            arguments[pname] = parse_json_strict(text)
        except (ValueError, _StrictJSONError) as exc:
            return Assembled(
                Call(name, arguments),
                False,
                f"{name}.{pname} ({head}) is not valid JSON: {text[:40]!r} ({exc})",
                raw,
            )
    ordered = {p: arguments[p] for p in params if p in arguments}
    call = Call(name, ordered)
    err = validate_arguments(
        tool, {k: v for k, v in ordered.items() if k not in futures}, present=frozenset(futures)
    )
    if err:
        return Assembled(call, False, err, raw)
    return Assembled(call, True, "ok", raw)
