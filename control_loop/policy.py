"""What the control loop needs of a policy: send a decide without waiting, and collect the replies.

``tickcall.agent.client.PolicyClient`` (a policy service over ZeroMQ) and
``tickcall.agent.inproc.InProcPolicy`` (an engine in this process, lock-step) implement it. Replies
are the wire's typed structs (``tickcall.agent.messages``): ``CallReply`` or ``ErrorReply``, each
with the ``tick`` it answers; an error's text is ``ErrorReply.message``, never ``reason``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from tickcall.agent.messages import DecideReply
from tickcall.models.format import Turn


@runtime_checkable
class Policy(Protocol):
    """The loop's view of a policy. Every ``send_decide`` is answered by exactly one reply from ``poll``
    (a policy that gives up on a request answers an ``ErrorReply`` with code ``timeout``)."""

    def send_decide(self, turn: Turn, tick_id: int, deadline_ms: float | None = None) -> int:
        """Send one decide for tick ``tick_id`` with ``deadline_ms`` (ms, from receipt); returns at once.

        Multi-agent loops also pass ``stream=AGENT`` (keyword): the latest-wins key, and the key a
        replica router keeps each agent sticky by (``PolicyClient`` and ``agent.replicas`` take it)."""
        ...

    def poll(self, timeout_ms: float = 0) -> list[DecideReply]:
        """The replies that are ready, waiting up to ``timeout_ms`` (ms) for the first."""
        ...
