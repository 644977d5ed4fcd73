"""The bookkeeping every control loop shares: tick records and their outcomes, requests in flight, and
what a reply (or its absence) does to its tick.

``ControlLoop`` (one agent, ``control_loop.loop``) and ``CrowdLoop`` (every agent of a crowd world,
``control_loop.crowd``) differ in what a tick sends and where a call goes; the rules below are one:

* ``TickBook`` holds every ``TickRecord`` and keeps the outcome counts as records are added and
  resolved (a record is resolved once more when a late reply turns its ``fallback`` into ``late``),
  so ``sum(counts) + unresolved == len(records)`` at every moment; readers on other threads (the
  actor's ``status``/``snapshot``) take its lock.
* ``Requests`` holds the requests in flight by a key (the single loop: the tick; the crowd: the message
  id ``send_decide`` returned, since all agents of a tick share the tick id) and the ones given up on
  (``stale``: superseded or dropped), so a reply that comes after all is recognised as ``late``.
* ``settle`` is what a reply does to its pending request: before the deadline a legal call is applied
  (``ok``), an error or an illegal call is never applied (``error``, the fallback acts), a no-decision
  error (expired, superseded, timeout) is a ``fallback``; after the deadline any real reply is ``late``.

Times: monotonic seconds in, milliseconds in the records.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from tickcall.agent.messages import DecideReply
from tickcall.control_loop.records import OUTCOMES, TickRecord
from tickcall.control_loop.replies import call_dict, is_round_trip, judge, no_decision, stage_timings
from tickcall.models.calls import Call

from tickcall.timing import percentile

__all__ = ["MAX_STALE", "Pending", "Requests", "TickBook", "settle", "settle_stale"]

MAX_STALE = 256  # abandoned/superseded requests remembered per loop to recognise their late replies
LATENCY_WINDOW = 256  # recent ok latencies the live status's percentiles are taken over


@dataclass
class Pending:
    """One request in flight: its tick, message id, when it was sent, its deadline and when its tick took
    the observation (monotonic s), the record it decides, and its agent (crowd loops only)."""

    tick: int
    msg_id: Any
    sent_at: float
    deadline_at: float
    obs_at: float
    record: TickRecord
    expired: bool = False
    agent: str | None = None


class TickBook:
    """Every tick record of a run, with running outcome counts and recent ok latencies (ms).

    Invariant: ``sum(counts.values()) + unresolved == len(records)``. Thread-safe for readers."""

    def __init__(self) -> None:
        self.records: list[TickRecord] = []
        self.counts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.unresolved = 0
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.lock = threading.Lock()

    def add(self, rec: TickRecord) -> None:
        with self.lock:
            self.records.append(rec)
            if rec.outcome is None:
                self.unresolved += 1
            else:
                self.counts[rec.outcome] += 1

    def resolve(self, rec: TickRecord, outcome: str, reason: str) -> None:
        """Give ``rec`` its (new) final outcome; the counts follow."""
        with self.lock:
            if rec.outcome is None:
                self.unresolved -= 1
            else:
                self.counts[rec.outcome] -= 1
            rec.outcome = outcome
            rec.reason = reason
            self.counts[outcome] += 1

    def note_latency(self, ms: float) -> None:
        with self.lock:
            self.latencies.append(ms)

    def finalize(self, reason: str = "loop ended before its deadline") -> None:
        """Safety net after the drain: a record still without an outcome becomes a ``fallback``."""
        for rec in list(self.records):
            if rec.outcome is None:
                self.resolve(rec, "fallback", reason)

    def live(self) -> dict[str, Any]:
        """Records, outcome counts, unresolved count and latency P50/P99 (ms) of the recent ok ticks."""
        with self.lock:
            lat = sorted(self.latencies)
            out = {"records": len(self.records), "outcomes": dict(self.counts), "unresolved": self.unresolved}
        out["latency_p50_ms"] = percentile(lat, 50) if lat else None
        out["latency_p99_ms"] = percentile(lat, 99) if lat else None
        return out

    def snapshot(self, since: int, margin: int) -> tuple[list[dict[str, Any]], int]:
        """The records of ticks ``>= since`` as dicts, and the tick a later snapshot must start from: the
        oldest that may still change (unresolved, or within ``margin`` ticks of the newest, where a late
        reply may still land)."""
        with self.lock:
            recs = [r for r in self.records if r.tick >= since]
            out = [r.to_dict() for r in recs]
            open_ticks = [r.tick for r in recs if r.outcome is None]
        newest = max((r["tick"] for r in out), default=since - 1)
        settled = min([*open_ticks, newest + 1]) - margin
        return out, max(since, settled)


class Requests:
    """Requests in flight (``pending``) and those given up on (``stale``), by key (see module docstring)."""

    def __init__(self, max_stale: int = MAX_STALE) -> None:
        self.pending: OrderedDict[Hashable, Pending] = OrderedDict()
        self.stale: OrderedDict[Hashable, Pending] = OrderedDict()
        self.max_stale = max_stale

    def retire(self, key: Hashable, p: Pending) -> None:
        """Remember a request no longer waited for (superseded, dropped) so its late reply is known."""
        self.stale[key] = p
        while len(self.stale) > self.max_stale:
            self.stale.popitem(last=False)

    def supersede(self, key: Hashable, book: TickBook) -> None:
        """A newer request replaces ``key``'s: the older one's reply will not be applied (``late``)."""
        p = self.pending.pop(key)
        self.retire(key, p)
        if not p.expired:
            book.resolve(p.record, "late", "superseded")
        else:
            p.record.reason = "superseded after its deadline"

    def expire(
        self, now: float, timeout_s: float, book: TickBook, on_deadline: Callable[[Pending], None]
    ) -> None:
        """Requests whose deadline passed become ``fallback`` (``on_deadline`` applies the fallback);
        those unanswered ``timeout_s`` after their send are dropped (a dead service cannot block)."""
        for key in list(self.pending):
            p = self.pending[key]
            if not p.expired and now >= p.deadline_at:
                p.expired = True
                book.resolve(p.record, "fallback", "no reply by the deadline")
                on_deadline(p)
            if now >= p.sent_at + timeout_s:
                self.pending.pop(key)
                p.record.reason = f"no reply within {timeout_s * 1e3:.0f} ms (request dropped)"
                self.retire(key, p)

    def wake(self, until: float, timeout_s: float) -> float:
        """The earliest of ``until`` and the next deadline or drop time of a request in flight (s)."""
        wake = until
        for p in self.pending.values():
            wake = min(wake, p.sent_at + timeout_s)
            if not p.expired:
                wake = min(wake, p.deadline_at)
        return wake


def settle(
    p: Pending,
    reply: DecideReply,
    now: float,
    book: TickBook,
    *,
    apply: Callable[[Call, Pending], None],
    fallback: Callable[[TickRecord], None],
    clock: Callable[[], float],
) -> None:
    """What ``reply`` (received at ``now``) does to its request ``p``, which the caller no longer holds
    as pending. ``apply(call, p)`` hands a legal call on (must return at once; raising makes the tick an
    ``error``); ``fallback(rec)`` applies the fallback for the record's agent and notes it."""
    rec = p.record
    if is_round_trip(reply):
        rec.rtt_ms = (now - p.sent_at) * 1e3
        rec.stages_ms = stage_timings(reply)
    if p.expired:
        if no_decision(reply):
            rec.reason = f"no reply by the deadline; then {reply.code}"  # stays a fallback
            return
        book.resolve(rec, "late", f"reply {rec.rtt_ms:.1f} ms after send, past the deadline")
        return
    verdict = judge(reply)
    rec.call = call_dict(verdict.call)
    if rec.weights is None:  # which weights answered: where it changes, the service hot-swapped
        rec.weights = getattr(reply, "weights", None)
    if verdict.outcome == "ok" and verdict.call is None:  # a legal no-call: nothing to apply
        rec.latency_ms = (clock() - p.obs_at) * 1e3
        book.note_latency(rec.latency_ms)
        book.resolve(rec, "ok", verdict.reason)
        return
    if verdict.outcome != "ok" or verdict.call is None:
        book.resolve(rec, verdict.outcome, verdict.reason)
        fallback(rec)
        return
    try:
        t1 = clock()
        apply(verdict.call, p)
        t2 = clock()
    except Exception as exc:
        book.resolve(rec, "error", f"dispatch failed: {type(exc).__name__}: {exc}")
        fallback(rec)
        return
    rec.dispatch_ms = (t2 - t1) * 1e3
    rec.latency_ms = (t2 - p.obs_at) * 1e3
    book.note_latency(rec.latency_ms)
    book.resolve(rec, "ok", "")


def settle_stale(old: Pending, reply: DecideReply, now: float, book: TickBook) -> None:
    """A reply to a request given up on (superseded or dropped): an abandoned ``fallback`` whose reply
    came after all becomes ``late``; a no-decision reply changes nothing (still no reply)."""
    if no_decision(reply):
        return
    old.record.rtt_ms = (now - old.sent_at) * 1e3
    old.record.stages_ms = stage_timings(reply)
    if old.record.outcome == "fallback":
        book.resolve(old.record, "late", f"reply after {old.record.rtt_ms:.0f} ms (dropped)")
