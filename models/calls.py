"""A function call as data, and its one-line rendering for the SimpleTool ``history:`` line."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Call:
    """One function call: a tool name and its arguments (keys in the tool's parameter order)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": dict(self.arguments)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Call:
        return cls(name=str(data["name"]), arguments=dict(data.get("arguments") or {}))


def render_call(call: Call, param_order: tuple[str, ...] | None = None) -> str:
    """``name(p="text", n=1)``: parameters in schema order, strings quoted, other values as JSON.

    This is the history-item format of the public SimpleTool checkpoints.
    """
    names = list(param_order) if param_order else list(call.arguments)
    names += [n for n in call.arguments if n not in names]
    parts = []
    for name in names:
        if name not in call.arguments:
            continue
        value = call.arguments[name]
        parts.append(f"{name}={json.dumps(value, ensure_ascii=False)}")
    return f"{call.name}({', '.join(parts)})"
