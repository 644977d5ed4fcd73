"""The append-only ledger of every call: accepted, started, finished (one terminal state), late results.

Invariant (checked by ``balanced``): ``accepted == finished + in_flight``, where ``in_flight`` is the
number of accepted calls without a terminal entry, and no call is finished twice. Counters are exact
for the whole run; the list of entries keeps the newest ``max_entries`` (``dropped`` counts the rest)
so a run of hours does not grow without bound.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from tickcall.control_loop.futures.states import CallState


class LedgerError(RuntimeError):
    """A transition the ledger cannot accept (finishing a call twice, finishing an unknown call)."""


@dataclass(frozen=True)
class LedgerEntry:
    """One event: ``kind`` is accepted | started | finished | late | restart. ``t`` in clock seconds."""

    index: int
    t: float
    kind: str
    call_id: str
    lane: str | None
    state: str | None = None
    detail: str | None = None


class Ledger:
    """Append-only record of call events, with exact counters."""

    def __init__(self, max_entries: int | None = 100_000) -> None:
        self._entries: deque[LedgerEntry] = deque(maxlen=max_entries)
        self._index = 0
        self.accepted = 0
        self.started = 0
        self.finished = 0
        self.late = 0
        self.restarts = 0
        self.by_state: Counter[str] = Counter()
        self._open: set[str] = set()

    @property
    def in_flight(self) -> int:
        return len(self._open)

    @property
    def dropped(self) -> int:
        """Entries no longer kept in memory (counters still include them)."""
        return self._index - len(self._entries)

    def _append(self, t: float, kind: str, call_id: str, lane: str | None, state: Any = None,
                detail: str | None = None) -> LedgerEntry:
        entry = LedgerEntry(self._index, t, kind, call_id, lane, None if state is None else str(state), detail)
        self._index += 1
        self._entries.append(entry)
        return entry

    def accept(self, t: float, call_id: str, lane: str | None, detail: str | None = None) -> None:
        if call_id in self._open:
            raise LedgerError(f"{call_id} accepted twice")
        self._open.add(call_id)
        self.accepted += 1
        self._append(t, "accepted", call_id, lane, None, detail)

    def start(self, t: float, call_id: str, lane: str | None) -> None:
        if call_id not in self._open:
            raise LedgerError(f"{call_id} started but not in flight")
        self.started += 1
        self._append(t, "started", call_id, lane)

    def finish(self, t: float, call_id: str, lane: str | None, state: CallState, detail: str | None = None) -> None:
        if not state.terminal:
            raise LedgerError(f"{call_id}: {state} is not a terminal state")
        if call_id not in self._open:
            raise LedgerError(f"{call_id} finished twice or never accepted")
        self._open.discard(call_id)
        self.finished += 1
        self.by_state[state.value] += 1
        self._append(t, "finished", call_id, lane, state, detail)

    def late_result(self, t: float, call_id: str, lane: str | None, detail: str | None = None) -> None:
        """A result or error that came after the call's terminal state: recorded, never a success."""
        self.late += 1
        self._append(t, "late", call_id, lane, None, detail)

    def restart(self, t: float, lane: str, detail: str) -> None:
        self.restarts += 1
        self._append(t, "restart", "-", lane, None, detail)

    def balanced(self) -> bool:
        return self.accepted == self.finished + self.in_flight and sum(self.by_state.values()) == self.finished

    def open_ids(self) -> frozenset[str]:
        return frozenset(self._open)

    def entries(self, call_id: str | None = None) -> list[LedgerEntry]:
        """A copy of the kept entries, optionally only those of one call."""
        if call_id is None:
            return list(self._entries)
        return [e for e in self._entries if e.call_id == call_id]

    def summary(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted, "started": self.started, "finished": self.finished,
            "in_flight": self.in_flight, "late": self.late, "restarts": self.restarts,
            "by_state": dict(self.by_state), "balanced": self.balanced(), "dropped_entries": self.dropped,
        }

    def __len__(self) -> int:
        return self._index
