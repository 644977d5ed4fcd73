"""Engines without a model: ``NoOpEngine`` (one fixed legal call, for plumbing) and the shared step
both stand-ins use to answer as a model would: a call rendered to head texts (``encode_call_heads``)
and checked through the same strict assembly the engine applies to every decision.

Both decode nothing, so their ``prompt_tokens``/prefix sizes count whitespace-separated words (the
unit of ``Engine.count_tokens`` for engines without a tokenizer) and their token ids are empty.
"""

from __future__ import annotations

import time

from tickcall.models.assembly import assemble
from tickcall.models.calls import Call
from tickcall.models.engine import Engine, RawHeads, Registration
from tickcall.models.format import MAX_HEADS_LIMIT, NULL, Turn, encode_call_heads
from tickcall.models.sampling import SchemaSamplingError, default_call
from tickcall.models.tools import ToolSpec

# Tools whose name says "do nothing", preferred in this order by the no-op engine.
IDLE_NAMES = ("wait", "noop", "no_op", "idle", "pass", "skip", "stay", "nothing", "none")


def call_heads(reg: Registration, call: Call) -> dict[str, str] | None:
    """The head texts a model would decode for ``call`` under ``reg``, or None when strict assembly
    would not read them back as a legal call (an empty string reads as "omitted", for instance)."""
    try:
        texts = encode_call_heads(call, reg.tool_map[call.name], reg.heads)
    except (TypeError, ValueError):  # a value JSON cannot write (a default holding bytes)
        return None
    return texts if assemble(texts, reg.tool_map).legal else None


def no_call_heads(reg: Registration) -> dict[str, str]:
    """The explicit no-call: every head ``<|null|>`` (assembly answers "no function was chosen")."""
    return {h: NULL for h in reg.heads}


def raw_heads(reg: Registration, turn: Turn, texts: dict[str, str], decode_ms: float = 0.0) -> RawHeads:
    """``RawHeads`` for texts made without a model (no tokens; prompt size in words)."""
    return RawHeads(
        texts=texts,
        token_ids={h: [] for h in reg.heads},
        unfinished=set(),
        prompt_tokens=len(reg.template.suffix(turn).split()),
        cached_tokens=reg.prefix_tokens,
        prefill_ms=0.0,
        decode_ms=decode_ms,
    )


def idle_tool(tools: list[ToolSpec]) -> ToolSpec | None:
    """The tool a no-op calls without arguments: one without required parameters, those named like
    ``wait``/``noop``/``idle``/``pass`` first (in ``IDLE_NAMES`` order), else the first; None if every
    tool has a required parameter."""
    free = [t for t in tools if not t.required]
    for name in IDLE_NAMES:
        for t in free:
            if t.name.lower() == name:
                return t
    return free[0] if free else None


def noop_calls(tools: list[ToolSpec]) -> list[Call]:
    """The no-op engine's candidate calls, best first: ``idle_tool`` with no arguments; then each tool
    whose required parameters all have a legal value (``sampling.default_call``: the schema's
    ``default``, else the minimal value), in registration order."""
    out = []
    tool = idle_tool(tools)
    if tool is not None:
        out.append(Call(tool.name, {}))
    for t in tools:
        try:
            out.append(default_call(t))
        except (SchemaSamplingError, ValueError, TypeError):  # no legal value for a required parameter
            continue
    return out


class NoOpEngine(Engine):
    """Stands in for a model where only the plumbing is measured (service overhead benchmark, wire
    tests) and as a do-nothing baseline. It decodes nothing and answers every turn with the same
    *legal* call, fixed at registration (the first of ``noop_calls`` whose heads assemble):

    * a tool without required parameters, called with no arguments (``wait``/``noop``/``idle``/
      ``pass``... first, else the first such tool): the arena's ``wait()``;
    * otherwise the first tool with each required parameter at its schema ``default``, else its
      minimal legal value (``sampling.minimal_value``: ``enum[0]``, 0 moved into the range, ``false``,
      ...): ``torque(value=0.0)`` on Pendulum, ``push(direction="left")`` on MountainCar;
    * an explicit no-call (every head ``<|null|>``: ``legal`` False, reason "no function was chosen")
      only when no tool can be called legally at all. Never an illegal call.

    Heads are the texts a model would write for that call and go through the strict assembly."""

    backend = "noop"
    # No model, so no trained head count: any tool set a model of ours could declare is accepted.
    max_heads = MAX_HEADS_LIMIT

    def _build_prefix(self, reg: Registration) -> None:
        reg.prefix_tokens = len(reg.prefix_text.split())
        heads = (call_heads(reg, call) for call in noop_calls(reg.tools))
        reg.state = next((texts for texts in heads if texts is not None), None) or no_call_heads(reg)

    def _decode(self, items: list[tuple[Registration, Turn]]) -> list[RawHeads]:
        out = []
        for reg, turn in items:
            t0 = time.perf_counter()
            texts = dict(reg.state)
            out.append(raw_heads(reg, turn, texts, (time.perf_counter() - t0) * 1e3))
        return out
