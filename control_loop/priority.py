"""Real-time scheduling for the loop thread (Linux SCHED_FIFO); refusal is reported, never fatal."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable


def raise_priority(priority: int | None) -> tuple[str, Callable[[], None]]:
    """Put the calling thread under SCHED_FIFO at ``priority`` (Linux, needs CAP_SYS_NICE).

    Returns (description, restore). The loop thread sleeps most of each period, so a real-time
    priority costs others little and removes most wake-up delay on a busy machine (ROS 2 control
    loops do the same). Refusal is reported, never fatal."""
    if priority is None:
        return "normal", lambda: None
    if not hasattr(os, "sched_setscheduler"):
        return "refused: SCHED_FIFO is not available on this platform", lambda: None
    try:
        old_policy = os.sched_getscheduler(0)
        old_param = os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(priority)))
    except (OSError, ValueError) as exc:
        return f"refused: {exc}", lambda: None

    def restore() -> None:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, old_policy, old_param)

    return f"SCHED_FIFO {int(priority)}", restore
