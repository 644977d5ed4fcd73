"""How a lane's workers run its actuator: in threads of this process, or in child processes.

``core.AsyncFC`` owns the state machine (accept, queue, start, finish); an executor owns what
happens between a call's start and its outcome. Each worker thread runs ``Executor.run``: take a
startable call (``AsyncFC._take``), invoke the actuator outside the lock, hand the outcome back
(``AsyncFC._complete``). Executors use the core's package-internal methods and hold its lock
whenever they touch a ``LaneRuntime`` or a ``CallFuture``.

* ``thread``: the actuator is a Python callable. A call stuck past its timeout leaves its thread
  behind (it cannot be killed) and a replacement starts, so the lane keeps its ``k`` workers.
  ``ActuatorCrash`` fails the lane's running calls and restarts the actuator (rebuilt by its
  factory for ``factory=True`` lanes).
* ``process``: the actuator is an import path run in a child process per worker (see ``child``,
  ``procworker``). Why: a CPU-heavy pure-Python actuator in a thread shares the GIL with decoding
  and delays it (FIELD-NOTES); a child does not. A child that dies fails its call and is restarted;
  a call that ends without its answer (timeout, cancel, supersede) kills its child.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from tickcall.control_loop.futures.child import ChildActuator, ChildDied
from tickcall.control_loop.futures.lanes import Lane
from tickcall.control_loop.futures.runtime import ABANDONING, LaneRuntime, Worker, short_reason
from tickcall.control_loop.futures.states import ActuatorCrash, CallState, Pending

if TYPE_CHECKING:
    from tickcall.control_loop.futures.core import AsyncFC

_BACKOFF_S = (0.05, 1.0)  # first and longest wait (real seconds) between failed actuator (re)starts


def _actuator_unavailable(fc: AsyncFC, rt: LaneRuntime, what: str, exc: BaseException) -> None:
    """An actuator could not be (re)built: record it and fail the call at the head of its queue."""
    with fc._lock:
        rt.last_error = f"{what} failed: {short_reason(exc)}"
        fc.ledger.restart(fc.clock(), rt.lane.name, rt.last_error)
        if rt.queue:
            fc._finish(rt.queue[0], CallState.FAILED, f"actuator unavailable: {short_reason(exc)}")
    fc._run_callbacks()


class ThreadExecutor:
    """Actuators as callables in worker threads of this process."""

    name = "thread"

    def check_spec(self, lane: Lane, spec: Any) -> None:
        if not callable(spec):
            raise ValueError(f"actuator of lane {lane.name!r} is not callable: {spec!r}")

    def prepare(self, rt: LaneRuntime) -> None:
        """Build the actuator (before any worker of any lane starts)."""
        rt.actuator = rt.spec() if rt.lane.factory else rt.spec

    def run(self, fc: AsyncFC, w: Worker) -> None:
        """Worker thread body: one actuator call at a time until the worker is abandoned or closed."""
        rt = w.rt
        lane = rt.lane
        while True:
            with fc._lock:
                fut = fc._take(w)
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
                crash = short_reason(exc)
            except Exception as exc:
                error = short_reason(exc)
            except BaseException as exc:  # SystemExit / KeyboardInterrupt inside an actuator thread
                crash = f"{type(exc).__name__}: {exc}"
            with fc._lock:
                fut._invoking = False
                w.fut = None
                rt.invoking -= 1
                if crash is not None:
                    fc._complete(fut, None, f"actuator crashed: {crash}")
                    if not w.abandoned and not fc._closed:
                        self._crash_lane(fc, rt, crash)
                elif isinstance(out, Pending):
                    if not fut.done():
                        fut._pending = out  # stays running until resolve / timeout / cancel
                    elif fut.state in ABANDONING and out.on_cancel is not None:
                        fc._callbacks.append((out.on_cancel, ()))
                else:
                    fc._complete(fut, out, error)
                fc._changed.notify_all()
                leave = w.abandoned or fc._closed
            fc._run_callbacks()
            if leave:
                return

    def abandon(self, fc: AsyncFC, rt: LaneRuntime, w: Worker) -> None:
        """A thread stuck in the actuator: leave it, and start a replacement so the lane keeps k workers."""
        w.abandoned = True
        rt.abandoned += 1
        if w in rt.workers:
            rt.workers.remove(w)
        if not fc._closing:
            fc._spawn_worker(rt)

    def release(self, w: Worker) -> None:
        """Shutdown, outside the lock: a thread cannot be stopped; it exits after its current call."""

    def _crash_lane(self, fc: AsyncFC, rt: LaneRuntime, why: str) -> None:
        """The actuator raised ActuatorCrash: fail its running calls, restart it (lock held)."""
        for fut in list(rt.running.values()):
            if not fut.done():
                fut._invoking = False  # its thread is abandoned below; no replacement per call
                if fut._ctx is not None:
                    fut._ctx.cancelled.set()
                fc._finish(fut, CallState.FAILED, f"actuator crashed: {why}")
        for worker in rt.workers:
            worker.abandoned = True
        rt.abandoned += len(rt.workers)
        rt.workers = []
        rt.up = False
        rt.restarts += 1
        rt.last_error = why
        fc.ledger.restart(fc.clock(), rt.lane.name, f"crashed: {why}")
        rt.cond.notify_all()
        if fc._closing:
            return
        if rt.lane.factory:
            t = threading.Thread(target=self._rebuild, args=(fc, rt), name=f"asyncfc-restart-{rt.lane.name}",
                                 daemon=True)
            t.start()
            fc._threads.append(t)
        else:
            rt.up = True
            for _ in range(rt.lane.capacity):
                fc._spawn_worker(rt)

    def _rebuild(self, fc: AsyncFC, rt: LaneRuntime) -> None:
        """Call the lane's factory until it succeeds (backing off), then start the lane's workers."""
        backoff = _BACKOFF_S[0]
        while not fc._stop.is_set():
            try:
                actuator = rt.spec()
            except Exception as exc:
                _actuator_unavailable(fc, rt, "restart", exc)
                fc._stop.wait(backoff)
                backoff = min(_BACKOFF_S[1], backoff * 2)
                continue
            with fc._lock:
                if fc._closing:
                    return
                rt.actuator = actuator
                rt.up = True
                for _ in range(rt.lane.capacity):
                    fc._spawn_worker(rt)
                fc._changed.notify_all()
            return


class ProcessExecutor:
    """Actuators named by import path, each worker's in its own child process."""

    name = "process"

    def check_spec(self, lane: Lane, spec: Any) -> None:
        if not isinstance(spec, str):
            raise ValueError(f"process lane {lane.name!r} needs an import path 'module:attr', not {spec!r}")

    def prepare(self, rt: LaneRuntime) -> None:
        """Nothing to build here: each worker starts its own child."""

    def run(self, fc: AsyncFC, w: Worker) -> None:
        """Worker thread body: (re)start the child when needed, send it one call at a time."""
        rt = w.rt
        backoff = _BACKOFF_S[0]
        while not (fc._closed or w.abandoned):
            if w.child is None:
                try:
                    child = ChildActuator(rt.spec, factory=rt.lane.factory)
                except Exception as exc:
                    _actuator_unavailable(fc, rt, "start", exc)
                    fc._stop.wait(backoff)
                    backoff = min(_BACKOFF_S[1], backoff * 2)
                    continue
                with fc._lock:
                    w.child = child
                    if fc._closed or w.abandoned:
                        break
                backoff = _BACKOFF_S[0]
            with fc._lock:
                fut = fc._take(w)
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
            with fc._lock:
                fut._invoking = False
                w.fut = None
                rt.invoking -= 1
                if died is not None:
                    w.child = None
                    if fut.done():
                        if not fc._closed:
                            fc.ledger.restart(fc.clock(), rt.lane.name,
                                              f"restarted after {fut.id} {fut.state.value}")
                    else:
                        rt.restarts += 1
                        rt.last_error = died
                        fc.ledger.restart(fc.clock(), rt.lane.name, f"crashed: {died}")
                        fc._complete(fut, None, f"actuator crashed: {died}")
                elif reply.get("ok"):
                    fc._complete(fut, reply.get("result"), None)
                else:
                    fc._complete(fut, None, str(reply.get("error") or "actuator error"))
                fc._changed.notify_all()
            if died is not None:
                child.close()
            fc._run_callbacks()
        if w.child is not None:
            w.child.close()
            w.child = None

    def abandon(self, fc: AsyncFC, rt: LaneRuntime, w: Worker) -> None:
        """Kill the child: its worker sees it die, records it and starts a fresh one."""
        if w.child is not None:
            w.child.kill()

    def release(self, w: Worker) -> None:
        """Shutdown, outside the lock: kill the worker's child so a hung actuator cannot hold it."""
        if w.child is not None:
            w.child.kill()


EXECUTORS: dict[str, ThreadExecutor | ProcessExecutor] = {"thread": ThreadExecutor(),
                                                          "process": ProcessExecutor()}
