"""Call states, the future handed back by ``AsyncFC.dispatch``, and the actuator-side context.

Invariant: a future moves ``waiting -> queued -> running`` (any prefix) and then into exactly one
terminal state; once terminal it never changes. A result that arrives later is kept in
``late_result`` / ``late_error`` and never turns the call into a success.
Times are seconds on the ``AsyncFC`` clock (``time.monotonic`` unless injected).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tickcall.models.calls import Call

if TYPE_CHECKING:  # pragma: no cover
    from tickcall.control_loop.futures.core import AsyncFC


class CallState(enum.StrEnum):
    """Where a dispatched call is. The last six are terminal."""

    WAITING = "waiting"  # accepted, waiting for the futures named in its arguments
    QUEUED = "queued"  # in its lane's queue, not started
    RUNNING = "running"  # handed to the actuator (or pending an external resolve)
    DONE = "done"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SUPERSEDED = "superseded"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {CallState.DONE, CallState.FAILED, CallState.TIMED_OUT, CallState.SUPERSEDED, CallState.CANCELLED,
     CallState.REJECTED}
)


class ActuatorCrash(Exception):  # noqa: N818 - it names an event, like StopIteration
    """Raised by an actuator that is broken (not merely refusing one call).

    The lane fails every call the actuator was running and restarts it (calling its factory again
    when the lane was built with ``factory=True``). An ordinary exception only fails its own call.
    """


class Pending:
    """Returned by an actuator to say: the call was handed on; someone will ``AsyncFC.resolve`` it.

    The call stays ``running`` (and keeps its lane slot) until ``resolve``, a timeout, a cancel, a
    supersede or a crash. ``on_cancel`` (optional) is called, outside the lock, when the call is
    cancelled, superseded or timed out before being resolved, so the external party can stop work.
    """

    __slots__ = ("on_cancel",)

    def __init__(self, on_cancel: Callable[[], Any] | None = None) -> None:
        self.on_cancel = on_cancel

    def __repr__(self) -> str:
        return "PENDING" if self.on_cancel is None else "Pending(on_cancel=...)"


PENDING = Pending()  # the plain marker: ``return PENDING`` from an actuator


@dataclass
class CallContext:
    """What an actuator of a ``Lane(context=True)`` gets as its second argument.

    ``id`` is the future id to pass to ``AsyncFC.resolve``; ``cancelled`` is set when the call is
    cancelled, superseded, timed out or shut down, so a long actuator can stop early;
    ``deadline`` is the clock time by which it must complete (``None``: no limit); ``seq`` is the
    future's ``seq``: the one given to ``dispatch`` (the control loop's tick), else the lane's newest.
    """

    id: str
    lane: str
    cancelled: threading.Event = field(default_factory=threading.Event)
    deadline: float | None = None
    seq: int | None = None

    def pending(self, on_cancel: Callable[[], Any] | None = None) -> Pending:
        return PENDING if on_cancel is None else Pending(on_cancel)


class CallFuture:
    """The handle ``dispatch`` returns at once. Read-only for users; ``AsyncFC`` moves it.

    ``id`` is ``"f<N>"`` and may be named in a later call's argument as ``"@f<N>"``.
    ``result`` is the actuator's value when ``state is DONE`` (else ``None``); ``error`` is a short
    reason for every other terminal state.
    """

    __slots__ = (
        "n", "id", "call", "lane", "seq", "state", "result", "error", "resolved_call", "superseded_by",
        "dispatched_at", "started_at", "finished_at", "timeout_start_s", "timeout_complete_s",
        "late_result", "late_error", "has_late", "_event", "_callbacks", "_fc", "_ctx", "_waiting_on",
        "_invoking", "_worker", "_pending", "_inputs", "key",
    )

    def __init__(self, fc: AsyncFC | None, n: int, call: Call, lane: str | None, seq: int,
                 dispatched_at: float, timeout_start_s: float | None,
                 timeout_complete_s: float | None) -> None:
        self.n = n
        self.id = f"f{n}"
        self.call = call
        self.lane = lane
        self.seq = seq
        self.state = CallState.QUEUED
        self.result: Any = None
        self.error: str | None = None
        self.resolved_call: Call | None = None  # the call with "@fN" arguments replaced
        self.superseded_by: str | None = None
        self.dispatched_at = dispatched_at
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.timeout_start_s = timeout_start_s
        self.timeout_complete_s = timeout_complete_s
        self.late_result: Any = None
        self.late_error: str | None = None
        self.has_late = False
        self._event = threading.Event()
        self._callbacks: list[Callable[[CallFuture], Any]] = []
        self._fc = fc
        self._ctx: CallContext | None = None
        self._waiting_on: set[str] = set()
        self._invoking = False  # a worker thread is inside the actuator call for this future
        self._worker: Any = None
        self._pending: Pending | None = None
        self._inputs: dict[str, Any] = {}  # results of the futures named in the arguments
        self.key = (seq, n)  # latest-wins order: newer commands have larger keys

    def done(self) -> bool:
        """True once the call is in a terminal state (not only ``DONE``)."""
        return self.state.terminal

    def succeeded(self) -> bool:
        return self.state is CallState.DONE

    def wait(self, timeout: float | None = None) -> bool:
        """Block (real seconds) until terminal; True if it is. Never call this on the tick path."""
        return self._event.wait(timeout)

    def cancel(self, reason: str = "cancelled") -> bool:
        """Cancel through the owning ``AsyncFC``; False when already terminal."""
        return self._fc.cancel(self.id, reason) if self._fc is not None else False

    def add_done_callback(self, fn: Callable[[CallFuture], Any]) -> None:
        """Call ``fn(future)`` once terminal (at once if it already is), outside ``AsyncFC``'s lock."""
        fc = self._fc
        if fc is None:
            fn(self)
            return
        with fc._lock:
            if not self.done():
                self._callbacks.append(fn)
                return
        fn(self)

    def __repr__(self) -> str:
        return f"<CallFuture {self.id} {self.call.name} {self.state.value}>"
