"""AsyncFC: dispatch decided calls to actuators without waiting for them, and lose none.

``dispatch(call) -> CallFuture`` takes one lock, records the call and wakes a lane worker: it
returns in microseconds whatever the actuators do. Each lane runs its own workers (``executors``:
threads, or child processes for CPU-heavy actuators); see ``lanes`` for the policies. This module
is the state machine: accept, admit to a lane, start, finish; ``deps`` holds ``@fN`` inputs,
``runtime`` the per-lane state.

Invariants
----------
* Every accepted call ends in exactly one terminal state; ``ledger.accepted == ledger.finished +
  ledger.in_flight`` at every moment the lock is free.
* A result that comes after its call's terminal state (timed out, cancelled, superseded) is recorded
  as late (``ledger.late``, ``future.late_result``) and never reported as success.
* A call that names ``"@fN"`` as a whole argument value starts only after ``fN`` is ``done``, with
  that value substituted; if ``fN`` ends any other way the call is rejected without running.
* Timeouts run on the injected clock: ``poll()`` (called by the control loop each tick, and by a
  watchdog thread every ``watchdog_s`` real seconds when that is not None) applies them; a completion
  that arrives past its deadline is a timeout whether or not ``poll`` ran first.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from tickcall.control_loop.futures.deps import Dependents, references, substitute
from tickcall.control_loop.futures.executors import EXECUTORS
from tickcall.control_loop.futures.history import status_line
from tickcall.control_loop.futures.lanes import Lane, declare_lanes
from tickcall.control_loop.futures.ledger import Ledger
from tickcall.control_loop.futures.runtime import ABANDONING, LaneRuntime, Worker, overdue, short_reason
from tickcall.control_loop.futures.samples import Samples
from tickcall.control_loop.futures.states import CallContext, CallFuture, CallState
from tickcall.models.calls import Call

DEFAULT_LANE = Lane("default", policy="fifo", queue=16)


class AsyncFC:
    """The futures layer. Build it, ``dispatch`` calls, read ``history_lines`` and ``metrics``,
    ``shutdown`` at the end (also a context manager).

    ``lanes``: the declared lanes. ``actuators``: lane name -> actuator (a callable ``fn(call)``;
    ``fn(call, ctx)`` for ``context=True``; a factory for ``factory=True``; an import path
    ``"module:attr"`` for ``executor="process"``). An actuator whose name has no declared lane gets
    a lane like ``default_lane`` under its own name. A tool routed to no lane goes to the lane named
    ``default_lane.name`` when ``actuators`` has that key, else its call is rejected.
    ``clock``: seconds, monotonic (injectable). ``watchdog_s``: real seconds between timeout checks
    (None: only explicit ``poll``). ``param_order``: tool name -> parameter names, for history lines.
    ``keep``: finished futures kept for lookup, history and ``@fN`` references.
    """

    def __init__(self, lanes: Iterable[Lane] = (), actuators: Mapping[str, Any] | None = None, *,
                 clock: Callable[[], float] = time.monotonic, default_lane: Lane = DEFAULT_LANE,
                 watchdog_s: float | None = 0.01, param_order: Mapping[str, Sequence[str]] | None = None,
                 keep: int = 4096, max_ledger_entries: int | None = 100_000) -> None:
        actuators = dict(actuators or {})
        self.clock = clock
        self.ledger = Ledger(max_entries=max_ledger_entries)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._lanes: dict[str, LaneRuntime] = {}
        self._routes: dict[str, str] = {}
        self._param_order = dict(param_order or {})
        self._futures: dict[str, CallFuture] = {}
        self._open: dict[str, CallFuture] = {}
        self._finished_ids: deque[str] = deque()
        self._recent: deque[CallFuture] = deque(maxlen=64)
        self._dependents = Dependents()
        self._keep = max(16, int(keep))
        self._n = 0
        self._closing = False
        self._closed = False
        self._callbacks: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._dispatch_s = Samples()
        self._start_s = Samples()
        self._complete_s = Samples()
        self._run_s = Samples()
        self._callback_errors = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

        for lane in declare_lanes(lanes, actuators, default_lane):
            EXECUTORS[lane.executor].check_spec(lane, actuators[lane.name])
            self._lanes[lane.name] = LaneRuntime(lane, actuators[lane.name], self._lock)
            self._routes.update(dict.fromkeys(lane.tools, lane.name))
        self._default = default_lane.name if default_lane.name in self._lanes else None
        for rt in self._lanes.values():  # build every actuator before any worker starts
            EXECUTORS[rt.lane.executor].prepare(rt)
        for rt in self._lanes.values():
            self._start_lane(rt)
        if watchdog_s is not None:
            t = threading.Thread(target=self._watchdog, args=(float(watchdog_s),), name="asyncfc-watchdog",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    # ------------------------------------------------------------------ setup
    def _start_lane(self, rt: LaneRuntime) -> None:
        with self._lock:
            rt.up = True
            for _ in range(rt.lane.capacity):
                self._spawn_worker(rt)

    def _spawn_worker(self, rt: LaneRuntime) -> Worker:
        w = Worker(rt)
        w.thread = threading.Thread(target=EXECUTORS[rt.lane.executor].run, args=(self, w),
                                    name=f"asyncfc-{rt.lane.name}", daemon=True)
        rt.workers.append(w)
        w.thread.start()
        self._threads = [t for t in self._threads if t.is_alive()]  # abandoned workers that ended
        self._threads.append(w.thread)
        return w

    # ------------------------------------------------------------------ public API
    @property
    def lanes(self) -> dict[str, Lane]:
        return {name: rt.lane for name, rt in self._lanes.items()}

    def lane_for(self, tool: str) -> str | None:
        """The lane a tool's calls go to (None: such calls are rejected)."""
        return self._routes.get(tool, self._default)

    def dispatch(self, call: Call | Mapping[str, Any], *, timeout_start_s: float | None = None,
                 timeout_complete_s: float | None = None, seq: int | None = None) -> CallFuture:
        """Accept a call and return its future at once (never waits on an actuator).

        ``seq``: the caller's sequence number (e.g. the tick id); in a ``latest`` lane a seq below
        the newest one seen is rejected as stale. Timeouts default to the lane's (seconds).
        A call that cannot run (unknown tool, full queue, stale, failed input, after shutdown) is
        still accepted into the ledger and ends ``rejected`` with the reason in ``error``.
        """
        t0 = time.perf_counter()
        if not isinstance(call, Call):
            if isinstance(call, Mapping) and "name" in call:
                call = Call.from_dict(call)
            else:
                raise TypeError(f"dispatch needs a Call (or a {{'name', 'arguments'}} dict), not {type(call).__name__}")
        if not isinstance(call.arguments, dict):
            raise TypeError("Call.arguments must be a dict")
        with self._lock:
            fut = self._accept(call, timeout_start_s, timeout_complete_s, seq)
            self._dispatch_s.add(time.perf_counter() - t0)
        self._run_callbacks()
        return fut

    def call(self, call: Call | Mapping[str, Any], timeout: float | None = None, **kw: Any) -> CallFuture:
        """Synchronous dispatch: ``dispatch`` then wait (real seconds) for the outcome. Blocks the caller."""
        fut = self.dispatch(call, **kw)
        fut.wait(timeout)
        return fut

    def resolve(self, call_id: str, result: Any = None, *, error: str | BaseException | None = None) -> bool:
        """Complete a running call from outside (an engine's ack, a result message).

        Returns True when this became the call's outcome (done or failed); False when the call was
        already terminal (the value is recorded as late) or the completion came past its timeout.
        Raises ``KeyError`` for an unknown id and ``ValueError`` for a call that has not started.
        """
        with self._lock:
            fut = self._futures.get(call_id)
            if fut is None:
                raise KeyError(f"unknown call {call_id!r}")
            if fut.state in (CallState.WAITING, CallState.QUEUED):
                raise ValueError(f"{call_id} has not started (state {fut.state.value}); it cannot be resolved")
            err = None if error is None else (error if isinstance(error, str) else short_reason(error))
            self._complete(fut, result, err)
            ok = fut.state in (CallState.DONE, CallState.FAILED) and not fut.has_late
        self._run_callbacks()
        return ok

    def cancel(self, call_id: str, reason: str = "cancelled") -> bool:
        """Cancel a call that is not terminal yet (a running actuator is told via ``ctx.cancelled``)."""
        with self._lock:
            fut = self._futures.get(call_id)
            if fut is None:
                raise KeyError(f"unknown call {call_id!r}")
            if fut.done():
                return False
            self._finish(fut, CallState.CANCELLED, reason)
        self._run_callbacks()
        return True

    def poll(self) -> int:
        """Apply timeouts at the clock's current time; returns how many calls timed out."""
        now = self.clock()
        count = 0
        with self._lock:
            for fut in list(self._open.values()):
                why = None if fut.done() else overdue(fut, now)
                if why is not None:
                    self._finish(fut, CallState.TIMED_OUT, why)
                    count += 1
        self._run_callbacks()
        return count

    def future(self, call_id: str) -> CallFuture | None:
        with self._lock:
            return self._futures.get(call_id)

    def futures(self) -> list[CallFuture]:
        """The kept futures (all in flight plus the newest ``keep`` finished), oldest first."""
        with self._lock:
            return list(self._futures.values())

    def in_flight(self) -> list[CallFuture]:
        with self._lock:
            return list(self._open.values())

    def applied(self, lane: str) -> CallFuture | None:
        """``latest`` lanes: the newest call that ended done (the set-point in force)."""
        with self._lock:
            return self._lanes[lane].applied

    def history_lines(self, limit: int = 8, max_chars: int = 40) -> list[str]:
        """Status of in-flight calls (all of them, up to ``limit``) and the most recent finished ones,
        oldest first, e.g. ``move(x=3)@f17 running 120ms``."""
        now = self.clock()
        with self._lock:
            live = list(self._open.values())[-limit:] if limit > 0 else []
            room = max(0, limit - len(live))
            done = [f for f in self._recent if f.id in self._futures][-room:] if room else []
            chosen = sorted(live + done, key=lambda f: f.n)
            return [status_line(f, now, self._param_order, max_chars) for f in chosen]

    def metrics(self) -> dict[str, Any]:
        """Counts and times: ``dispatch_us`` (real µs), ``start_ms``/``complete_ms``/``run_ms`` (clock ms),
        ``states`` (terminal counts), ``in_flight``, per-lane queue/running/restarts."""
        with self._lock:
            return {
                "accepted": self.ledger.accepted, "finished": self.ledger.finished,
                "in_flight": self.ledger.in_flight, "started": self.ledger.started,
                "states": {s.value: self.ledger.by_state.get(s.value, 0) for s in CallState if s.terminal},
                "late_results": self.ledger.late, "restarts": self.ledger.restarts,
                "balanced": self.ledger.balanced(), "callback_errors": self._callback_errors,
                "dispatch_us": self._dispatch_s.summary(1e6, 1),
                "start_ms": self._start_s.summary(1e3, 2), "complete_ms": self._complete_s.summary(1e3, 2),
                "run_ms": self._run_s.summary(1e3, 2),
                "lanes": {name: rt.metrics() for name, rt in self._lanes.items()},
            }

    def settle(self, timeout_s: float = 5.0) -> bool:
        """Wait (real seconds) until no lane has work it could start and no actuator call is in progress.

        For tests and demos; False if that did not happen in time (e.g. an actuator is hung).
        """
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while any(rt.startable() or rt.invoking or (not rt.up and not self._closing)
                      for rt in self._lanes.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.05))
            return True

    def shutdown(self, timeout_s: float = 1.0, reason: str = "shutdown") -> None:
        """Stop: reject new calls, cancel waiting/queued ones, give running ones ``timeout_s`` real
        seconds to finish, cancel the rest, stop workers and child processes. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closing = True
            for fut in list(self._open.values()):
                if fut.state in (CallState.WAITING, CallState.QUEUED) and not fut.done():
                    self._finish(fut, CallState.CANCELLED, reason)
            deadline = time.monotonic() + timeout_s
            while self._open and time.monotonic() < deadline:
                self._changed.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            for fut in list(self._open.values()):
                if not fut.done():
                    self._finish(fut, CallState.CANCELLED, reason)
            self._closed = True
            workers = []
            for rt in self._lanes.values():
                for w in rt.workers:
                    w.abandoned = True
                    workers.append(w)
                rt.cond.notify_all()
            self._changed.notify_all()
        self._stop.set()
        for w in workers:
            EXECUTORS[w.rt.lane.executor].release(w)
        self._run_callbacks()
        me = threading.current_thread()
        join_until = time.monotonic() + 1.0  # hung actuator threads are daemons: do not wait on them long
        for t in self._threads:
            if t is not me:
                t.join(timeout=max(0.0, join_until - time.monotonic()))

    def __enter__(self) -> AsyncFC:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ internals (lock held)
    def _accept(self, call: Call, t_start: float | None, t_complete: float | None, seq: int | None) -> CallFuture:
        self._n += 1
        n = self._n
        lane_name = self.lane_for(call.name)
        rt = self._lanes.get(lane_name) if lane_name else None
        if rt is not None:
            t_start = rt.lane.timeout_start_s if t_start is None else t_start
            t_complete = rt.lane.timeout_complete_s if t_complete is None else t_complete
        if rt is not None and seq is None:
            key_seq = rt.max_seq if rt.max_seq is not None else 0
        else:
            key_seq = int(seq) if seq is not None else 0
        fut = CallFuture(self, n, call, lane_name if rt else None, key_seq, self.clock(), t_start, t_complete)
        fut.resolved_call = call
        self._futures[fut.id] = fut
        self._open[fut.id] = fut
        self.ledger.accept(fut.dispatched_at, fut.id, fut.lane)
        if self._closing:
            self._finish(fut, CallState.REJECTED, "shut down")
            return fut
        if rt is None:
            self._finish(fut, CallState.REJECTED, f"no lane for tool {call.name!r}")
            return fut
        if rt.lane.policy == "latest" and seq is not None and rt.max_seq is not None and seq < rt.max_seq:
            self._finish(fut, CallState.REJECTED, f"stale seq {seq} < {rt.max_seq}")
            return fut
        if seq is not None:
            rt.max_seq = seq if rt.max_seq is None else max(rt.max_seq, seq)
        refused = self._dependents.admit(fut, references(call), self._futures)
        if refused is not None:
            self._finish(fut, CallState.REJECTED, refused)
            return fut
        if fut._waiting_on:
            fut.state = CallState.WAITING
            return fut
        self._ready(fut)
        return fut

    def _ready(self, fut: CallFuture) -> None:
        """All inputs done: substitute them and enter the lane."""
        if fut._inputs:
            fut.resolved_call = substitute(fut.call, fut._inputs)
        rt = self._lanes[fut.lane]
        lane = rt.lane
        if lane.policy == "latest":
            others = list(rt.queue) + list(rt.running.values()) + ([rt.applied] if rt.applied else [])
            newest = max(others, key=lambda f: f.key, default=None)
            if newest is not None and newest.key > fut.key:
                self._finish(fut, CallState.SUPERSEDED, f"superseded by @{newest.id}", by=newest.id)
                return
            for old in list(rt.queue):
                self._finish(old, CallState.SUPERSEDED, f"superseded by @{fut.id}", by=fut.id)
        else:
            room = lane.queue + max(0, lane.capacity - len(rt.running))
            if len(rt.queue) >= room:
                self._finish(fut, CallState.REJECTED, f"queue full ({lane.queue})")
                return
        fut.state = CallState.QUEUED
        rt.queue.append(fut)
        rt.cond.notify()
        self._changed.notify_all()

    def _take(self, w: Worker) -> CallFuture | None:
        """Wait for a call this worker may start; mark it running. None: the worker must exit."""
        rt = w.rt
        while True:
            if self._closed or w.abandoned:
                return None
            if rt.startable():
                fut = rt.queue.popleft()
                now = self.clock()
                why = overdue(fut, now)
                if why is not None:
                    self._finish(fut, CallState.TIMED_OUT, why)
                    continue
                fut.state = CallState.RUNNING
                fut.started_at = now
                fut._ctx = CallContext(fut.id, rt.lane.name, deadline=(
                    now + fut.timeout_complete_s if fut.timeout_complete_s is not None else None),
                    seq=fut.seq)
                fut._invoking = True
                fut._worker = w
                rt.running[fut.id] = fut
                rt.invoking += 1
                w.fut = fut
                self.ledger.start(now, fut.id, rt.lane.name)
                self._start_s.add(now - fut.dispatched_at)
                return fut
            rt.cond.wait()

    def _complete(self, fut: CallFuture, result: Any, error: str | None) -> None:
        """An outcome for ``fut`` arrived (actuator return, child reply, ``resolve``)."""
        now = self.clock()
        if fut.done():
            self._record_late(fut, result, error, now)
            return
        why = overdue(fut, now)
        if why is not None:
            self._finish(fut, CallState.TIMED_OUT, why)
            self._record_late(fut, result, error, now)
            return
        if error is not None:
            self._finish(fut, CallState.FAILED, error)
            return
        rt = self._lanes[fut.lane]
        if rt.lane.policy == "latest" and rt.applied is not None and rt.applied.key > fut.key:
            self._finish(fut, CallState.SUPERSEDED, f"superseded by @{rt.applied.id}", by=rt.applied.id)
            self._record_late(fut, result, error, now)
            return
        fut.result = result
        if rt.lane.policy == "latest":
            rt.applied = fut
        self._finish(fut, CallState.DONE, None)

    def _record_late(self, fut: CallFuture, result: Any, error: str | None, now: float) -> None:
        fut.has_late = True
        fut.late_result = result
        fut.late_error = error
        what = f"error: {error}" if error is not None else "result"
        self.ledger.late_result(now, fut.id, fut.lane, f"{what} after {fut.state.value}")

    def _finish(self, fut: CallFuture, state: CallState, error: str | None, by: str | None = None) -> None:
        """The one place a call becomes terminal."""
        assert state.terminal and not fut.done(), (fut, state)
        prev = fut.state
        rt = self._lanes.get(fut.lane) if fut.lane else None
        fut.state = state
        fut.error = error
        fut.superseded_by = by
        fut.finished_at = self.clock()
        if rt is not None:
            if prev is CallState.QUEUED:
                with contextlib.suppress(ValueError):
                    rt.queue.remove(fut)
            elif prev is CallState.RUNNING:
                rt.running.pop(fut.id, None)
                if state in ABANDONING:
                    self._abandon(rt, fut)
            rt.cond.notify()
        if prev is CallState.WAITING:
            self._dependents.forget(fut)
        self.ledger.finish(fut.finished_at, fut.id, fut.lane, state, error)
        self._open.pop(fut.id, None)
        self._recent.append(fut)
        self._finished_ids.append(fut.id)
        while len(self._finished_ids) > self._keep:
            self._futures.pop(self._finished_ids.popleft(), None)
        if state is CallState.DONE:
            self._complete_s.add(fut.finished_at - fut.dispatched_at)
            if fut.started_at is not None:
                self._run_s.add(fut.finished_at - fut.started_at)
        fut._event.set()
        for cb in fut._callbacks:
            self._callbacks.append((cb, (fut,)))
        fut._callbacks = []
        self._changed.notify_all()
        for dep, ready in self._dependents.release(fut):
            if dep.done():  # ended by an earlier step of this cascade
                continue
            if ready:
                self._ready(dep)
            else:
                self._finish(dep, CallState.REJECTED, f"input @{fut.id} {state.value}")

    def _abandon(self, rt: LaneRuntime, fut: CallFuture) -> None:
        """A running call ended without its actuator's answer: tell the actuator, free the slot."""
        if fut._ctx is not None:
            fut._ctx.cancelled.set()
        if fut._pending is not None and fut._pending.on_cancel is not None:
            self._callbacks.append((fut._pending.on_cancel, ()))
        w = fut._worker
        if not fut._invoking or w is None or w.abandoned:
            return
        EXECUTORS[rt.lane.executor].abandon(self, rt, w)

    def _watchdog(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            try:
                self.poll()
            except Exception:  # never let the watchdog die; poll itself is guarded by the ledger
                self._callback_errors += 1

    def _run_callbacks(self) -> None:
        with self._lock:
            if not self._callbacks:
                return
            todo, self._callbacks = self._callbacks, []
        for fn, args in todo:
            try:
                fn(*args)
            except Exception:
                with self._lock:
                    self._callback_errors += 1

