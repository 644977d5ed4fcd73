"""The policy service in the caller's thread, without sockets: for tests and lock-step evaluation.

``InProcPolicy(engine)`` speaks to a ``PolicyCore`` (the engine side of ``agent.server.PolicyServer``)
through the wire itself: every request is encoded and validated by ``protocol.decode_request``, every
reply encoded and read back by ``protocol.decode_reply``, exactly as between a ``PolicyClient`` and a
server. So what it answers is what a service answers, typed the same way (``agent.messages``).

Lock-step: ``send_decide`` decides at once (the engine runs in the calling thread, the batch holds
that one request) and ``poll`` hands the replies out; nothing expires, nothing is superseded. It
implements the loop's ``control_loop.policy.Policy`` protocol like ``PolicyClient`` does.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Sequence
from typing import Any

from tickcall.agent import protocol as P
from tickcall.agent.core import Job, PolicyCore
from tickcall.agent.messages import (
    MAX_DEADLINE_MS,
    Bye,
    Decide,
    DecideReply,
    ErrorReply,
    Hello,
    Limits,
    Register,
    Registered,
    Reply,
    Request,
    Welcome,
)

_OWNER = "inproc"  # the one client of this core


class InProcPolicy:
    """One client and one engine in this process. Not thread-safe: use it from one thread."""

    def __init__(
        self,
        engine: Any,
        *,
        epoch: str | None = None,
        max_registrations: int = 64,
        max_message_bytes: int = 1 << 20,
    ) -> None:
        self.engine = engine
        self.epoch = epoch or uuid.uuid4().hex
        self.max_message_bytes = max_message_bytes
        self._core = PolicyCore(engine, self.epoch, max_registrations)
        self._ids = itertools.count(1)
        self._ready: list[DecideReply] = []
        self._handle: str | None = None
        self.welcome: Welcome | None = None
        self.stats: dict[str, int] = {"sent": 0, "replies": 0}

    def _wire(self, request: Request) -> tuple[Request, float]:
        """The request as the server reads it (encoded, size-checked, validated) and its receipt time."""
        self.stats["sent"] += 1
        return P.decode_request(P.encode(request), self.max_message_bytes), time.perf_counter()

    @staticmethod
    def _back(reply: Reply) -> Reply:
        """The reply as a client reads it: anything msgpack cannot carry fails here, as it would there."""
        return P.decode_reply(P.encode(reply))

    def hello(self, timeout_ms: float | None = None) -> Welcome:
        """The same ``welcome`` as the server's (``timeout_ms`` is accepted for the client's signature)."""
        req, _ = self._wire(Hello(id=next(self._ids), client="inproc"))
        assert isinstance(req, Hello)
        limits = Limits(
            max_message_bytes=self.max_message_bytes,
            max_batch=1,
            max_registrations=self._core.max_registrations,
            max_deadline_ms=MAX_DEADLINE_MS,
        )
        welcome = self._back(self._core.welcome(req, limits))
        assert isinstance(welcome, Welcome)
        self.welcome = welcome
        return welcome

    def register(
        self,
        tools: Sequence[Any],
        system: str | None = None,
        template: str | None = None,
        timeout_ms: float | None = None,
        allow_no_call: bool = False,
    ) -> Registered:
        """Register a tool set; it becomes the one ``send_decide`` uses (``allow_no_call``: see
        ``PolicyClient.register``). Raises PolicyError."""
        req, _ = self._wire(
            Register(id=next(self._ids), tools=P.wire_tools(tools), system=system, template=template,
                     allow_no_call=allow_no_call)
        )
        assert isinstance(req, Register)
        reply = self._back(self._core.register(_OWNER, req))
        if isinstance(reply, ErrorReply):
            raise P.PolicyError(reply.code, reply.message)
        assert isinstance(reply, Registered)
        self._handle = reply.handle
        return reply

    def send_decide(
        self,
        turn: Any,
        tick_id: int,
        deadline_ms: float | None = None,
        *,
        stream: str | None = None,
        timeout_ms: float | None = None,
    ) -> int:
        """Decide now; the reply waits for ``poll``. Returns the message id (the reply's ``id``)."""
        if self._handle is None:
            raise RuntimeError("register tools before send_decide")
        msg_id = next(self._ids)
        decide = Decide(
            id=msg_id,
            handle=self._handle,
            tick=int(tick_id),
            turn=P.turn_to_wire(turn),
            sent_ms=time.monotonic() * 1e3,
            deadline_ms=deadline_ms,
            stream=stream,
        )
        req, recv_t = self._wire(decide)
        assert isinstance(req, Decide)
        [reply] = self._core.decide([Job(owner=_OWNER, req=req, turn=P.to_turn(req.turn), recv_t=recv_t)])
        back = self._back(reply)
        assert isinstance(back, DecideReply)
        self._ready.append(back)
        return msg_id

    def poll(self, timeout_ms: float = 0) -> list[DecideReply]:
        """The replies decided since the last poll (never waits: they are all here already)."""
        out, self._ready = self._ready, []
        self.stats["replies"] += len(out)
        return out

    def decide(self, turn: Any, tick_id: int, deadline_ms: float | None = None, **kw: Any) -> DecideReply:
        """Blocking decide (lock-step evaluation): the reply to this turn."""
        msg_id = self.send_decide(turn, tick_id, deadline_ms, **kw)
        i = next(i for i, r in enumerate(self._ready) if r.id == msg_id)
        return self._ready.pop(i)

    @property
    def in_flight(self) -> int:
        """Decides answered but not yet polled."""
        return len(self._ready)

    def close(self) -> None:
        """Say bye: the tool sets registered here are dropped."""
        req, _ = self._wire(Bye(id=next(self._ids)))
        assert isinstance(req, Bye)
        self._core.bye(_OWNER, req)
        self._handle = None
