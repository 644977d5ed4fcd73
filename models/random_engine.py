"""``RandomEngine``: the ``random`` backend, a legal random call every turn, drawn from the registered
schemas. For plumbing tests without a model, and the baseline row of an evaluation (what a
controller that ignores the observation scores).

Per turn: a tool chosen uniformly, every required parameter and (probability 1/2) each optional one,
values drawn by their schema (``models.sampling``). The call is written as the head texts a model
would decode (``format.encode_call_heads``) and read back by the same strict assembly as a model's.

Invariants: every decision is legal. Registration proves it: each tool gets a checked fallback call
(its default call, else a seeded draw), and a tool with no legal call is refused there as a
``ToolSchemaError`` (the policy service answers ``illegal_tools``), never per tick. A turn whose
random draws all fail the round trip (rare: a pattern that seldom fits its length bounds) answers
that tool's fallback call. Seeded: the same ``seed`` and the same registrations give the same calls.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tickcall.models.calls import Call
from tickcall.models.engine import Engine, RawHeads, Registration
from tickcall.models.format import MAX_HEADS_LIMIT, Turn
from tickcall.models.sampling import SchemaSamplingError, default_call, sample_call
from tickcall.models.stand_ins import call_heads, raw_heads
from tickcall.models.tools import ToolSchemaError

DRAWS_PER_TURN = 4  # random draws a turn tries before it answers the tool's fallback call
PROBE_DRAWS = 8  # draws registration tries per tool when its default call does not round-trip


@dataclass
class _RandomState:
    """Per registration: its own random stream and each tool's checked fallback head texts."""

    rng: random.Random
    fallback: dict[str, dict[str, str]]


class RandomEngine(Engine):
    """Legal random calls (see module docstring). ``seed``: the base seed; registration ``hN`` draws
    from ``random.Random(f"{seed}:hN")``, so clients do not disturb each other's sequences."""

    backend = "random"
    # No model, so no trained head count: any tool set a model of ours could declare is accepted.
    max_heads = MAX_HEADS_LIMIT

    def __init__(self, seed: int = 0, max_new_tokens: int = 32, allow_future_refs: bool = False) -> None:
        super().__init__(max_new_tokens=max_new_tokens, allow_future_refs=allow_future_refs)
        self.seed = int(seed)

    def info(self) -> dict[str, object]:
        return {**super().info(), "seed": self.seed}

    def _build_prefix(self, reg: Registration) -> None:
        reg.prefix_tokens = len(reg.prefix_text.split())
        rng = random.Random(f"{self.seed}:{reg.handle}")
        reg.state = _RandomState(
            rng=rng, fallback={t.name: _fallback_heads(reg, t.name, rng) for t in reg.tools}
        )

    def _decode(self, items: list[tuple[Registration, Turn]]) -> list[RawHeads]:
        out = []
        for reg, turn in items:
            t0 = time.perf_counter()
            texts = self._draw(reg)
            out.append(raw_heads(reg, turn, texts, (time.perf_counter() - t0) * 1e3))
        return out

    def _draw(self, reg: Registration) -> dict[str, str]:
        state: _RandomState = reg.state
        tool = state.rng.choice(reg.tools)
        for _ in range(DRAWS_PER_TURN):
            try:
                texts = call_heads(reg, sample_call(tool, state.rng))
            except SchemaSamplingError:
                continue
            if texts is not None:
                return texts
        return dict(state.fallback[tool.name])


def _fallback_heads(reg: Registration, name: str, rng: random.Random) -> dict[str, str]:
    """Head texts of a legal call of tool ``name``: its default call, else the first of
    ``PROBE_DRAWS`` random draws that round-trips. Raises ToolSchemaError when none does."""
    tool = reg.tool_map[name]
    reasons: list[str] = []

    def candidates() -> Iterator[Call]:
        try:
            yield default_call(tool)
        except SchemaSamplingError as exc:
            reasons.append(str(exc))
        for _ in range(PROBE_DRAWS):
            try:
                yield sample_call(tool, rng)
            except SchemaSamplingError as exc:
                reasons.append(str(exc))

    for call in candidates():
        texts = call_heads(reg, call)
        if texts is not None:
            return texts
        reasons.append("its arguments do not survive the heads (an empty string reads as omitted)")
    raise ToolSchemaError(
        f"tool {name!r} cannot be called legally, so the random backend cannot offer it: "
        f"{reasons[-1] if reasons else 'no draw'}"
    )
