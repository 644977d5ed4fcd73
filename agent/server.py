"""The policy server: a ZMQ ROUTER that answers protocol-v1 requests with one engine (docs/protocol.md).

Two threads:

* the **I/O thread** owns the ROUTER socket. It reads every message as it arrives and stamps its
  receipt time (the origin of ``deadline_ms``), answers ``hello``, ``ping`` and every bad message at
  once (an ``error`` reply; the server keeps serving), queues ``decide`` with **latest-wins** per
  (client, stream) — a newer decide replaces the queued one, which is answered ``superseded`` — and
  sends the replies the engine thread hands it (over an inproc PULL socket);
* the **engine thread** owns the engine. It runs ``register``/``bye`` in arrival order, answers
  ``expired`` to queued decides whose deadline passed before decoding starts (nothing decoded), then
  calls ``engine.decide_batch`` once for up to ``max_batch`` queued decides — all clients' heads in one
  batch (when fewer decides wait than the previous batch held, it first waits up to ``gather_ms`` for
  the rest, like Triton's dynamic-batching queue delay; one client alone never waits) — and replies ``call`` to each (``engine_failure`` for a request the engine could not decide; a
  failing batch is retried request by request, so one bad request fails alone).

Every request gets exactly one reply. Replies that cannot be delivered (the peer is gone:
ROUTER_MANDATORY; or the high-water mark) are counted in ``stats`` (``unroutable``, ``dropped_hwm``).
Times are milliseconds; clocks are ``time.perf_counter`` of this process.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq

from tickcall.agent import protocol as P
from tickcall.agent.config import ServeConfig
from tickcall.agent.security import check_bind, setup_server_curve
from tickcall.models.format import TEMPLATES
from tickcall.models.tools import ToolSchemaError

log = logging.getLogger("tickcall.agent.server")


@dataclass
class _Reg:
    """One registered tool set, shared by every client that registers the same (tools, system, template)."""

    handle: str  # the wire handle: "<epoch prefix>.<n>", never valid in another epoch
    engine_handle: str
    heads: tuple[str, ...]
    prefix_tokens: int
    template: str
    tool_names: list[str]
    key: bytes
    owners: set[bytes] = field(default_factory=set)


@dataclass
class _Pending:
    ident: bytes
    req: P.Decide
    turn: Any  # models.format.Turn
    recv_t: float  # time.perf_counter() when the I/O thread read it (s)
    expires_t: float | None  # recv_t + deadline (s), None without deadline


class PolicyServer:
    """Serve ``engine`` on ``config.bind``: ``start()`` returns the bound endpoint; ``stop()`` ends it.

    The engine is used from the engine thread only (engines need not be thread-safe).
    """

    def __init__(self, engine: Any, config: ServeConfig | None = None, *, epoch: str | None = None,
                 context: zmq.Context | None = None) -> None:
        self.engine = engine
        self.config = config or ServeConfig()
        self.epoch = epoch or uuid.uuid4().hex
        self._ctx = context or zmq.Context.instance()
        self._out_addr = f"inproc://policy-out-{self.epoch}"
        self.endpoint: str | None = None
        # engine-thread state
        self._regs: OrderedDict[str, _Reg] = OrderedDict()  # LRU order: oldest first
        self._by_key: dict[bytes, str] = {}
        self._reg_ids = 0
        self._eng_stats: dict[str, int] = {}
        self._batch_sizes: dict[int, int] = {}
        self._busy_since: float | None = None
        self._last_batch = 0
        # shared (guarded by _cond)
        self._cond = threading.Condition()
        self._pending: dict[tuple[bytes, str], _Pending] = {}
        self._commands: deque[tuple[bytes, Any]] = deque()
        self._handles: frozenset[str] = frozenset()  # published by the engine thread, read by I/O
        # I/O-thread state
        self._io_stats: dict[str, int] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._io_ready = threading.Event()
        self._engine_done = threading.Event()
        self._start_error: BaseException | None = None
        check_bind(self.config.bind, self.config.curve, self.config.allow_insecure)

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout_s: float = 30.0) -> str:
        """Bind and serve in two daemon threads. Returns the bound endpoint (a tcp port 0 resolved)."""
        io = threading.Thread(target=self._io_main, name="policy-io", daemon=True)
        io.start()
        if not self._io_ready.wait(timeout_s):
            raise TimeoutError("policy server did not start")
        if self._start_error is not None:
            io.join(1.0)
            raise self._start_error
        eng = threading.Thread(target=self._engine_main, name="policy-engine", daemon=True)
        eng.start()
        self._threads = [eng, io]  # stop() joins the engine thread first
        assert self.endpoint is not None
        log.info("policy service epoch %s on %s (engine %s)", self.epoch, self.endpoint,
                 self.engine.info().get("backend"))
        return self.endpoint

    def serve_forever(self) -> None:
        """Start, then block until ``stop()`` (or KeyboardInterrupt, which stops)."""
        if not self._threads:
            self.start()
        try:
            while not self._stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            self.stop()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop both threads and close the sockets. Queued decides are not answered (the socket closes)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout_s)
            if t.is_alive():
                log.warning("policy server thread %s did not stop within %.1f s", t.name, timeout_s)
        self._threads = []

    @property
    def running(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    # ------------------------------------------------------------------ introspection
    def stats(self) -> dict[str, Any]:
        """Counters: ``received``, requests answered by reply type (``reply_*``) and error code
        (``error_*``), ``batches``, ``decided``, ``unroutable``...; ``batch_sizes`` histogram."""
        out: dict[str, Any] = dict(self._io_stats)  # dict copies are atomic under the GIL
        for k, v in dict(self._eng_stats).items():
            out[k] = out.get(k, 0) + v
        out["batch_sizes"] = dict(self._batch_sizes)
        out["registrations"] = len(self._handles)
        out["epoch"] = self.epoch
        return out

    @staticmethod
    def _count(stats: dict[str, int], key: str, n: int = 1) -> None:
        stats[key] = stats.get(key, 0) + n

    # ------------------------------------------------------------------ I/O thread
    def _bind(self) -> zmq.Socket:
        cfg = self.config
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, cfg.hard_limit)
        sock.setsockopt(zmq.RCVHWM, 10000)
        sock.setsockopt(zmq.SNDHWM, 10000)
        self._auth = None
        if cfg.curve is not None and cfg.curve.server_secret:
            self._auth = setup_server_curve(self._ctx, sock, cfg.curve)
        try:
            sock.bind(cfg.bind)
        except zmq.ZMQError as exc:
            sock.close(0)
            if self._auth is not None:
                self._auth.stop()
            raise OSError(f"cannot bind {cfg.bind}: {exc}") from exc
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return sock

    def _io_main(self) -> None:
        try:
            router = self._bind()
            inbox = self._ctx.socket(zmq.PULL)
            inbox.setsockopt(zmq.LINGER, 0)
            inbox.bind(self._out_addr)
        except BaseException as exc:  # reported to start()
            self._start_error = exc
            self._io_ready.set()
            return
        self._io_ready.set()
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(inbox, zmq.POLLIN)
        self._router = router
        try:
            # on stop, keep forwarding until the engine thread has finished (its last replies go out)
            while not (self._stop.is_set() and self._engine_done.is_set()):
                ready = dict(poller.poll(self.config.poll_ms if not self._stop.is_set() else 10))
                if inbox in ready:
                    self._forward(inbox)
                if router in ready:
                    self._drain(router)
            self._forward(inbox)
        finally:
            router.close(0)
            inbox.close(0)
            if self._auth is not None:
                self._auth.stop()

    def _forward(self, inbox: zmq.Socket) -> None:
        """Send the replies the engine thread produced: frames [ident, payload, kind]."""
        while inbox.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # no zmq.Again exceptions (~10 us each)
            ident, payload, kind = inbox.recv_multipart()
            self._deliver(ident, payload, kind.decode())

    def _deliver(self, ident: bytes, payload: bytes, kind: str) -> None:
        # Counted before the send, taken back if it fails: a client that has its reply must find it
        # counted when it asks for stats() right after (counting after the send raced with it).
        self._count(self._io_stats, kind)
        try:
            self._router.send_multipart([ident, payload], zmq.NOBLOCK)
        except zmq.Again:
            self._count(self._io_stats, kind, -1)
            self._count(self._io_stats, "dropped_hwm")
        except zmq.ZMQError:  # EHOSTUNREACH: the peer is gone (ROUTER_MANDATORY)
            self._count(self._io_stats, kind, -1)
            self._count(self._io_stats, "unroutable")

    def _io_send(self, ident: bytes, msg: dict[str, Any]) -> None:
        self._deliver(ident, P.pack(msg), _kind(msg))

    def _io_error(self, ident: bytes, code: str, message: str, msg_id: Any, **extra: Any) -> None:
        self._io_send(ident, P.error_message(code, message, msg_id, self.epoch, **extra))

    def _drain(self, router: zmq.Socket) -> None:
        for _ in range(100_000):
            if not router.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return
            frames = router.recv_multipart()
            self._on_message(frames[0], frames[1:], time.perf_counter())

    def _on_message(self, ident: bytes, frames: list[bytes], now: float) -> None:
        self._count(self._io_stats, "received")
        size = sum(len(f) for f in frames)
        if size > self.config.max_message_bytes:
            self._io_error(ident, "oversized", f"message of {size} bytes exceeds the limit of "
                           f"{self.config.max_message_bytes}", None)
            return
        if len(frames) != 1:
            self._io_error(ident, "malformed", f"a message is exactly one frame, got {len(frames)}", None)
            return
        try:
            msg = P.unpack(frames[0], self.config.max_message_bytes)
            req = P.parse_request(msg)
        except P.ProtocolError as exc:
            self._io_error(ident, exc.code, exc.message, exc.msg_id, **exc.extra)
            return
        if isinstance(req, P.Decide):
            self._on_decide(ident, req, now)
        elif isinstance(req, P.Ping):
            with self._cond:
                queued = len(self._pending)
            busy = self._busy_since
            self._io_send(ident, {"v": P.PROTOCOL_VERSION, "type": "pong", "id": req.msg_id, "epoch": self.epoch,
                                  "sent_ms": req.sent_ms, "queued": queued,
                                  "busy_ms": 0.0 if busy is None else (time.perf_counter() - busy) * 1e3})
        elif isinstance(req, P.Hello):
            self._io_send(ident, self._welcome(req))
        else:  # register, bye: the engine thread runs them in arrival order
            if isinstance(req, P.Bye):
                self._cancel_pending(ident)
            with self._cond:
                self._commands.append((ident, req))
                self._cond.notify()

    def _on_decide(self, ident: bytes, req: P.Decide, now: float) -> None:
        if req.handle not in self._handles:
            self._io_error(ident, "unknown_handle", f"handle {req.handle!r} is not registered in epoch "
                           f"{self.epoch}: register the tools again", req.msg_id, tick=req.tick,
                           handle=req.handle)
            return
        key = (ident, req.stream if req.stream is not None else req.handle)
        expires = None if req.deadline_ms is None else now + req.deadline_ms / 1e3
        new = _Pending(ident=ident, req=req, turn=P.to_turn(req.turn), recv_t=now, expires_t=expires)
        with self._cond:
            old = self._pending.pop(key, None)
            self._pending[key] = new
            self._cond.notify()
        if old is not None:
            self._io_error(old.ident, "superseded", f"tick {old.req.tick} replaced by tick {req.tick} before "
                           "decoding", old.req.msg_id, tick=old.req.tick, handle=old.req.handle,
                           by_tick=req.tick)

    def _cancel_pending(self, ident: bytes) -> None:
        with self._cond:
            gone = [self._pending.pop(k) for k in [k for k in self._pending if k[0] == ident]]
        for p in gone:
            self._io_error(ident, "cancelled", "the client said bye before this decide was decoded",
                           p.req.msg_id, tick=p.req.tick, handle=p.req.handle)

    def _welcome(self, req: P.Hello) -> dict[str, Any]:
        from tickcall import __version__ as version

        cfg = self.config
        return {"v": P.PROTOCOL_VERSION, "type": "welcome", "id": req.msg_id, "epoch": self.epoch,
                "versions": list(P.SUPPORTED_VERSIONS), "server": {"name": "tickcall", "version": version},
                "engine": self._engine_info, "templates": list(TEMPLATES),
                "limits": {"max_message_bytes": cfg.max_message_bytes, "max_batch": cfg.max_batch,
                           "max_registrations": cfg.max_registrations,
                           "max_deadline_ms": P.MAX_DEADLINE_MS}}

    @property
    def _engine_info(self) -> dict[str, Any]:
        info = getattr(self, "_info_cache", None)
        if info is None:
            info = self._info_cache = dict(self.engine.info())
        return info

    # ------------------------------------------------------------------ engine thread
    def _engine_main(self) -> None:
        self._info_cache = dict(self.engine.info())
        out = self._ctx.socket(zmq.PUSH)
        out.setsockopt(zmq.LINGER, 0)
        out.setsockopt(zmq.SNDHWM, 0)
        out.connect(self._out_addr)
        self._out = out
        try:
            while not self._stop.is_set():
                with self._cond:
                    while not self._pending and not self._commands and not self._stop.is_set():
                        self._cond.wait(self.config.poll_ms / 1e3)
                    self._gather()
                    commands = list(self._commands)
                    self._commands.clear()
                    expired, batch = self._take_batch()
                for ident, req in commands:
                    if isinstance(req, P.Register):
                        self._register(ident, req)
                    else:
                        self._bye(ident, req)
                for p, late in expired:
                    self._error(p.ident, "expired", f"deadline of {p.req.deadline_ms:.1f} ms passed {late:.1f} ms "
                                "before decoding started", p.req.msg_id, tick=p.req.tick, handle=p.req.handle,
                                late_ms=late)
                if batch:
                    self._decide(batch)
        finally:
            out.close(0)
            self._engine_done.set()

    def _gather(self) -> None:
        """Under the lock: when fewer decides wait than the last batch held, wait up to ``gather_ms``
        for the others (closed-loop clients resend a moment after their reply) so batches stay whole."""
        gather_s = self.config.gather_ms / 1e3
        if gather_s <= 0 or not self._pending or len(self._pending) >= self._last_batch:
            return
        self._count(self._eng_stats, "gather_waits")
        end = time.perf_counter() + gather_s
        while len(self._pending) < self._last_batch and not self._commands and not self._stop.is_set():
            left = end - time.perf_counter()
            if left <= 0:
                return
            self._cond.wait(left)

    def _send(self, ident: bytes, msg: dict[str, Any]) -> None:
        try:
            payload = P.pack(msg)
        except Exception as exc:  # an engine produced something msgpack cannot carry
            msg = P.error_message("engine_failure", f"reply not encodable: {exc}"[:300], msg.get("id"),
                                  self.epoch, tick=msg.get("tick"))
            payload = P.pack(msg)
        try:  # never blocks: unlimited HWM while the I/O thread runs; after it is gone, drop
            self._out.send_multipart([ident, payload, _kind(msg).encode()], zmq.NOBLOCK)
        except zmq.Again:
            self._count(self._eng_stats, "dropped_stopping")

    def _error(self, ident: bytes, code: str, message: str, msg_id: Any, **extra: Any) -> None:
        self._send(ident, P.error_message(code, message, msg_id, self.epoch, **extra))

    def _take_batch(self) -> tuple[list[tuple[_Pending, float]], list[_Pending]]:
        """Under the lock: pull expired decides and up to max_batch live ones (oldest first)."""
        now = time.perf_counter()
        expired: list[tuple[_Pending, float]] = []
        batch: list[_Pending] = []
        for key in list(self._pending):
            p = self._pending[key]
            if p.expires_t is not None and now > p.expires_t:
                del self._pending[key]
                expired.append((p, (now - p.expires_t) * 1e3))
            elif len(batch) < self.config.max_batch:
                del self._pending[key]
                batch.append(p)
        return expired, batch

    def _publish_handles(self) -> None:
        self._handles = frozenset(self._regs)

    def _register(self, ident: bytes, req: P.Register) -> None:
        if req.template is not None and req.template not in TEMPLATES:
            self._error(ident, "malformed", f"unknown template {req.template!r}; choose from "
                        f"{', '.join(TEMPLATES)} or nil for the engine's default", req.msg_id)
            return
        key = hashlib.blake2b(msgpack.packb([req.tools, req.system, req.template], use_bin_type=True),
                              digest_size=16).digest()
        handle = self._by_key.get(key)
        if handle is not None:
            reg = self._regs[handle]
            self._regs.move_to_end(handle)
        else:
            try:
                r = self.engine.register(req.tools, system=req.system, template=req.template)
            except ToolSchemaError as exc:
                self._error(ident, "illegal_tools", str(exc)[:1000], req.msg_id)
                return
            except Exception as exc:
                log.exception("engine.register failed")
                self._error(ident, "engine_failure", f"register failed: {type(exc).__name__}: {exc}"[:1000],
                            req.msg_id)
                return
            self._reg_ids += 1
            reg = _Reg(handle=f"{self.epoch[:8]}.{self._reg_ids}", engine_handle=r.handle,
                       heads=tuple(r.heads), prefix_tokens=int(r.prefix_tokens), template=r.template.name,
                       tool_names=[t.name for t in r.tools], key=key)
            self._regs[reg.handle] = reg
            self._by_key[key] = reg.handle
            while len(self._regs) > self.config.max_registrations:
                _, old = self._regs.popitem(last=False)
                del self._by_key[old.key]
                self.engine.unregister(old.engine_handle)
                self._count(self._eng_stats, "evicted")
            self._publish_handles()
        reg.owners.add(ident)
        self._send(ident, {"v": P.PROTOCOL_VERSION, "type": "registered", "id": req.msg_id, "epoch": self.epoch,
                           "handle": reg.handle, "heads": list(reg.heads), "head_count": len(reg.heads),
                           "prefix_tokens": reg.prefix_tokens, "template": reg.template,
                           "tools": reg.tool_names})

    def _bye(self, ident: bytes, req: P.Bye) -> None:
        for handle in list(self._regs):
            reg = self._regs[handle]
            if ident in reg.owners:
                reg.owners.discard(ident)
                if not reg.owners:
                    del self._regs[handle]
                    del self._by_key[reg.key]
                    self.engine.unregister(reg.engine_handle)
        self._publish_handles()
        self._send(ident, {"v": P.PROTOCOL_VERSION, "type": "bye", "id": req.msg_id, "epoch": self.epoch})

    def _decide(self, batch: list[_Pending]) -> None:
        live = []
        for p in batch:
            if p.req.handle in self._regs:
                live.append(p)
            else:  # evicted or dropped (bye) after it was queued
                self._error(p.ident, "unknown_handle", f"handle {p.req.handle!r} is no longer registered: "
                            "register the tools again", p.req.msg_id, tick=p.req.tick, handle=p.req.handle)
        self._last_batch = len(live)
        if not live:
            return
        self._count(self._eng_stats, "batches")
        self._count(self._eng_stats, "decided", len(live))
        self._batch_sizes[len(live)] = self._batch_sizes.get(len(live), 0) + 1
        t0 = self._busy_since = time.perf_counter()
        try:
            decisions = self.engine.decide_batch([(self._regs[p.req.handle].engine_handle, p.turn) for p in live])
            if len(decisions) != len(live):
                raise RuntimeError(f"engine returned {len(decisions)} decisions for {len(live)} requests")
        except Exception as exc:
            if len(live) == 1:
                self._engine_failure(live[0], exc)
            else:
                self._count(self._eng_stats, "batch_retries")
                for p in live:  # isolate the request that fails
                    t0 = time.perf_counter()
                    try:
                        d = self.engine.decide_batch([(self._regs[p.req.handle].engine_handle, p.turn)])[0]
                    except Exception as exc1:
                        self._engine_failure(p, exc1)
                        continue
                    self._reply_call(p, d, t0, time.perf_counter(), 1)
            self._busy_since = None
            return
        t1 = time.perf_counter()
        self._busy_since = None
        for p, d in zip(live, decisions, strict=True):
            self._reply_call(p, d, t0, t1, len(live))

    def _engine_failure(self, p: _Pending, exc: BaseException) -> None:
        log.warning("engine failure on tick %s: %s", p.req.tick, exc)
        self._error(p.ident, "engine_failure", f"{type(exc).__name__}: {exc}"[:1000], p.req.msg_id,
                    tick=p.req.tick, handle=p.req.handle)

    def _reply_call(self, p: _Pending, d: Any, t0: float, t1: float, batch: int) -> None:
        tm = d.timings_ms
        self._send(p.ident, {
            "v": P.PROTOCOL_VERSION, "type": "call", "id": p.req.msg_id, "epoch": self.epoch,
            "tick": p.req.tick, "handle": p.req.handle,
            "call": None if d.call is None else {"name": d.call.name, "arguments": d.call.arguments},
            "legal": bool(d.legal), "reason": d.reason, "heads": d.heads,
            "tokens": {"prompt": d.prompt_tokens, "cached": d.cached_tokens, "generated": d.generated_tokens},
            "timings_ms": {"queue": (t0 - p.recv_t) * 1e3, "prefill": tm.get("prefill", 0.0),
                           "decode": tm.get("decode", 0.0), "assemble": tm.get("assemble", 0.0),
                           "engine": (t1 - t0) * 1e3, "server": (time.perf_counter() - p.recv_t) * 1e3},
            "batch": batch, "sent_ms": p.req.sent_ms,
        })


def _kind(msg: dict[str, Any]) -> str:
    """Stats key of a reply: ``reply_<type>`` or ``error_<code>``."""
    return f"error_{msg['code']}" if msg["type"] == "error" else f"reply_{msg['type']}"
