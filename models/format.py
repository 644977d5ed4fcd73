"""The SimpleTool format: special tokens, prompt templates, heads, and value encoding.

Byte-for-byte compatible with the public SimpleTool checkpoints (see docs/simpletool-format.md):

* 17 added tokens, each a single id: ``<content> </content> <function> </function>
  <arg1> </arg1> ... <arg6> </arg6> <|null|>``; chat tokens ``<|im_start|>``/``<|im_end|>``.
  The public checkpoints have 6 argument heads; a model of ours may declare more (``max_heads`` in
  its folder's ``tickcall.json``): ``head_names(n)`` and ``special_tokens(n)`` (``2n + 5`` tokens)
  give its heads and added tokens, the same names and order extended.
* A prompt is split into a **static prefix** (system turn with the tools; identical every tick, its KV
  cache is kept) and a **per-tick suffix** (user turn + ``<|im_start|>assistant\\n``).
* A head is prompt + one opening tag (``<function>``, ``<arg1>``..``<argN>``), decoded greedily until
  the closing tag, ``<|null|>`` or ``<|im_end|>``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tickcall.models.calls import Call
from tickcall.models.tools import MAX_ARITY, ToolSpec

NULL = "<|null|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
MAX_HEADS_LIMIT = 64  # argument heads a model may declare: each one is a decode row on every tick


def check_max_heads(n: Any) -> int:
    """``n`` as a number of argument heads (1..MAX_HEADS_LIMIT), else ValueError saying why."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_HEADS_LIMIT:
        raise ValueError(f"max_heads must be an integer from 1 to {MAX_HEADS_LIMIT}, got {n!r}")
    return n


def max_heads_of(meta: Mapping[str, Any] | None) -> int:
    """Argument heads of a model from its ``tickcall.json`` contents: ``max_heads``, else 6 (the
    public SimpleTool checkpoints, trained for ``<arg1>``..``<arg6>``). ValueError when invalid."""
    if not meta or meta.get("max_heads") is None:
        return MAX_ARITY
    return check_max_heads(meta["max_heads"])


def max_heads_meta(n: int) -> dict[str, int]:
    """The ``tickcall.json`` entry a model with ``n`` argument heads writes (the inverse of
    ``max_heads_of``): ``{"max_heads": n}``, or nothing for 6, so a 6-head model's file stays the
    same bytes as one written before models could have more heads."""
    return {} if check_max_heads(n) == MAX_ARITY else {"max_heads": n}


@functools.lru_cache(maxsize=None, typed=True)  # typed: True and 1.0 must not hit 1
def head_names(n: int = MAX_ARITY) -> tuple[str, ...]:
    """``("function", "arg1", ..., "argN")``: every head a model with ``n`` argument heads has."""
    return ("function",) + tuple(f"arg{i}" for i in range(1, check_max_heads(n) + 1))


@functools.lru_cache(maxsize=None, typed=True)  # typed: True and 1.0 must not hit 1
def special_tokens(n: int = MAX_ARITY) -> tuple[str, ...]:
    """The added tokens of a model with ``n`` argument heads, in the public checkpoints' order:
    ``<content> </content> <function> </function> <arg1> </arg1> ... <argN> </argN> <|null|>``
    (``2n + 5`` tokens: 17 for the public checkpoints' 6)."""
    args = [tag for i in range(1, check_max_heads(n) + 1) for tag in (f"<arg{i}>", f"</arg{i}>")]
    return ("<content>", "</content>", "<function>", "</function>", *args, NULL)


HEAD_NAMES: tuple[str, ...] = head_names(MAX_ARITY)
SPECIAL_TOKENS: tuple[str, ...] = special_tokens(MAX_ARITY)
CHAT_TOKENS: tuple[str, ...] = (IM_START, IM_END)
assert len(SPECIAL_TOKENS) == 17


def open_tag(head: str) -> str:
    return f"<{head}>"


def close_tag(head: str) -> str:
    return f"</{head}>"


def heads_for(tools: Sequence[ToolSpec], max_heads: int = MAX_ARITY) -> tuple[str, ...]:
    """Heads used per call: ``function`` + ``arg1``..``argN``, N = the largest arity, at most
    ``max_heads`` (6 for the public checkpoints). ValueError when a tool has more parameters."""
    n = max((t.arity for t in tools), default=0)
    if n > check_max_heads(max_heads):
        raise ValueError(f"largest arity {n} exceeds the model's {max_heads} argument heads")
    return head_names(max_heads)[: 1 + n]


# --------------------------------------------------------------------------- turns


