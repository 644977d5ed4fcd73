"""The HTTP door's link to the policy service: one asyncio ZMQ DEALER speaking protocol v1.

Every HTTP request becomes a ``decide`` on the service's ROUTER, so the door gets exactly what a ZMQ
client gets: the same ``PolicyCore`` registrations, the same cross-client batching, the same limits
(``too_long``, ``over_quota``, ``illegal_tools``...). What the link adds:

* **registrations cached per distinct tool set**: (tools, system, template, assembly) encoded with
  msgpack is the key; the first request with a key registers it, later ones reuse the handle; a handle
  the service no longer knows (``unknown_handle``: evicted, or a new epoch after a restart) is
  registered again once and the decide retried;
* **one stream per request** (``stream`` = a fresh name), so concurrent HTTP requests are never
  superseded by each other (latest-wins is per stream); at most ``max_inflight`` decides are on the
  wire at once (the service's ``max_streams_per_client`` bounds one client's queue), the rest wait here.

Runs inside one asyncio loop (uvicorn's); not thread-safe. Times are seconds unless named ``*_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import Any

import msgspec
import zmq
import zmq.asyncio
from tickcall.agent import protocol as P
from tickcall.agent.config import CurveConfig
from tickcall.agent.messages import (
    CallReply,
    Decide,
    ErrorReply,
    Hello,
    Register,
    Registered,
    Reply,
    Request,
    Welcome,
    WireTurn,
)
from tickcall.agent.security import setup_client_curve

log = logging.getLogger("tickcall.agent.http")


class ServiceUnavailable(RuntimeError):
    """The policy service did not answer in time (or the link is closed)."""


class ServiceLink:
    """Asyncio client of a policy service at ``endpoint`` (see module docstring)."""

    def __init__(
        self,
        endpoint: str,
        *,
        curve: CurveConfig | None = None,
        max_inflight: int = 16,
        timeout_s: float = 30.0,
    ) -> None:
        self.endpoint = endpoint
        self.curve = curve
        self.timeout_s = timeout_s
        self.welcome: Welcome | None = None
        self.epoch: str | None = None  # the service's current epoch (handles are valid only in it)
        self.stats: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._waiting: dict[Any, asyncio.Future[Reply]] = {}
        self._handles: dict[bytes, str] = {}
        self._registering: dict[bytes, asyncio.Lock] = {}
        self._gate = asyncio.Semaphore(max_inflight)
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._reader: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> Welcome:
        """Connect and say hello; the welcome names the engine (its default template, its model)."""
        self._ctx = zmq.asyncio.Context()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            setup_client_curve(sock, self.curve)
        sock.connect(self.endpoint)
        self._sock = sock
        self._reader = asyncio.get_running_loop().create_task(self._read())
        reply = await self.request(Hello(id=next(self._ids), client="tickcall-http"))
        if not isinstance(reply, Welcome):
            raise ServiceUnavailable(f"hello answered {reply!r}")
        self.welcome = reply
        self.epoch = reply.epoch
        return reply

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # it ends by cancellation
                await self._reader
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ServiceUnavailable("the HTTP door is stopping"))
        self._waiting.clear()
        if self._sock is not None:
            self._sock.close(0)
        if self._ctx is not None:
            self._ctx.term()

    # ------------------------------------------------------------------ requests
    async def _read(self) -> None:
        assert self._sock is not None
        while True:
            payload = await self._sock.recv()
            try:
                reply = P.decode_reply(payload)
            except Exception as exc:  # a reply we cannot read: nothing to resolve, say so once per kind
                log.warning("unreadable reply from the policy service: %s", exc)
                continue
            self._new_epoch(reply.epoch)
            fut = self._waiting.pop(reply.id, None)
            if fut is not None and not fut.done():
                fut.set_result(reply)

    def _new_epoch(self, epoch: str | None) -> None:
        """Handles belong to one epoch: a restarted service (new epoch) knows none of ours."""
        if epoch and self.epoch is not None and epoch != self.epoch:
            self.epoch = epoch
            self._handles.clear()
            self._count("epoch_changes")

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    async def request(self, msg: Request) -> Reply:
        """Send one request; its reply, or ServiceUnavailable after ``timeout_s``."""
        if self._sock is None:
            raise ServiceUnavailable("the link is not started")
        payload = P.encode(msg)  # raises (OverflowError...) for what msgpack cannot carry: nothing waits then
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[msg.id] = fut
        await self._sock.send(payload)
        try:
            return await asyncio.wait_for(fut, self.timeout_s)
        except TimeoutError:
            self._waiting.pop(msg.id, None)
            raise ServiceUnavailable(
                f"the policy service at {self.endpoint} did not answer within {self.timeout_s:g} s"
            ) from None

    async def register(
        self, tools: list[dict[str, Any]], system: str | None, template: str | None, assembly: str | None
    ) -> str | ErrorReply:
        """The service's handle for this tool set (cached by its bytes), or its error reply."""
        key = msgspec.msgpack.encode([tools, system, template, assembly])
        handle = self._handles.get(key)
        if handle is not None:
            return handle
        # concurrent first requests of one tool set register it once (the others wait for its handle)
        lock = self._registering.setdefault(key, asyncio.Lock())
        async with lock:
            handle = self._handles.get(key)
            if handle is not None:
                return handle
            self._count("registers")
            reply = await self.request(
                Register(id=next(self._ids), tools=tools, system=system, template=template, assembly=assembly)
            )  # type: ignore[arg-type]  # checked by msgspec on decode
            if isinstance(reply, Registered):
                self._handles[key] = reply.handle
        self._registering.pop(key, None)
        if isinstance(reply, Registered):
            return reply.handle
        if isinstance(reply, ErrorReply):
            return reply
        raise ServiceUnavailable(f"register answered {type(reply).__name__}")

    def forget(
        self, tools: list[dict[str, Any]], system: str | None, template: str | None, assembly: str | None
    ) -> None:
        self._handles.pop(msgspec.msgpack.encode([tools, system, template, assembly]), None)

    async def decide(
        self,
        tools: list[dict[str, Any]],
        system: str | None,
        template: str | None,
        assembly: str | None,
        turn: WireTurn,
    ) -> CallReply | ErrorReply:
        """Register (or reuse) the tool set and decide ``turn`` on it; one retry after ``unknown_handle``."""
        async with self._gate:
            for attempt in (0, 1):
                handle = await self.register(tools, system, template, assembly)
                if isinstance(handle, ErrorReply):
                    return handle
                n = next(self._ids)
                reply = await self.request(Decide(id=n, handle=handle, tick=n, turn=turn, stream=f"http{n}"))
                if isinstance(reply, ErrorReply) and reply.code == "unknown_handle" and attempt == 0:
                    self._count("reregistered")
                    self.forget(tools, system, template, assembly)
                    continue
                if isinstance(reply, (CallReply, ErrorReply)):
                    return reply
                raise ServiceUnavailable(f"decide answered {type(reply).__name__}")
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns
