"""Lane configuration: one lane per actuator (a function or a group of tools), with a policy.

Policies
--------
* ``latest`` (set-points): at most one queued call; a newer call replaces the queued one (which
  ends ``superseded``); the running one finishes (an actuator applies a set-point quickly; one that
  must stop early watches ``ctx.cancelled``, set on timeout and cancel). A call whose ``seq`` is
  below the newest seq the lane has seen is rejected as stale; a completion that arrives after a
  newer call of the lane was applied ends ``superseded``, so only the newest command is ever
  applied even when completions come back out of order.
* ``fifo`` (discrete actions, queries): calls start in dispatch order, up to ``k`` at once; at most
  ``queue`` wait; one more is rejected with ``queue full`` (never dropped silently).

Executors
---------
* ``thread``: the actuator is a Python callable run in ``k`` worker threads of this process. Fine
  for actuators that wait (I/O, sleeps, sending a message); CPU-heavy pure-Python work shares the
  GIL with decoding and delays it.
* ``process``: the actuator is named by an import path ``"package.module:function"`` and runs in
  ``k`` child processes (one call at a time each), spoken to with length-prefixed msgpack over
  pipes (no pickle). Calls and results must be msgpack values. A child that dies fails its own call
  and is restarted; a timed-out, cancelled or superseded call kills and restarts its child.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

POLICIES = ("latest", "fifo")
EXECUTORS = ("thread", "process")


@dataclass(frozen=True)
class Lane:
    """One actuator's lane.

    ``tools``: tool names routed here (default: the lane's own name). ``k``: calls running at once
    (default 1). ``queue``: calls allowed to wait (``latest``: always 1).
    ``timeout_start_s`` / ``timeout_complete_s``: defaults for calls of this lane (seconds;
    start is measured from dispatch, complete from start). ``context=True``: the actuator is called
    ``fn(call, ctx)`` with a ``CallContext``. ``factory=True``: the actuator given is a zero-argument
    factory, called at start and after each crash to build a fresh actuator.
    """

    name: str
    tools: Sequence[str] = field(default_factory=tuple)
    policy: str = "fifo"
    k: int = 1
    queue: int = 8
    executor: str = "thread"
    context: bool = False
    factory: bool = False
    timeout_start_s: float | None = None
    timeout_complete_s: float | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError("Lane needs a non-empty name")
        if self.policy not in POLICIES:
            raise ValueError(f"lane {self.name!r}: policy must be one of {POLICIES}, not {self.policy!r}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"lane {self.name!r}: executor must be one of {EXECUTORS}, not {self.executor!r}")
        if int(self.k) < 1:
            raise ValueError(f"lane {self.name!r}: k must be >= 1")
        if int(self.queue) < 0:
            raise ValueError(f"lane {self.name!r}: queue must be >= 0")
        if self.executor == "process" and self.context:
            raise ValueError(f"lane {self.name!r}: context=True needs executor='thread'")
        for t in (self.timeout_start_s, self.timeout_complete_s):
            if t is not None and t < 0:
                raise ValueError(f"lane {self.name!r}: timeouts must be >= 0 seconds")
        object.__setattr__(self, "tools", tuple(self.tools) or (self.name,))
        if self.policy == "latest":
            object.__setattr__(self, "queue", 1)

    @property
    def capacity(self) -> int:
        """Calls that may run at once."""
        return int(self.k)


def declare_lanes(lanes: Iterable[Lane], actuators: Mapping[str, Any], default_lane: Lane) -> list[Lane]:
    """The lanes an ``AsyncFC`` runs: the declared ones, plus one shaped like ``default_lane`` for each
    actuator without a declared lane. Raises ``ValueError`` for duplicate names, a lane without an
    actuator, or a tool routed to two lanes."""
    declared = list(lanes)
    names = [lane.name for lane in declared]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate lane names in {names}")
    declared += [dataclasses.replace(default_lane, name=name, tools=(name,))
                 for name in actuators if name not in names]
    routes: dict[str, str] = {}
    for lane in declared:
        if lane.name not in actuators:
            raise ValueError(f"lane {lane.name!r} has no actuator (actuators has {sorted(actuators)})")
        for tool in lane.tools:
            if tool in routes:
                raise ValueError(f"tool {tool!r} is in lanes {routes[tool]!r} and {lane.name!r}")
            routes[tool] = lane.name
    return declared
