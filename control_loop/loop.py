"""The control loop: ticks at a fixed rate, asks the policy service, dispatches calls, records every tick.

One tick ``k`` (scheduled at ``t0 + k*period``, see ``tickcall.timing.RateKeeper``):

1. take the newest observation from the world without waiting for the env;
2. if the previous request is still unanswered: ``in_flight="skip"`` records this tick as
   ``skipped`` (reason ``in_flight``) and sends nothing; ``"supersede"`` sends anyway and the older
   tick becomes ``late`` (reason ``superseded``): its reply will not be applied;
3. otherwise render the turn (observation text + history of recent calls with the status of calls still
   in flight, from the futures layer) and ``send_decide`` it with the tick id and the time left until
   the tick's deadline (``scheduled + deadline_ms``); the clock never waits for the reply.

Between ticks the loop polls the service's socket until the next tick is due, handling replies and
deadlines as they come:

* a legal call for the newest request before its deadline -> ``hands.dispatch(call)`` (returns at once;
  the actuator runs in its own lane), outcome ``ok``;
* an error or an illegal call before the deadline -> never applied, the fallback acts, ``error``;
* the deadline passes with no reply -> the fallback acts, ``fallback``; if the reply shows up later the
  tick becomes ``late`` (still not applied). An unanswered request is dropped after
  ``in_flight_timeout_ms`` so a dead service cannot block the loop; ticks keep their rate meanwhile.

Every tick gets exactly one ``TickRecord`` and one final outcome: ``sum(outcomes) == ticks``. The
records, the requests in flight and what a reply does to its tick are ``control_loop.tick_outcomes``,
shared with the crowd loop (``control_loop.crowd``: one loop for every agent of a multi-agent world).
The loop's collaborators: ``policy`` (``control_loop.policy.Policy``: ``send_decide``, ``poll``, answered
with typed replies, read by ``control_loop.replies``), ``world`` (``control_loop.world.World``:
``observe``, ``fallback``, ``episodes_done``) and ``hands`` (``control_loop.futures.AsyncFC``:
``dispatch``, ``history_lines``; may be None).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tickcall.agent.messages import DecideReply
from tickcall.control_loop.config import LoopSettings
from tickcall.control_loop.policy import Policy
from tickcall.control_loop.priority import raise_priority
from tickcall.control_loop.progress import Throttle
from tickcall.control_loop.records import TickRecord
from tickcall.control_loop.tick_outcomes import Pending, Requests, TickBook, settle, settle_stale
from tickcall.control_loop.world import World
from tickcall.models.calls import Call
from tickcall.models.format import Turn

from tickcall.timing import RateKeeper, Slot

__all__ = ["ControlLoop", "LoopResult", "LoopSettings"]

log = logging.getLogger("tickcall.loop")

POLL_GUARD_S = 0.0015  # stop polling this long before a tick is due; the rate keeper sleeps the rest
MIN_POLL_MS = 1.0  # socket polls have 1 ms resolution: shorter waits are slept instead


@dataclass
class LoopResult:
    """What ``run`` returns: the records (tick order), timing, and what did not fit a tick."""

    records: list[TickRecord]
    t0: float
    elapsed_s: float
    stray_replies: int = 0
    warnings: list[str] = field(default_factory=list)
    stopped: str = ""
    priority: str = "normal"


class ControlLoop:
    """Runs the tick loop in the calling thread (the Ray actor runs it in its own thread)."""

    def __init__(
        self,
        settings: LoopSettings,
        policy: Policy,
        world: World,
        hands: Any = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if settings.in_flight not in ("skip", "supersede"):
            raise ValueError(f"in_flight must be 'skip' or 'supersede', got {settings.in_flight!r}")
        self.s = settings
        self.policy = policy
        self.world = world
        self.hands = hands
        self._clock = clock
        self._sleep = sleep
        self._stop = threading.Event()
        self._book = TickBook()  # every record and its outcome (control_loop.tick_outcomes)
        self._requests = Requests()  # in flight and given up on, keyed by tick
        self._newest: int | None = None
        self._stray = 0
        self._missed = 0
        self._warn = Throttle(settings.warn_interval_s, clock)
        self._behind_since_warn = 0
        self._warnings: list[str] = []
        self._t0: float | None = None
        self._planned: int | None = None
        self._running = False

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        """Ask a running loop to finish after the current tick (thread-safe)."""
        self._stop.set()

    def snapshot(self, since: int = 0) -> tuple[list[dict[str, Any]], int]:
        """The records of ticks ``>= since`` as dicts, and the tick a later snapshot must start from:
        the oldest that may still change (unresolved, or recent enough for a late reply to update).
        The driver keeps these so that a loop that dies still leaves its ticks (thread-safe)."""
        margin = int(self.s.rate_hz * self.s.in_flight_timeout_s) + 1  # ticks a late reply may reach
        return self._book.snapshot(since, margin)

    def status(self) -> dict[str, Any]:
        """A cheap snapshot for the live progress line (thread-safe)."""
        live = self._book.live()
        ticks = live["records"]
        now = self._clock()
        elapsed = (now - self._t0) if self._t0 is not None else 0.0
        ran = ticks - self._missed
        status = {
            "running": self._running,
            "ticks": ticks,
            "ticks_planned": self._planned,
            "elapsed_s": elapsed,
            "achieved_hz": (ran / elapsed) if elapsed > 0 else 0.0,
            "outcomes": live["outcomes"],
            "unresolved": live["unresolved"],
            "latency_p50_ms": live["latency_p50_ms"],
            "latency_p99_ms": live["latency_p99_ms"],
            "warnings": list(self._warnings[-3:]),
        }
        eps = getattr(self.world, "episodes_done", None)
        if callable(eps):
            try:
                status["episodes_done"] = eps()
                rets = self.world.episodes()
                status["last_return"] = rets[-1]["return"] if rets else None
            except Exception:  # the progress line must never break the run
                pass
        return status

    # ------------------------------------------------------------------ run
    def run(
        self, *, max_ticks: int | None = None, duration_s: float | None = None, episodes: int | None = None
    ) -> LoopResult:
        """Tick until ``max_ticks`` ticks, ``duration_s`` seconds, ``episodes`` finished episodes or
        ``stop()``, whichever comes first; then wait for outstanding replies and return the records."""
        if max_ticks is None and duration_s is None and episodes is None:
            raise ValueError("give max_ticks, duration_s or episodes: the loop needs an end")
        limit = max_ticks
        if duration_s is not None:
            by_time = max(1, int(round(duration_s * self.s.rate_hz)))
            limit = by_time if limit is None else min(limit, by_time)
        self._planned = limit
        rk = RateKeeper(self.s.rate_hz, clock=self._clock, sleep=self._sleep)
        priority, restore = raise_priority(self.s.rt_priority)
        if priority.startswith("refused"):
            self._warnings.append(f"real-time priority {priority}")
            log.warning("real-time priority %s", priority)
        self._t0 = rk.start()
        self._running = True
        stopped = ""
        try:
            while True:
                if self._stop.is_set():
                    stopped = "stop requested"
                    break
                if limit is not None and rk.next_index >= limit:
                    stopped = "tick limit"
                    break
                self._pump_until(rk.next_time() - POLL_GUARD_S)
                slot = rk.wait()
                for k in slot.skipped_indices:
                    if limit is not None and k >= limit:
                        break
                    self._missed_period(k, self._rel_ms(rk.deadline(k)))
                    self._missed += 1
                if slot.skipped:
                    self._behind(f"{slot.skipped} missed period(s) before tick {slot.index}")
                if limit is not None and slot.index >= limit:
                    stopped = "tick limit"
                    break
                self._tick(slot)
                if episodes is not None and self._episodes_done() >= episodes:
                    stopped = "episodes done"
                    break
            end = self._clock()
            self._drain()
        finally:
            self._running = False
            restore()
        self._book.finalize()  # cannot leave anything after _drain; kept as a safety net
        records = sorted(self._book.records, key=self._order)
        return LoopResult(
            records=records,
            t0=self._t0,
            elapsed_s=end - self._t0,
            stray_replies=self._stray,
            warnings=list(self._warnings),
            stopped=stopped,
            priority=priority,
        )

    # ------------------------------------------------------------------ one tick
    def _tick(self, slot: Slot) -> None:
        self._collect(0.0)
        self._expire(self._clock())
        rec = TickRecord(
            tick=slot.index, scheduled_ms=self._rel_ms(slot.scheduled), lateness_ms=slot.lateness_ms
        )
        if slot.lateness_ms > 0.5e3 * self.s.period_s:
            self._behind(f"tick {slot.index} started {slot.lateness_ms:.1f} ms late")
        try:
            obs = self.world.observe()
        except Exception as exc:
            self._add(rec)
            self._resolve(rec, "error", f"observation failed: {type(exc).__name__}: {exc}")
            self._fallback(rec)
            return
        now = self._clock()
        obs_at = now
        rec.obs_age_ms = max(0.0, (now - obs.taken_at) * 1e3)
        rec.episode = obs.episode
        rec.played = getattr(obs, "played", None)  # an engine's AI's call on this observation, if it sent one
        self._add(rec)
        observed = getattr(self.world, "observed", None)
        if observed is not None:  # optional hook: a world that tags its calls with their tick (engine bridge)
            observed(slot.index, obs)

        if self._newest is not None and self._newest in self._requests.pending:
            if self.s.in_flight == "skip":
                self._resolve(rec, "skipped", "in_flight")
                return
            self._requests.supersede(self._newest, self._book)  # its reply will not be applied

        history = []
        if self.hands is not None and self.s.history_len > 0:
            try:
                history = list(self.hands.history_lines(self.s.history_len))
            except Exception as exc:  # history is advisory; the tick goes on without it
                log.debug("history_lines failed: %s", exc)
        turn = Turn(query=obs.text, history=history)
        rec.turn = {"query": turn.query, "history": list(turn.history)}  # ticks.jsonl is training data too
        deadline_at = slot.scheduled + self.s.deadline_s
        budget_ms = max(0.001, (deadline_at - self._clock()) * 1e3)
        try:
            msg_id = self.policy.send_decide(turn, slot.index, budget_ms)
        except Exception as exc:
            self._resolve(rec, "error", f"send failed: {type(exc).__name__}: {exc}")
            self._fallback(rec)
            return
        sent_at = self._clock()
        rec.sent = True
        self._requests.pending[slot.index] = Pending(
            tick=slot.index,
            msg_id=msg_id,
            sent_at=sent_at,
            deadline_at=deadline_at,
            obs_at=obs_at,
            record=rec,
        )
        self._newest = slot.index

    # ------------------------------------------------------------------ replies and deadlines
    def _pump_until(self, t_end: float) -> None:
        """Handle replies and deadlines until ``t_end`` (monotonic s); never returns late by design."""
        while True:
            now = self._clock()
            self._expire(now)
            if now >= t_end:
                return
            wake = self._requests.wake(t_end, self.s.in_flight_timeout_s)
            wait_ms = (wake - now) * 1e3
            if wait_ms < MIN_POLL_MS:  # too short for a socket poll: sleep it, then look once
                self._sleep(max(0.0, wake - now))
                self._collect(0.0)
                if wake >= t_end:
                    return
                continue
            self._collect(wait_ms)

    def _collect(self, timeout_ms: float) -> None:
        try:
            replies = self.policy.poll(timeout_ms)
        except Exception as exc:
            self._behind(f"policy poll failed: {type(exc).__name__}: {exc}")
            if timeout_ms > 0:
                self._sleep(timeout_ms / 1e3)
            return
        if replies:
            now = self._clock()
            for reply in replies:
                self._on_reply(reply, now)

    def _missed_period(self, tick: int, scheduled_ms: float) -> None:
        """The record(s) of a tick the rate keeper could not start (``skipped``, ``missed_period``)."""
        self._add(TickRecord(tick=tick, scheduled_ms=scheduled_ms, outcome="skipped", reason="missed_period"))

    @staticmethod
    def _order(rec: TickRecord) -> Any:
        """The order of ``LoopResult.records``."""
        return rec.tick

    @staticmethod
    def _key(reply: DecideReply) -> Any:
        """The key a reply's request is kept under in ``_requests`` (here its tick: one request a tick)."""
        return reply.tick

    def _on_reply(self, reply: DecideReply, now: float) -> None:
        key = self._key(reply)
        p = self._requests.pending.pop(key, None) if key is not None else None
        if p is None:  # a reply to a request the loop no longer waits for (superseded, dropped), or to none
            old = self._requests.stale.pop(key, None) if key is not None else None
            if old is None:
                self._stray += 1
            else:
                settle_stale(old, reply, now, self._book)
            return
        settle(p, reply, now, self._book, apply=self._apply, fallback=self._fallback, clock=self._clock)

    def _apply(self, call: Call, p: Pending) -> None:
        if self.hands is not None:
            self.hands.dispatch(call, seq=p.tick)
        else:
            self.world.apply_call(call)

    def _expire(self, now: float) -> None:
        self._requests.expire(now, self.s.in_flight_timeout_s, self._book, self._on_deadline)

    def _on_deadline(self, p: Pending) -> None:
        if p.tick == self._newest:  # an older request's tick already had its fallback or a newer call
            self._fallback(p.record)

    def _drain(self) -> None:
        """After the last tick: handle replies until every request is answered or dropped, for at most
        ``min(in_flight_timeout, 1 s)`` past the last deadline (so late replies are told from lost ones)."""
        pending = self._requests.pending
        if not pending:
            return
        end = max(p.deadline_at for p in pending.values()) + min(self.s.in_flight_timeout_s, 1.0)
        while pending and self._clock() < end:
            self._pump_until(min(end, self._clock() + 0.05))
        self._expire(self._clock())
        self._collect(0.0)

    # ------------------------------------------------------------------ bookkeeping
    def _add(self, rec: TickRecord) -> None:
        self._book.add(rec)

    def _resolve(self, rec: TickRecord, outcome: str, reason: str) -> None:
        self._book.resolve(rec, outcome, reason)

    def _fallback(self, rec: TickRecord) -> None:
        try:
            rec.fallback = self.world.fallback(self.s.fallback)
        except Exception as exc:
            rec.fallback = f"failed: {type(exc).__name__}: {exc}"

    def _behind(self, what: str) -> None:
        self._behind_since_warn += 1
        if self._warn.ready():
            msg = f"control loop is falling behind at {self.s.rate_hz:g} Hz: {what}" + (
                f" (+{self._behind_since_warn - 1} more since the last warning)"
                if self._behind_since_warn > 1
                else ""
            )
            self._behind_since_warn = 0
            self._warnings.append(msg)
            log.warning(msg)

    def _episodes_done(self) -> int:
        fn = getattr(self.world, "episodes_done", None)
        return int(fn()) if callable(fn) else 0

    def _rel_ms(self, t: float) -> float:
        return (t - (self._t0 or 0.0)) * 1e3
