"""AsyncFC: dispatch decided calls to actuators without waiting for them, and lose none.

``dispatch(call) -> CallFuture`` takes one lock, records the call and wakes a lane worker: it
returns in microseconds whatever the actuators do. Each lane runs its own workers (threads, or
child processes for CPU-heavy actuators); see ``lanes`` for the policies.

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
import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from tickcall.control_loop.futures.child import ChildActuator, ChildDied
from tickcall.control_loop.futures.deps import references, substitute
from tickcall.control_loop.futures.history import status_line
from tickcall.control_loop.futures.lanes import Lane
from tickcall.control_loop.futures.ledger import Ledger
from tickcall.control_loop.futures.samples import Samples
from tickcall.control_loop.futures.states import (
    ActuatorCrash,
    CallContext,
    CallFuture,
    CallState,
    Pending,
)
from tickcall.models.calls import Call

DEFAULT_LANE = Lane("default", policy="fifo", queue=16)

_ABANDONING = (CallState.TIMED_OUT, CallState.CANCELLED, CallState.SUPERSEDED)


class _Worker:
    """One lane worker: a thread (thread lanes) or a thread owning a child process (process lanes)."""

    __slots__ = ("rt", "abandoned", "thread", "child", "fut")

    def __init__(self, rt: _LaneRuntime) -> None:
        self.rt = rt
        self.abandoned = False  # replaced: exit after the current actuator call returns
        self.thread: threading.Thread | None = None
        self.child: ChildActuator | None = None
        self.fut: CallFuture | None = None


class _LaneRuntime:
    """Mutable state of one lane; every field is guarded by ``AsyncFC._lock``."""

    def __init__(self, lane: Lane, spec: Any, lock: threading.RLock) -> None:
        self.lane = lane
        self.spec = spec  # callable, factory, or "module:attr" for process lanes
        self.actuator: Callable[..., Any] | None = None
        self.queue: deque[CallFuture] = deque()
        self.running: dict[str, CallFuture] = {}
        self.cond = threading.Condition(lock)
        self.workers: list[_Worker] = []
        self.up = False  # actuator built and workers started
        self.max_seq: int | None = None
        self.applied: CallFuture | None = None  # latest lane: the newest call that ended done
        self.restarts = 0
        self.abandoned = 0
        self.invoking = 0
        self.last_error: str | None = None

    def startable(self) -> bool:
        return self.up and bool(self.queue) and len(self.running) < self.lane.capacity


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


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
        self._lanes: dict[str, _LaneRuntime] = {}
        self._routes: dict[str, str] = {}
        self._param_order = dict(param_order or {})
        self._futures: dict[str, CallFuture] = {}
        self._open: dict[str, CallFuture] = {}
        self._finished_ids: deque[str] = deque()
        self._recent: deque[CallFuture] = deque(maxlen=64)
        self._dependents: dict[str, list[CallFuture]] = {}
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

        declared = list(lanes)
        names = [lane.name for lane in declared]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate lane names in {names}")
        for name in actuators:
            if name not in names:
                declared.append(dataclasses.replace(default_lane, name=name, tools=(name,)))
        for lane in declared:
            if lane.name not in actuators:
                raise ValueError(f"lane {lane.name!r} has no actuator (actuators has {sorted(actuators)})")
            self._add_lane(lane, actuators[lane.name])
        self._default = default_lane.name if default_lane.name in self._lanes else None
        for rt in self._lanes.values():  # build every actuator before any worker starts
            if rt.lane.executor == "thread":
                rt.actuator = rt.spec() if rt.lane.factory else rt.spec
        for rt in self._lanes.values():
            self._start_lane(rt)
        if watchdog_s is not None:
            t = threading.Thread(target=self._watchdog, args=(float(watchdog_s),), name="asyncfc-watchdog",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    # ------------------------------------------------------------------ setup
    def _add_lane(self, lane: Lane, spec: Any) -> None:
        if lane.executor == "process":
            if not isinstance(spec, str):
                raise ValueError(f"process lane {lane.name!r} needs an import path 'module:attr', not {spec!r}")
        elif not callable(spec):
            raise ValueError(f"actuator of lane {lane.name!r} is not callable: {spec!r}")
        rt = _LaneRuntime(lane, spec, self._lock)
        self._lanes[lane.name] = rt
        for tool in lane.tools:
            if tool in self._routes:
                raise ValueError(f"tool {tool!r} is in lanes {self._routes[tool]!r} and {lane.name!r}")
            self._routes[tool] = lane.name

    def _start_lane(self, rt: _LaneRuntime) -> None:
        with self._lock:
            rt.up = True
            for _ in range(rt.lane.capacity):
                self._spawn_worker(rt)

    def _spawn_worker(self, rt: _LaneRuntime) -> _Worker:
        w = _Worker(rt)
        target = self._process_worker if rt.lane.executor == "process" else self._thread_worker
        w.thread = threading.Thread(target=target, args=(w,), name=f"asyncfc-{rt.lane.name}", daemon=True)
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
            err = None if error is None else (error if isinstance(error, str) else _reason(error))
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
                if fut.done():
                    continue
                if fut.state in (CallState.WAITING, CallState.QUEUED):
                    limit = fut.timeout_start_s
                    if limit is not None and now - fut.dispatched_at > limit:
                        self._finish(fut, CallState.TIMED_OUT, f"not started within {_ms(limit)}")
                        count += 1
                elif fut.state is CallState.RUNNING:
                    limit = fut.timeout_complete_s
                    if limit is not None and fut.started_at is not None and now - fut.started_at > limit:
                        self._finish(fut, CallState.TIMED_OUT, f"no result within {_ms(limit)}")
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
            lanes = {
                name: {"policy": rt.lane.policy, "executor": rt.lane.executor, "queued": len(rt.queue),
                       "running": len(rt.running), "restarts": rt.restarts, "abandoned_workers": rt.abandoned,
                       "up": rt.up, "last_error": rt.last_error}
                for name, rt in self._lanes.items()
            }
            return {
                "accepted": self.ledger.accepted, "finished": self.ledger.finished,
                "in_flight": self.ledger.in_flight, "started": self.ledger.started,
                "states": {s.value: self.ledger.by_state.get(s.value, 0) for s in CallState if s.terminal},
                "late_results": self.ledger.late, "restarts": self.ledger.restarts,
                "balanced": self.ledger.balanced(), "callback_errors": self._callback_errors,
                "dispatch_us": self._dispatch_s.summary(1e6, 1),
                "start_ms": self._start_s.summary(1e3, 2), "complete_ms": self._complete_s.summary(1e3, 2),
                "run_ms": self._run_s.summary(1e3, 2), "lanes": lanes,
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
            children = []
            for rt in self._lanes.values():
                for w in rt.workers:
                    w.abandoned = True
                    if w.child is not None:
                        children.append(w.child)
                rt.cond.notify_all()
            self._changed.notify_all()
        self._stop.set()
        for child in children:
            child.kill()
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
        refs = references(call)
        for ref in refs:
            src = self._futures.get(ref)
            if src is None or src.n >= n:
                self._finish(fut, CallState.REJECTED, f"unknown future @{ref}")
                return fut
            if src.done() and src.state is not CallState.DONE:
                self._finish(fut, CallState.REJECTED, f"input @{ref} {src.state.value}")
                return fut
        for ref in refs:
            src = self._futures[ref]
            if src.state is CallState.DONE:
                fut._inputs[ref] = src.result
            else:
                fut._waiting_on.add(ref)
                self._dependents.setdefault(ref, []).append(fut)
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
            if lane.preempt:
                for old in list(rt.running.values()):
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

    def _take(self, w: _Worker) -> CallFuture | None:
        """Wait for a call this worker may start; mark it running. None: the worker must exit."""
        rt = w.rt
        while True:
            if self._closed or w.abandoned:
                return None
            if rt.startable():
                fut = rt.queue.popleft()
                now = self.clock()
                limit = fut.timeout_start_s
                if limit is not None and now - fut.dispatched_at > limit:
                    self._finish(fut, CallState.TIMED_OUT, f"not started within {_ms(limit)}")
                    continue
                fut.state = CallState.RUNNING
                fut.started_at = now
                fut._ctx = CallContext(fut.id, rt.lane.name, deadline=(
                    now + fut.timeout_complete_s if fut.timeout_complete_s is not None else None))
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
        limit = fut.timeout_complete_s
        if limit is not None and fut.started_at is not None and now - fut.started_at > limit:
            self._finish(fut, CallState.TIMED_OUT, f"no result within {_ms(limit)}")
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
                if state in _ABANDONING:
                    self._abandon(rt, fut)
            rt.cond.notify()
        if prev is CallState.WAITING:
            for ref in fut._waiting_on:
                deps = self._dependents.get(ref)
                if deps and fut in deps:
                    deps.remove(fut)
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
        for dep in self._dependents.pop(fut.id, []):
            if dep.done():
                continue
            if state is CallState.DONE:
                dep._waiting_on.discard(fut.id)
                dep._inputs[fut.id] = fut.result
                if not dep._waiting_on:
                    self._ready(dep)
            else:
                self._finish(dep, CallState.REJECTED, f"input @{fut.id} {state.value}")

    def _abandon(self, rt: _LaneRuntime, fut: CallFuture) -> None:
        """A running call ended without its actuator's answer: tell the actuator, free the slot."""
        if fut._ctx is not None:
            fut._ctx.cancelled.set()
        if fut._pending is not None and fut._pending.on_cancel is not None:
            self._callbacks.append((fut._pending.on_cancel, ()))
        w = fut._worker
        if not fut._invoking or w is None or w.abandoned:
            return
        if rt.lane.executor == "process":
            if w.child is not None:
                w.child.kill()  # the worker sees the child die, records it and starts a fresh one
            return
        # a thread stuck in the actuator: leave it, and start a replacement so the lane keeps its k workers
        w.abandoned = True
        rt.abandoned += 1
        if w in rt.workers:
            rt.workers.remove(w)
        if not self._closing:
            self._spawn_worker(rt)

    def _crash_lane(self, rt: _LaneRuntime, reason: str) -> None:
        """Thread lane: the actuator raised ActuatorCrash. Fail its running calls, restart it."""
        for fut in list(rt.running.values()):
            if not fut.done():
                fut._invoking = False  # its thread is abandoned below; no replacement per call
                if fut._ctx is not None:
                    fut._ctx.cancelled.set()
                self._finish(fut, CallState.FAILED, f"actuator crashed: {reason}")
        for w in rt.workers:
            w.abandoned = True
        rt.abandoned += len(rt.workers)
        rt.workers = []
        rt.up = False
        rt.restarts += 1
        rt.last_error = reason
        self.ledger.restart(self.clock(), rt.lane.name, f"crashed: {reason}")
        rt.cond.notify_all()
        if self._closing:
            return
        if rt.lane.factory:
            t = threading.Thread(target=self._rebuild, args=(rt,), name=f"asyncfc-restart-{rt.lane.name}",
                                 daemon=True)
            t.start()
            self._threads.append(t)
        else:
            rt.up = True
            for _ in range(rt.lane.capacity):
                self._spawn_worker(rt)

    def _actuator_unavailable(self, rt: _LaneRuntime, what: str, exc: BaseException) -> None:
        """An actuator could not be (re)built: record it and fail the call at the head of its queue."""
        with self._lock:
            rt.last_error = f"{what} failed: {_reason(exc)}"
            self.ledger.restart(self.clock(), rt.lane.name, rt.last_error)
            if rt.queue:
                self._finish(rt.queue[0], CallState.FAILED, f"actuator unavailable: {_reason(exc)}")
        self._run_callbacks()

    def _rebuild(self, rt: _LaneRuntime) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                actuator = rt.spec()
            except Exception as exc:
                self._actuator_unavailable(rt, "restart", exc)
                self._stop.wait(backoff)
                backoff = min(1.0, backoff * 2)
                continue
            with self._lock:
                if self._closing:
                    return
                rt.actuator = actuator
                rt.up = True
                for _ in range(rt.lane.capacity):
                    self._spawn_worker(rt)
                self._changed.notify_all()
            return

    # ------------------------------------------------------------------ worker threads
    def _thread_worker(self, w: _Worker) -> None:
        rt = w.rt
        lane = rt.lane
        while True:
            with self._lock:
                fut = self._take(w)
                if fut is None:
                    return
                actuator = rt.actuator
                call = fut.resolved_call or fut.call
                ctx = fut._ctx
            out: Any = None
            error: str | None = None
            crash: str | None = None
            try:
                out = actuator(call, ctx) if lane.context else actuator(call)  # type: ignore[misc]
            except ActuatorCrash as exc:
                crash = _reason(exc)
            except Exception as exc:
                error = _reason(exc)
            except BaseException as exc:  # SystemExit / KeyboardInterrupt inside an actuator thread
                crash = f"{type(exc).__name__}: {exc}"
            with self._lock:
                fut._invoking = False
                w.fut = None
                rt.invoking -= 1
                if crash is not None:
                    self._complete(fut, None, f"actuator crashed: {crash}")
                    if not w.abandoned and not self._closed:
                        self._crash_lane(rt, crash)
                elif isinstance(out, Pending):
                    if not fut.done():
                        fut._pending = out  # stays running until resolve / timeout / cancel
                    elif fut.state in _ABANDONING and out.on_cancel is not None:
                        self._callbacks.append((out.on_cancel, ()))
                else:
                    self._complete(fut, out, error)
                self._changed.notify_all()
                leave = w.abandoned or self._closed
            self._run_callbacks()
            if leave:
                return

    def _process_worker(self, w: _Worker) -> None:
        rt = w.rt
        backoff = 0.05
        while not (self._closed or w.abandoned):
            if w.child is None:
                try:
                    child = ChildActuator(rt.spec, factory=rt.lane.factory)
                except Exception as exc:
                    self._actuator_unavailable(rt, "start", exc)
                    self._stop.wait(backoff)
                    backoff = min(1.0, backoff * 2)
                    continue
                with self._lock:
                    w.child = child
                    if self._closed or w.abandoned:
                        break
                backoff = 0.05
            with self._lock:
                fut = self._take(w)
                if fut is None:
                    break
                call = fut.resolved_call or fut.call
                child = w.child
            reply: dict[str, Any] | None = None
            died: str | None = None
            try:
                reply = child.request(fut.n, call)
            except ChildDied as exc:
                died = str(exc)
            with self._lock:
                fut._invoking = False
                w.fut = None
                rt.invoking -= 1
                if died is not None:
                    w.child = None
                    if fut.done():
                        if not self._closed:
                            self.ledger.restart(self.clock(), rt.lane.name,
                                                f"restarted after {fut.id} {fut.state.value}")
                    else:
                        rt.restarts += 1
                        rt.last_error = died
                        self.ledger.restart(self.clock(), rt.lane.name, f"crashed: {died}")
                        self._complete(fut, None, f"actuator crashed: {died}")
                elif reply.get("ok"):
                    self._complete(fut, reply.get("result"), None)
                else:
                    self._complete(fut, None, str(reply.get("error") or "actuator error"))
                self._changed.notify_all()
            if died is not None:
                child.close()
            self._run_callbacks()
        if w.child is not None:
            w.child.close()
            w.child = None

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


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"
