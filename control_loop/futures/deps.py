"""Futures as arguments: a whole argument value ``"@f17"`` names the result of call ``f17``.

Only whole values count (``"@f17"``, not ``"near @f17"``), so ordinary strings are never mistaken
for references (the LLMCompiler pitfall of regex over raw text).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tickcall.models.calls import Call

_REF = re.compile(r"@(f[1-9][0-9]*)")


def future_ref(value: Any) -> str | None:
    """``"@f17"`` -> ``"f17"``; anything else -> None."""
    if isinstance(value, str):
        m = _REF.fullmatch(value.strip())
        if m:
            return m.group(1)
    return None


def references(call: Call) -> list[str]:
    """The future ids a call's arguments name, in argument order, without duplicates."""
    out: list[str] = []
    for value in call.arguments.values():
        ref = future_ref(value)
        if ref is not None and ref not in out:
            out.append(ref)
    return out


def substitute(call: Call, results: Mapping[str, Any]) -> Call:
    """The call with each ``"@fN"`` argument replaced by ``results["fN"]``."""
    args = {}
    for name, value in call.arguments.items():
        ref = future_ref(value)
        args[name] = results[ref] if ref is not None else value
    return Call(call.name, args)
