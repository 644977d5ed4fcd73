"""Assembly: decoded head texts -> a typed, validated call (or an illegal one, with a reason).

Two modes (``ASSEMBLY_MODES``); ``strict`` is the default and the SimpleTool format's own rules
(docs/simpletool-format.md, "From heads to a call"):

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

``lenient`` reads head texts as SimpleTool's reference server (``rt_server.py``) does, for users
moving over from its demos (``tickcall.models.lenient`` states the server's rules), then validates
exactly as strict does: a lenient call is legal only if ``validate_arguments`` passes it.

=========================  ==================================  ==========================================
step                       strict                              lenient
=========================  ==================================  ==========================================
head text                  as decoded                          trimmed; one trailing stop marker
                                                               (``</argN>``, ``<|null|>``, ...) cut
omitted slot               empty or ``<|null|>``               the same after trimming (so whitespace-only
                           (whitespace-only is a value)        text is omitted too)
``<function>``             trimmed; must be offered            cleaned; must be offered (the server does
                                                               not check it)
slot -> parameter          i-th parameter of the chosen tool   the same (the server takes the i-th name
                                                               of the union of all tools' parameters)
slot beyond arity          illegal                             ignored
digits only                as other text (``007``: not JSON)   ``int`` (``007`` -> 7)
``-``, digits, one ``.``   as other text (``.5``: not JSON)    ``float`` (``-3`` -> -3.0, ``.5`` -> 0.5)
other text                 string param: raw text;             lowercased string
                           else strict JSON
reading refused by         illegal                             next reading the parameter's schema
the parameter's                                                admits: the trimmed text as a string
schema                                                         (case kept), strict JSON of the text, of
                                                               the lowercased text (``True``), an enum
                                                               member equal ignoring case; none: illegal
                                                               with the server reading's reason
``@fN`` (futures)          as allowed                          the same, after trimming
unfinished head            illegal                             illegal (the server uses the cut text)
validation                 ``validate_arguments``              the same, on the read values
=========================  ==================================  ==========================================

Consequences: a call strict accepts is accepted by lenient too, unless a string value needs its
surrounding whitespace (or a trailing stop marker), or is whitespace only; the values may differ where
the schema admits both readings (an untyped parameter keeps the server's lowercased string). Lenient
accepts what strict refuses only by reading text differently, never by skipping the schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tickcall.models.calls import Call
from tickcall.models.format import NULL
from tickcall.models.lenient import clean_text, is_omitted, server_value
from tickcall.models.tools import ToolSpec, validate_arguments, validate_value

AssemblyMode = Literal["strict", "lenient"]
ASSEMBLY_MODES: tuple[AssemblyMode, ...] = ("strict", "lenient")


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


_UNREADABLE = object()


def _json_or_unreadable(text: str) -> Any:
    try:
        return parse_json_strict(text)
    except (ValueError, RecursionError):  # _StrictJSONError is a ValueError; depth is model output too
        return _UNREADABLE


def _lenient_readings(clean: str, schema: Mapping[str, Any]) -> Iterator[Any]:
    """The readings of one cleaned slot text, the server's first (table above, last rows)."""
    yield server_value(clean)
    yield clean
    for text in (clean, clean.lower()):
        parsed = _json_or_unreadable(text)
        if parsed is not _UNREADABLE:
            yield parsed
    for member in schema.get("enum") or ():
        if isinstance(member, str) and member.lower() == clean.lower():
            yield member


def lenient_value(clean: str, schema: Mapping[str, Any]) -> Any:
    """The first reading of ``clean`` that ``schema`` admits, else the server's (validation says why)."""
    for reading in _lenient_readings(clean, schema):
        if validate_value(reading, schema) is None:
            return reading
    return server_value(clean)


def assemble(
    heads: Mapping[str, str],
    tools: Mapping[str, ToolSpec],
    unfinished: frozenset[str] | set[str] = frozenset(),
    allow_future_refs: bool = False,
    mode: AssemblyMode = "strict",
) -> Assembled:
    """Heads (``{"function": ..., "arg1": ...}``) -> :class:`Assembled`. Never raises on model output.

    ``mode``: ``"strict"`` (default) or ``"lenient"`` (module docstring). An unknown mode is a
    programming error: ValueError."""
    if mode not in ASSEMBLY_MODES:
        raise ValueError(f"unknown assembly mode {mode!r}; choose from {', '.join(ASSEMBLY_MODES)}")
    lenient = mode == "lenient"
    raw = dict(heads)
    if unfinished:
        names = ", ".join(sorted(unfinished))
        return Assembled(None, False, f"head(s) {names} did not stop within the token budget", raw)
    fn_text = heads.get("function") or ""
    name = clean_text(fn_text) if lenient else fn_text.strip()
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
        if lenient:
            text = clean_text(text)
            if is_omitted(text) or i >= len(params):  # the server never reads a slot past the arity
                continue
        elif is_null_text(text):
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
        if lenient:
            arguments[pname] = lenient_value(text, tool.properties[pname])
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