@dataclass
class Turn:
    """The per-tick user turn.

    ``query``: the observation text and/or the user's instruction. ``history``: rendered history
    items (``move(x=3)`` or, from the futures layer, ``move(x=3)@f17 running 120ms``).
    ``environment``: optional environment lines (v2 prepends them as a JSON list; v1 lists them).
    """

    query: str
    history: list[str] = field(default_factory=list)
    environment: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "history": list(self.history), "environment": self.environment}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Turn:
        env = data.get("environment")
        return cls(
            query=str(data.get("query", "")),
            history=[str(h) for h in data.get("history") or []],
            environment=[str(e) for e in env] if env is not None else None,
        )


# --------------------------------------------------------------------------- templates

V2_DEFAULT_SYSTEM = (
    "You are a real-time function calling assistant. "
    "Convert user commands into function calls using the available tools."
)

V1_SYSTEM_BLOCK = (
    "You are a multi-head parallel function calling model. \n"
    "## Output Heads\n"
    "\n"
    "**Head 0 - <content>**: Natural language response\n"
    "- Format: <content>response text</content>\n"
    "- Answer what you want to say while you are calling a function\n"
    "\n"
    "**Head 1 - <function>**: Function names to call\n"
    "- Format: <function>name</function>\n"
    "- Name: must match tool defined name\n"
    "\n"
    "**Head 2-7 - <arg1>、<arg2>、<arg3>、<arg4>、<arg5>、<arg6>**: Function arguments by position\n"
    "- Format: <argN>value</argN> \n"
    "- Strictly fill in according to the parameter order of the tool you intend to call\n"
    "- Note the special restrictions of parameter definitions for corresponding positions\n"
    "- If the corresponding tool definition has required parameters, these must be filled in\n"
    "- Infer the user's actual needs.\n"
    "- If Unnecessary: <argN><|null|></argN>\n"
    "\n"
    "**Environment - The information you have.\n"
    "**History - The tools you have called."
)


def render_tools_json(tools: Sequence[ToolSpec]) -> str:
    """One tool per line, ``json.dumps(tool, ensure_ascii=False)`` with default separators."""
    return "\n".join(json.dumps(t.rendered, ensure_ascii=False) for t in tools)


def render_tools_as_given(tools: Sequence[ToolSpec]) -> str:
    """As :func:`render_tools_json`, but each tool as the caller gave it (``ToolSpec.source``): bare and
    BFCL-dialect tools are written unwrapped and unconverted, as SimpleTool's HTTP servers write them."""
    return "\n".join(json.dumps(t.rendered if t.source is None else t.source, ensure_ascii=False)
                     for t in tools)


# SimpleTool's HTTP servers (``rt_server.py`` and its v1/v2 successor) write a shortened v1 system block:
# no "Answer...", "Strictly..."/"Note..."/"If the corresponding..."/"Infer..." lines, ``-`` for ``、``, no
# Environment/History lines. Restated from reading their prompt text (docs/simpletool-compat.md).
V1_SERVER_SYSTEM_BLOCK = (
    "You are a multi-head parallel function calling model. \n"
    "## Output Heads\n"
    "\n"
    "**Head 0 - <content>**: Natural language response\n"
    "- Format: <content>response text</content>\n"
    "\n"
    "**Head 1 - <function>**: Function names to call\n"
    "- Format: <function>name</function>\n"
    "\n"
    "**Head 2-7 - <arg1>-<arg6>**: Function arguments by position\n"
    "- Format: <argN>value</argN> \n"
    "- If Unnecessary: <argN><|null|></argN>\n"
)
SERVER_MAX_HISTORY = 6  # the servers keep only the last 6 history items


def _type_label(schema: Mapping[str, Any]) -> str:
    if "enum" in schema:
        return "|".join(str(v) for v in schema["enum"])
    t = schema.get("type", "any")
    label = "/".join(t) if isinstance(t, list) else str(t)
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if lo is not None or hi is not None:
        label += f"[{'' if lo is None else lo}..{'' if hi is None else hi}]"
    return label


def render_tools_compact(tools: Sequence[ToolSpec]) -> str:
    """``name(p:type, q:a|b|c, r:number[-1..1])`` one per line: short, for our small models."""
    lines = []
    for t in tools:
        params = ", ".join(f"{n}:{_type_label(s)}" for n, s in t.properties.items())
        lines.append(f"{t.name}({params})")
    return "\n".join(lines)


