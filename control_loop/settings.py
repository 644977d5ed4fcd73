"""The control loop's own settings (``LoopSettings``); times in ms unless a name says ``_s``."""

from __future__ import annotations

# The fields are declared once, in ``control_loop.config`` (where ``RunConfig`` extends them with help,
# checks and flags); this module keeps the loop's import path.
from tickcall.control_loop.config import LoopSettings

__all__ = ["LoopSettings"]
