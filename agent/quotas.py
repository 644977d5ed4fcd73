"""Resource control of the policy service: token budgets and per-client quotas (docs/protocol.md).

* ``TokenBudget``: a decide's per-tick suffix and a registered tool prefix are counted in tokens with
  the engine's own tokenizer *before* any forward pass; over budget is answered ``too_long``, so a long
  prompt never costs attention time or memory (which grow with the square of its length).
* ``ClientQueues``: per-client accounting of queued decides (distinct streams and wire bytes); beyond
  either cap a decide is answered ``over_quota`` at once and nothing is queued.

Engines that do not offer ``count_tokens``/``suffix_tokens``/``prefix_tokens_for`` (a factory engine
outside ``models.engine.Engine``) are not token-checked; the queue quotas apply to every engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tickcall.models.format import Turn


@dataclass(frozen=True)
class TokenBudget:
    """Token limits of one core. ``context``: the model's context length (tokens), None where unknown.

    Invariants: ``prefix_limit() <= max_prefix_tokens`` and ``turn_limit(p) <= max_turn_tokens``;
    with a known context, prefix + turn + ``max_new_tokens`` generated tokens fit in it.
    """

    max_turn_tokens: int = 512
    max_prefix_tokens: int = 4096
    context: int | None = None
    max_new_tokens: int = 0

    def prefix_limit(self) -> int:
        """Most tokens a tool prefix may have (tokens)."""
        if self.context is None:
            return self.max_prefix_tokens
        return max(0, min(self.max_prefix_tokens, self.context - self.max_new_tokens - 1))

    def turn_limit(self, prefix_tokens: int) -> int:
        """Most suffix tokens one decide may have after a prefix of ``prefix_tokens`` (tokens)."""
        if self.context is None:
            return self.max_turn_tokens
        room = self.context - prefix_tokens - self.max_new_tokens
        return max(0, min(self.max_turn_tokens, room))


def budget_for(engine: Any, max_turn_tokens: int, max_prefix_tokens: int) -> TokenBudget:
    """The budget of ``engine``: the configured limits capped by its context length where known."""
    context_fn = getattr(engine, "context_tokens", None)
    context = context_fn() if callable(context_fn) else None
    return TokenBudget(
        max_turn_tokens=max_turn_tokens,
        max_prefix_tokens=max_prefix_tokens,
        context=context,
        max_new_tokens=int(getattr(engine, "max_new_tokens", 0) or 0) if context else 0,
    )


def suffix_tokens(engine: Any, engine_handle: str, turn: Turn) -> int | None:
    """Tokens the engine would prefill for ``turn``; None when the engine cannot count them."""
    fn = getattr(engine, "suffix_tokens", None)
    return int(fn(engine_handle, turn)) if callable(fn) else None


def prefix_tokens(engine: Any, tools: Any, system: str | None, template: str | None) -> int | None:
    """Tokens of the static prefix ``register`` would prefill; None when the engine cannot count them.
    Raises the engine's ToolSchemaError for tools it cannot offer."""
    fn = getattr(engine, "prefix_tokens_for", None)
    return int(fn(tools, system=system, template=template)) if callable(fn) else None


@dataclass
class ClientQueues:
    """Queued decides per client: distinct streams and wire bytes. Not thread-safe: the server calls
    it under its queue lock, on every add and every removal, so the counts match the queue exactly."""

    max_streams: int = 16
    max_bytes: int = 4 << 20
    streams: dict[Any, int] = field(default_factory=dict)
    nbytes: dict[Any, int] = field(default_factory=dict)

    def refusal(self, client: Any, nbytes: int, replaced_nbytes: int | None) -> str | None:
        """Why a decide of ``nbytes`` bytes cannot be queued (None: it can). ``replaced_nbytes``: the
        size of the queued decide it supersedes on the same stream (None: it opens a new stream)."""
        streams = self.streams.get(client, 0) + (replaced_nbytes is None)
        if streams > self.max_streams:
            return (
                f"{streams - 1} streams already queued for this client, the limit is {self.max_streams}: "
                "reuse a stream or wait for replies"
            )
        queued = self.nbytes.get(client, 0) - (replaced_nbytes or 0) + nbytes
        if queued > self.max_bytes:
            return (
                f"{queued} queued bytes for this client would exceed the limit of {self.max_bytes}: "
                "wait for replies or send smaller decides"
            )
        return None

    def add(self, client: Any, nbytes: int) -> None:
        self.streams[client] = self.streams.get(client, 0) + 1
        self.nbytes[client] = self.nbytes.get(client, 0) + nbytes

    def remove(self, client: Any, nbytes: int) -> None:
        left = self.streams.get(client, 0) - 1
        if left <= 0:  # forget idle clients: the maps hold only clients with something queued
            self.streams.pop(client, None)
            self.nbytes.pop(client, None)
        else:
            self.streams[client] = left
            self.nbytes[client] = self.nbytes.get(client, 0) - nbytes
