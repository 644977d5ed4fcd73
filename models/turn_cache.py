"""Turn-prefix caching: exact reuse of the K/V of a turn's repeated beginning (one registration).

Why: on the goal arena every tick's turn is the episode's goal sentence + a newline + the state line,
so most of a turn's tokens repeat from one tick to the next, and prefill compute dominates a decide
of a 135M model on the CPU. vLLM calls this automatic prefix caching (in blocks of 16 tokens); here
the granularity is exact tokens.

A ``TurnCache`` belongs to one registration (its K/V are computed on top of that registration's
tool prefix) and holds at most ``capacity`` entries, least recently used evicted. An entry is a
whole turn's suffix token ids and, per layer, their K/V [kv, len, d]. ``lookup(ids)`` finds the
entry with the longest common token prefix (LCP) with a new turn; the decide then prefills only the
tokens after it (``models.lean.Reused``). Exact by causality, up to floating point: the K/V of the
first LCP tokens depend only on those tokens and the prefix.

Invariants: a reuse leaves at least one token to prefill (the heads' tags must see the whole turn,
and the last token's hidden state is not cached), and is taken only from ``min_reuse`` tokens on
(below that the saving is noise). Memory: at most ``capacity`` x (turn tokens) x layers x 2 x kv x d
values; dropped with the registration.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

MIN_REUSE_TOKENS = 8


@dataclass
class TurnEntry:
    """One cached turn: its suffix token ids and per-layer K/V [kv, len(ids), d]."""

    ids: tuple[int, ...]
    k: list[torch.Tensor]
    v: list[torch.Tensor]


@dataclass
class TurnCacheStats:
    """Counters since the cache was made (tokens are suffix tokens)."""

    lookups: int = 0
    hits: int = 0  # lookups that reused at least ``min_reuse`` tokens
    reused_tokens: int = 0
    prefilled_tokens: int = 0


def common_prefix(a: tuple[int, ...] | list[int], b: tuple[int, ...] | list[int]) -> int:
    """Length of the longest common prefix of two token id sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class TurnCache:
    """An LRU of turn-prefix entries for one registration (see the module docstring)."""

    capacity: int
    min_reuse: int = MIN_REUSE_TOKENS
    entries: OrderedDict[int, TurnEntry] = field(default_factory=OrderedDict)
    stats: TurnCacheStats = field(default_factory=TurnCacheStats)
    _next: int = 0

    def lookup(self, ids: list[int]) -> tuple[int | None, int]:
        """(entry key, tokens to reuse) for a new turn's suffix ``ids``; (None, 0) when no entry
        shares at least ``min_reuse`` tokens. The reuse is at most ``len(ids) - 1``."""
        best_key, best = self._best(ids)
        self.stats.lookups += 1
        if best < self.min_reuse:
            self.stats.prefilled_tokens += len(ids)
            return None, 0
        self.stats.hits += 1
        self.stats.reused_tokens += best
        self.stats.prefilled_tokens += len(ids) - best
        return best_key, best

    def peek(self, ids: list[int]) -> int:
        """The tokens ``lookup(ids)`` would reuse now, without counting a lookup: what the service's
        scheduler asks to size a turn's prefill."""
        return self._best(ids)[1]

    def _best(self, ids: list[int]) -> tuple[int | None, int]:
        """The entry sharing the longest prefix with ``ids`` and the tokens it lets reuse (at most
        ``len(ids) - 1``); (None, 0) under ``min_reuse``."""
        best_key, best = None, 0
        for key, entry in self.entries.items():
            n = common_prefix(entry.ids, ids)
            if n > best:
                best_key, best = key, n
        best = min(best, len(ids) - 1)
        return (best_key, best) if best >= self.min_reuse else (None, 0)

    def store(self, ids: list[int], k: list[torch.Tensor], v: list[torch.Tensor]) -> None:
        """Keep turn ``ids`` with its K/V as the most recent entry, the least recent evicted past
        ``capacity``; an entry with the same ids is only refreshed.

        Every turn is kept (not only the entry it reused replaced): turns of different episodes share
        the template's turn header and often the start of their goal sentences, so replacing would let
        clients on one registration push each other's goals out. With up to ``capacity`` clients per
        registration each finds its own previous tick."""
        ids_t = tuple(ids)
        for key, entry in self.entries.items():
            if entry.ids == ids_t:
                self.entries.move_to_end(key)
                return
        self.entries[self._next] = TurnEntry(ids_t, k, v)
        self._next += 1
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def held_tokens(self) -> int:
        """Turn tokens whose K/V the cache holds (the memory bound's unit)."""
        return sum(len(e.ids) for e in self.entries.values())
