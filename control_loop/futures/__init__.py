"""AsyncFC futures layer (after Feng et al., "Concurrency without Model Changes", 2026).

``AsyncFC.dispatch(call)`` returns a ``CallFuture`` in microseconds; the call runs in its lane
(latest-wins or FIFO with k at once; threads or child processes, see ``executors``); later calls may name it as
``"@fN"``; ``history_lines`` renders the status of recent and in-flight calls for the next prompt;
``ledger`` accounts for every call (accepted == finished + in flight).

    from tickcall.control_loop.futures import AsyncFC, Lane
    fc = AsyncFC([Lane("move", policy="latest"), Lane("fire", policy="fifo", queue=4)],
                 actuators={"move": move_fn, "fire": fire_fn})
    fut = fc.dispatch(Call("move", {"x": 3}))
    fc.history_lines()   # ['move(x=3)@f1 running 12ms']
    fc.shutdown()
"""

from tickcall.control_loop.futures.clock import ManualClock
from tickcall.control_loop.futures.core import DEFAULT_LANE, AsyncFC
from tickcall.control_loop.futures.deps import future_ref, references
from tickcall.control_loop.futures.lanes import Lane
from tickcall.control_loop.futures.ledger import Ledger, LedgerEntry, LedgerError
from tickcall.control_loop.futures.states import (
    PENDING,
    TERMINAL_STATES,
    ActuatorCrash,
    CallContext,
    CallFuture,
    CallState,
    Pending,
)

__all__ = [
    "DEFAULT_LANE", "PENDING", "TERMINAL_STATES", "ActuatorCrash", "AsyncFC", "CallContext", "CallFuture",
    "CallState", "Lane", "Ledger", "LedgerEntry", "LedgerError", "ManualClock", "Pending", "future_ref",
    "references",
]
