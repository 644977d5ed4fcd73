"""Waiting helpers for tests (not part of tickcall)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], object], timeout_s: float, every_s: float = 0.05) -> bool:
    """Poll ``predicate()`` until true or ``timeout_s`` seconds pass; returns its last truth value."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every_s)
    return bool(predicate())
