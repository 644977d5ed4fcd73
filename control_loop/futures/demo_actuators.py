"""Small actuators for benchmarks, tests and demos (importable by actuator child processes).

``sleep_actuator`` waits ``ms`` milliseconds (argument, default 150) like a slow device;
``spin_actuator`` burns ``ms`` milliseconds of pure-Python CPU (holds the GIL);
``crash_actuator`` raises ``ActuatorCrash`` when ``crash`` is true, else echoes;
``echo_actuator`` returns the arguments; ``exit_actuator`` ends the process abruptly (a hard crash).
"""

from __future__ import annotations

import os
import time
from typing import Any

from tickcall.control_loop.futures.states import ActuatorCrash
from tickcall.models.calls import Call


def sleep_actuator(call: Call) -> dict[str, Any]:
    ms = float(call.arguments.get("ms", 150.0))
    time.sleep(ms / 1000.0)
    return {"slept_ms": ms}


def spin(ms: float) -> int:
    """Busy-loop in pure Python for ``ms`` milliseconds (wall); returns the iterations done."""
    end = time.perf_counter() + ms / 1000.0
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def spin_actuator(call: Call) -> dict[str, Any]:
    ms = float(call.arguments.get("ms", 150.0))
    return {"spun_ms": ms, "iterations": spin(ms)}


def echo_actuator(call: Call) -> dict[str, Any]:
    return dict(call.arguments)


def crash_actuator(call: Call) -> dict[str, Any]:
    if call.arguments.get("crash"):
        raise ActuatorCrash("asked to crash")
    if call.arguments.get("fail"):
        raise RuntimeError(str(call.arguments["fail"]))
    return dict(call.arguments)


def exit_actuator(call: Call) -> dict[str, Any]:
    if call.arguments.get("exit"):
        os._exit(int(call.arguments["exit"]))
    if call.arguments.get("hang"):
        time.sleep(3600)
    return dict(call.arguments)


class Counter:
    """A stateful actuator for ``factory=True`` lanes: counts the calls of this instance."""

    def __init__(self) -> None:
        self.calls = 0
        self.pid = os.getpid()

    def __call__(self, call: Call) -> dict[str, Any]:
        self.calls += 1
        if call.arguments.get("crash"):
            raise ActuatorCrash("asked to crash")
        return {"calls": self.calls, "pid": self.pid}