@dataclass(frozen=True)
class Template:
    """A prompt template: ``prefix(system, tools)`` is static, ``suffix(turn)`` changes every tick."""

    name: str

    def prefix(self, tools: Sequence[ToolSpec], system: str | None = None) -> str:
        if self.name == "v2":
            sys_text = V2_DEFAULT_SYSTEM if system is None else system
            return (
                f"{IM_START}system\n{sys_text}\n\n## Available Tools:\n\n"
                f"{render_tools_json(tools)}\n{IM_END}\n"
            )
        if self.name == "v1":
            # v1's system turn is the fixed head-instruction block; a custom system is not part of it.
            return (
                f"{IM_START}system\n{V1_SYSTEM_BLOCK}\n## Available Tools:\n\n"
                f"{render_tools_json(tools)}{IM_END}\n"
            )
        if self.name == "v1-server":  # the server ignores a custom system in v1
            return (
                f"{IM_START}system\n{V1_SERVER_SYSTEM_BLOCK}\n## Available Tools:\n\n"
                f"{render_tools_as_given(tools)}\n{IM_END}\n"
            )
        if self.name == "v2-server":  # an empty system falls back to the default (``or``, not ``is None``)
            return (
                f"{IM_START}system\n{system or V2_DEFAULT_SYSTEM}\n\n## Available Tools:\n\n"
                f"{render_tools_as_given(tools)}\n{IM_END}\n"
            )
        if self.name == "compact":
            sys_line = f"{system}\n" if system else ""
            return f"{IM_START}system\n{sys_line}{render_tools_compact(tools)}{IM_END}\n"
        raise ValueError(f"unknown template {self.name!r}; choose from {', '.join(TEMPLATES)}")

    def suffix(self, turn: Turn) -> str:
        if self.name in ("v1-server", "v2-server"):
            return self._server_suffix(turn)
        history = ", ".join(turn.history)
        if self.name == "v2":
            query = turn.query
            if turn.environment:
                query = f"environment: {json.dumps(list(turn.environment), ensure_ascii=False)}\n{query}"
            return f"{IM_START}user\nhistory: [{history}]\n\n{query}{IM_END}\n{IM_START}assistant\n"
        if self.name == "v1":
            env = ", ".join(turn.environment or [])
            return (
                f"{IM_START}user\nenvironment: [{env}]\nhistory: [{history}]\n\n"
                f"{turn.query}{IM_END}\n{IM_START}assistant\n"
            )
        if self.name == "compact":
            env = "".join(f"{e}\n" for e in turn.environment or [])
            return f"{IM_START}user\n{env}history: [{history}]\n{turn.query}{IM_END}\n{IM_START}assistant\n"
        raise ValueError(f"unknown template {self.name!r}")


    def _server_suffix(self, turn: Turn) -> str:
        """The user turn as SimpleTool's HTTP servers write it: the last 6 history items; v1 writes the
        environment as a JSON list of strings (``[]`` when none), v2 prepends it to the query when given."""
        history = ", ".join(turn.history[-SERVER_MAX_HISTORY:])
        env = json.dumps(list(turn.environment or []), ensure_ascii=False)
        if self.name == "v1-server":
            head = f"environment: {env}\nhistory: [{history}]\n\n{turn.query}"
        else:
            query = f"environment: {env}\n{turn.query}" if turn.environment else turn.query
            head = f"history: [{history}]\n\n{query}"
        return f"{IM_START}user\n{head}{IM_END}\n{IM_START}assistant\n"


# v1/v2: the training-time forms (the engines' defaults); v1-server/v2-server: what SimpleTool's HTTP
# servers send the same checkpoints (the HTTP door's defaults); compact: our small students.
TEMPLATES: dict[str, Template] = {n: Template(n) for n in ("v1", "v2", "compact", "v1-server", "v2-server")}
SERVER_VARIANTS: dict[str, str] = {"v1": "v1-server", "v2": "v2-server"}  # training-time form -> server's


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown template {name!r}; choose from {', '.join(TEMPLATES)}") from None


# --------------------------------------------------------------------------- value encoding


def encode_value(value: Any, is_string: bool) -> str:
    """Head text for one argument: strings literal, everything else compact JSON."""
    if is_string and isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode_call_heads(call: Call, tool: ToolSpec, heads: Sequence[str]) -> dict[str, str]:
    """The text each head should produce for ``call`` (``<|null|>`` for omitted/unused slots)."""
    out = {"function": call.name}
    names = tool.param_names
    for head in heads[1:]:
        i = int(head[3:]) - 1
        if i < len(names) and names[i] in call.arguments:
            out[head] = encode_value(call.arguments[names[i]], tool.param_is_string(names[i]))
        else:
            out[head] = NULL
    return out


def head_target(head: str, text: str) -> str:
    """Training target of a head: value + closing tag + ``<|im_end|>`` (null: ``<|null|>`` first)."""
    return f"{text}{close_tag(head)}{IM_END}"
