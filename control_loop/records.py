"""One record per tick, and the outcome every tick ends with.

Outcomes (exactly one per tick, so ``sum(outcomes) == ticks`` always):

* ``ok``       a legal call arrived before the tick's deadline and was dispatched;
* ``late``     the reply came after the deadline (or after a newer request superseded it): it is
               never applied; the fallback acted at the deadline instead;
* ``fallback`` no reply at all (service down, reply lost, loop ended first): the fallback acted;
* ``error``    the service answered in time with an error or an illegal call (never applied), or the
               call could not be turned into an action, or sending failed: the fallback acted;
* ``skipped``  no request was sent for this tick: the period was missed by the rate keeper
               (``reason="missed_period"``) or the previous decision was still in flight
               (``reason="in_flight"``).

Times are milliseconds. ``scheduled_ms`` is relative to the loop's ``t0``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    OK = "ok"
    LATE = "late"
    FALLBACK = "fallback"
    SKIPPED = "skipped"
    ERROR = "error"


OUTCOMES: tuple[str, ...] = tuple(o.value for o in Outcome)
# Ticks that did not get a decision from the policy in time. ``error`` is not a deadline miss: the
# service answered in time (with something unusable).
MISS_OUTCOMES: frozenset[str] = frozenset({"late", "fallback", "skipped"})
# How the reason of an ``error`` tick begins when the reply was an illegal call or no call at all.
ILLEGAL_PREFIX = "illegal call:"


@dataclass
class TickRecord:
    """Everything measured for one tick (ms). Unset fields are None (e.g. ``rtt_ms`` of a skipped tick).

    ``latency_ms``: observation taken by the tick -> call dispatched (ok ticks only); it excludes
    the observation's age, which ``obs_age_ms`` gives (how old the env's newest observation was
    when the tick took it: up to one physics step).
    ``rtt_ms``: request sent -> reply received (also for late replies).
    ``stages_ms``: the service's own stage times (queue, prefill, decode, assemble, total).
    ``dispatch_ms``: time the futures layer took to accept the call (``dispatch`` returning).
    ``fallback``: what the fallback did (``hold``, ``default``, ``noop``) when it acted.
    ``turn``: the turn the policy was sent (observation text and history lines), when recorded.
    """

    tick: int
    scheduled_ms: float
    lateness_ms: float | None = None
    obs_age_ms: float | None = None
    sent: bool = False
    rtt_ms: float | None = None
    stages_ms: dict[str, float] = field(default_factory=dict)
    dispatch_ms: float | None = None
    latency_ms: float | None = None
    outcome: str | None = None
    reason: str = ""
    call: dict[str, Any] | None = None
    fallback: str | None = None
    episode: int = 0
    # multi-agent runs only (control_loop.crowd; None otherwise): the agent this record is for; a
    # crowd run has one record per agent per tick, so outcomes sum to agents x ticks
    agent: str | None = None
    # the turn sent for this tick, {"query": observation text, "history": [lines]} (None when not
    # recorded): with ``call`` it makes ticks.jsonl a training dataset (tickcall.envs.recorded)
    turn: dict[str, Any] | None = None
    # cascade runs only (control_loop.cascade; None otherwise): which model's answer the tick got
    # (``small``, ``big`` or ``none``: no answer was routed) and why (``cascade.REASONS``); the small
    # reply's confidence (smallest chosen-token probability, 0-1); the age (ms) of the big decision the
    # routing saw; the small model's own call and the big model's call on this tick's turn (when the big
    # was sent this tick): the pairs the reliability curve compares
    decided_by: str | None = None
    route_reason: str | None = None
    confidence: float | None = None
    big_age_ms: float | None = None
    small_call: dict[str, Any] | None = None
    big_call: dict[str, Any] | None = None
    # the weights that answered this tick (``CallReply.weights``, the model folder's name; in a cascade
    # the small model's; None when no reply came or the service does not say): where it changes, the
    # service hot-swapped
    weights: str | None = None
    # engine runs only (protocol 1.2, an engine whose AI advises: ``--ai NAME --ai-advise``): the call the
    # engine's AI made on the observation this tick took (``obs.played``); with ``turn`` it is a row
    # labelled by the engine's AI on a state the model reached (``tickcall train --labels played``)
    played: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TickRecord:
        return cls(**data)


def count_outcomes(records: list[TickRecord]) -> dict[str, int]:
    """Outcome counts with every outcome present (0 when none). Unresolved records raise."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for r in records:
        if r.outcome not in counts:
            raise ValueError(f"tick {r.tick} has no final outcome ({r.outcome!r})")
        counts[r.outcome] += 1
    return counts
