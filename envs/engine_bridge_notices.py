"""One-line notices of what an engine did, for a person watching ``tickcall run``: it connected, was
lost, left, was refused, or sent messages the bridge refused.

``EngineNotices.update(bridge.stats())`` returns the lines for what happened since the previous call.
Each kind of notice (an event name, or an error code) is printed at most once per ``interval_s``
seconds; the ones held back in between are counted and named in the next line of that kind
("(+3 more since the last)"), so a flapping engine or a flood of bad messages cannot flood the terminal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

DEFAULT_INTERVAL_S = 5.0


def event_line(event: dict[str, Any]) -> str:
    """The line for one bridge event (``BridgeState.events``: ``{"event", "t_s", ...}``)."""
    kind = event.get("event", "")
    if kind == "engine_connected":
        tools = ", ".join(event.get("tools") or [])
        crowd = (f"; a crowd of {event['agents']} agents (at most {event.get('max_agents')})"
                 if "agents" in event else "")
        return f"engine connected: {event.get('engine')} (session {event.get('session')}; tools {tools}{crowd})"
    if kind == "engine_lost":
        return (
            f"engine lost: silent for {float(event.get('silent_ms', 0)):.0f} ms; ticks fall back until "
            "it says hello again"
        )
    if kind == "engine_bye":
        return f"engine left: {event.get('reason') or 'bye'}; ticks fall back until an engine says hello"
    if kind == "agent_joined":
        return f"engine agent {event.get('agent')} joined ({event.get('present')} present)"
    if kind == "agent_left":
        why = f": {event['reason']}" if event.get("reason") else ""
        return f"engine agent {event.get('agent')} left{why} ({event.get('present')} present)"
    if kind == "engine_refused":
        return f"engine refused: {event.get('code')}: {event.get('message')}; fix the engine and restart it"
    info = {k: v for k, v in event.items() if k not in ("event", "t_s")}
    return f"engine {kind.replace('_', ' ')}: {info}" if info else f"engine {kind.replace('_', ' ')}"


class EngineNotices:
    """Turns bridge stats into throttled notice lines (see module docstring). Not thread-safe: one
    caller at a time (``EngineWorld.notices`` holds a lock)."""

    def __init__(
        self, interval_s: float = DEFAULT_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._events_seen = 0
        self._errors_seen: dict[str, int] = {}
        self._last: dict[str, float] = {}  # kind -> when its last line went out (clock s)
        self._held: dict[str, int] = {}  # kind -> notices held back since that line

    def update(self, stats: dict[str, Any]) -> list[str]:
        """Lines for the events and refused messages in ``stats`` that are new since the last call."""
        lines: list[str] = []
        events = stats.get("events") or []
        for event in events[self._events_seen :]:
            lines += self._throttled(str(event.get("event")), event_line(event), 1)
        self._events_seen = len(events)
        for code, count in sorted((stats.get("errors_by_code") or {}).items()):
            new = count - self._errors_seen.get(code, 0)
            if new > 0:
                self._errors_seen[code] = count
                what = f"the bridge refused {new} message{'s' if new > 1 else ''} from the engine: {code}"
                lines += self._throttled(f"error:{code}", what + " (the engine was told why)", new)
        return lines

    def _throttled(self, kind: str, line: str, count: int) -> list[str]:
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            self._held[kind] = self._held.get(kind, 0) + count
            return []
        held = self._held.pop(kind, 0)
        self._last[kind] = now
        return [line + (f" (+{held} more since the last)" if held else "")]
