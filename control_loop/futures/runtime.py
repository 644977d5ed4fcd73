"""The mutable state behind each lane: its runtime record and its workers (package-internal).

Every field here is guarded by ``AsyncFC._lock``; ``core`` (the state machine) and ``executors``
(how a worker runs an actuator) both read and write them under that lock.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from tickcall.control_loop.futures.child import ChildActuator
from tickcall.control_loop.futures.lanes import Lane
from tickcall.control_loop.futures.states import CallFuture, CallState

# Terminal states that can end a call while its actuator is still working on it.
ABANDONING = (CallState.TIMED_OUT, CallState.CANCELLED, CallState.SUPERSEDED)


class Worker:
    """One lane worker: a thread (thread lanes) or a thread owning a child process (process lanes)."""

    __slots__ = ("rt", "abandoned", "thread", "child", "fut")

    def __init__(self, rt: LaneRuntime) -> None:
        self.rt = rt
        self.abandoned = False  # replaced: exit after the current actuator call returns
        self.thread: threading.Thread | None = None
        self.child: ChildActuator | None = None
        self.fut: CallFuture | None = None


class LaneRuntime:
    """Mutable state of one lane; every field is guarded by ``AsyncFC._lock``."""

    def __init__(self, lane: Lane, spec: Any, lock: threading.RLock) -> None:
        self.lane = lane
        self.spec = spec  # callable, factory, or "module:attr" for process lanes
        self.actuator: Callable[..., Any] | None = None
        self.queue: deque[CallFuture] = deque()
        self.running: dict[str, CallFuture] = {}
        self.cond = threading.Condition(lock)
        self.workers: list[Worker] = []
        self.up = False  # actuator built and workers started
        self.max_seq: int | None = None
        self.applied: CallFuture | None = None  # latest lane: the newest call that ended done
        self.restarts = 0
        self.abandoned = 0
        self.invoking = 0
        self.last_error: str | None = None

    def startable(self) -> bool:
        return self.up and bool(self.queue) and len(self.running) < self.lane.capacity

    def metrics(self) -> dict[str, Any]:
        """The lane's row of ``AsyncFC.metrics()["lanes"]``."""
        return {"policy": self.lane.policy, "executor": self.lane.executor, "queued": len(self.queue),
                "running": len(self.running), "restarts": self.restarts, "abandoned_workers": self.abandoned,
                "up": self.up, "last_error": self.last_error}


def short_reason(exc: BaseException) -> str:
    """A short reason for an exception: its message, else its type name."""
    return str(exc) or type(exc).__name__


def overdue(fut: CallFuture, now: float) -> str | None:
    """Why ``fut`` has timed out at clock time ``now`` (seconds), or None: a waiting or queued call
    past ``timeout_start_s`` since dispatch, a running one past ``timeout_complete_s`` since start."""
    if fut.state in (CallState.WAITING, CallState.QUEUED):
        limit = fut.timeout_start_s
        if limit is not None and now - fut.dispatched_at > limit:
            return f"not started within {ms(limit)}"
    elif fut.state is CallState.RUNNING:
        limit = fut.timeout_complete_s
        if limit is not None and fut.started_at is not None and now - fut.started_at > limit:
            return f"no result within {ms(limit)}"
    return None


def ms(seconds: float) -> str:
    """Seconds as whole milliseconds for messages (``"250ms"``)."""
    return f"{round(seconds * 1000)}ms"
