"""The policy server: a ZMQ ROUTER that answers protocol-v1 requests with one engine (docs/protocol.md).

Two threads:

* the **I/O thread** owns the ROUTER socket. It reads every message as it arrives and stamps its
  receipt time (the origin of ``deadline_ms``), answers ``hello``, ``ping`` and every bad message at
  once (an ``error`` reply; the server keeps serving), queues ``decide`` with **latest-wins** per
  (client, stream) — a newer decide replaces the queued one, which is answered ``superseded`` — waking
  the engine thread once per read burst (at most ``max_batch`` decides apart), and sends the replies the
  engine thread hands it (one list per engine step, announced by one frame on an inproc socket: a
  batch's replies travel together);
* the **engine thread** owns the engine. It runs ``register``/``bye`` in arrival order, answers
  ``expired`` to queued decides whose deadline passed before decoding starts (nothing decoded), then
  calls ``engine.decide_batch`` once for up to ``max_batch`` queued decides — all clients' heads in one
  batch (when fewer decides wait than the previous batch held, it first waits up to ``gather_ms`` for
  the rest, like Triton's dynamic-batching queue delay; one client alone never waits) — and replies ``call`` to each (``engine_failure`` for a request the engine could not decide; a
  failing batch is retried request by request, so one bad request fails alone).

**Scheduling** (``_take_batch``; docs/protocol.md "Scheduling"): a step's batch is built in rounds of at
most one decide per client (nearest deadline first, then the client served longest ago), within
``max_batch`` decides and ``step_tokens`` turn tokens. With an engine that has ``prefill_chunk``, a
turn of more than 2 x ``prefill_chunk_tokens`` tokens is not batched whole: after each step's batch such
turns get one chunk each prefilled (its K/V kept on its queued ``Job``; the chunks of one registration
in one forward), chosen in rounds of one turn per client within what the batch left of ``step_tokens``,
until only a turn's last token is left; it is then batched like a short decide (a turn's size: the tokens
the engine would prefill now, less what its turn-prefix cache reuses; chunked only when that prefill would
take over ``prefill_chunk_ms`` and another client has had decides queued within ``PEER_WINDOW_S``). A
decide arriving meanwhile waits for at most the chunk step in flight (``stats()["chunk_waits"]`` counts
the chunk steps each waited for). A hot swap makes the chunks prefilled so far stale: the turn is
prefilled again on the new engine.

**Hot swap** (``swap``, ``swap_engine``): new weights are loaded and every live registration is made
again on them (same handles, same heads, prefixes prefilled) in the *caller's* thread while the engine
thread keeps deciding with the old weights; the engine thread then switches between two engine steps
(a swap is a command in its queue, like ``register``), so no decide is dropped or answered twice:
each is decided wholly by the old or wholly by the new weights, and its ``call`` reply says which
(``weights``). A load that fails leaves the old weights serving; the result says why in one line.

Every request gets exactly one reply. Replies that cannot be delivered (the peer is gone:
ROUTER_MANDATORY; or the high-water mark) are counted in ``stats`` (``unroutable``, ``dropped_hwm``).
Times are milliseconds; clocks are ``time.perf_counter`` of this process.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import zmq
from tickcall.agent import protocol as P
from tickcall.agent.config import ServeConfig
from tickcall.agent.core import Job, PolicyCore
from tickcall.agent.messages import Decide, ErrorReply, Hello, Limits, Ping, Pong, Register, Reply, Request
from tickcall.agent.quotas import ClientQueues
from tickcall.agent.security import check_bind, setup_server_curve

log = logging.getLogger("tickcall.agent.server")


@dataclass
class SwapResult:
    """What a hot swap did. ``ok``: the new weights answer from now on (``weights`` names them); else
    ``error`` is one line and the old weights (``weights``) still serve. ``load_ms``: building the new
    engine; ``warm_ms``: building it and registering every live tool set on it (prefixes prefilled),
    all while the old weights served; ``switch_ms``: the pause between two engine steps (ms)."""

    ok: bool
    weights: str
    previous: str
    error: str | None = None
    load_ms: float = 0.0
    warm_ms: float = 0.0
    switch_ms: float = 0.0
    registrations: int = 0
    dropped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


@dataclass
class _Switch:
    """A swap command for the engine thread: the warmed engine and where to put the outcome."""

    engine: Any
    warmed: dict[str, Any]
    weights: str
    done: threading.Event = field(default_factory=threading.Event)
    old: Any = None
    dropped: list[str] = field(default_factory=list)
    pause_ms: float = 0.0


# pyzmq's constants are enums: ``events & zmq.POLLIN`` or ``zmq.SNDMORE | flags`` builds an enum member
# (~0.6 us each, several per request). The hot path uses them as plain ints.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)


# how recently (s) another client must have had a decide queued for a long turn to be chunked
PEER_WINDOW_S = 1.0


class PolicyServer:
    """Serve ``engine`` on ``config.bind``: ``start()`` returns the bound endpoint; ``stop()`` ends it.

    The engine is used from the engine thread only (engines need not be thread-safe).
    """

    def __init__(
        self,
        engine: Any,
        config: ServeConfig | None = None,
        *,
        epoch: str | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.engine = engine
        self.config = config or ServeConfig()
        self.epoch = epoch or uuid.uuid4().hex
        self._ctx = context or zmq.Context.instance()
        self._out_addr = f"inproc://policy-out-{self.epoch}"
        self.endpoint: str | None = None
        # engine-thread state (the core's handles and busy_since are read by the I/O thread too)
        cfg = self.config
        self._core = PolicyCore(
            engine,
            self.epoch,
            cfg.max_registrations,
            max_registrations_per_client=cfg.max_registrations_per_client,
            max_turn_tokens=cfg.max_turn_tokens,
            max_prefix_tokens=cfg.max_prefix_tokens,
        )
        # the weights' name is the model folder the config asked for (an engine may report a cache folder)
        self._core.weights = _spec_name(cfg.engine) or self._core.weights
        self._last_batch = 0
        # scheduling (engine thread; _take_batch): the step counter, the step each client was last
        # served a decide / a chunk (round robin), whether a long turn waits for chunks (no gather
        # wait then), chunks started so far (read by the I/O thread to stamp each decide) and, per
        # number of other turns' chunks a never-chunked decide waited for, how many did (stats)
        self._step = 0
        self._served: dict[Any, int] = {}
        self._chunked: dict[Any, int] = {}
        # clients with decides queued within PEER_WINDOW_S (perf s last seen); a turn is chunked only
        # while someone else could be kept waiting by it
        self._seen: dict[Any, float] = {}
        self._recent: set[Any] = set()
        self._chunk_backlog = False
        self._chunk_seq = 0
        self.chunk_waits: dict[int, int] = {}
        # engine thread -> I/O thread: lists of encoded replies (ident, payload, stats kind); each list
        # is announced by one empty frame on the inproc socket, which wakes the I/O thread's poll
        self._outbox: list[tuple[bytes, bytes, str]] = []
        self._handover: deque[list[tuple[bytes, bytes, str]]] = deque()
        # shared (guarded by _cond)
        self._cond = threading.Condition(threading.Lock())  # never taken re-entrantly: a plain lock
        self._pending: dict[tuple[bytes, str], Job] = {}
        self._quota = ClientQueues(cfg.max_streams_per_client, cfg.max_queued_bytes_per_client)
        self._commands: deque[tuple[bytes, Request]] = deque()
        # I/O-thread state
        self._io_stats: dict[str, int] = {}
        self._queued = 0  # decides queued since the engine thread was last woken
        self._stop = threading.Event()
        self._swap_lock = threading.Lock()  # one hot swap at a time
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
        log.info(
            "policy service epoch %s on %s (engine %s)",
            self.epoch,
            self.endpoint,
            self.engine.info().get("backend"),
        )
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
        for k, v in dict(self._core.stats).items():
            out[k] = out.get(k, 0) + v
        out["batch_sizes"] = dict(self._core.batch_sizes)
        out["chunk_waits"] = dict(self.chunk_waits)
        out["queued"] = len(self._pending)
        out["registrations"] = len(self._core.handles)
        out["epoch"] = self.epoch
        return out

    @property
    def weights(self) -> str:
        """The name of the weights answering now (``CallReply.weights``)."""
        return self._core.weights

    # ------------------------------------------------------------------ hot swap
    def swap(self, spec: dict[str, Any], name: str | None = None, timeout_s: float = 60.0) -> SwapResult:
        """Load the engine of ``spec`` (``agent.engines.build_engine``: ``{"backend": "transformers",
        "model": PATH}``...) and swap it in behind the same registrations (module docstring). Blocks the
        calling thread (never the service's) until switched or failed. ``name``: the new weights' name
        (default: the model folder's name). Never raises for a bad model: ``SwapResult.error``."""
        from tickcall.agent.engines import build_engine

        t0 = time.perf_counter()
        try:
            engine = build_engine(spec)
        except Exception as exc:  # a folder that does not load: the old weights keep serving
            return self._swap_failed(f"cannot load {_what(spec)}: {_one_line(exc)}", t0)
        return self.swap_engine(engine, name, timeout_s=timeout_s, t0=t0, spec=spec)

    def swap_engine(
        self,
        engine: Any,
        name: str | None = None,
        *,
        timeout_s: float = 60.0,
        t0: float | None = None,
        spec: dict[str, Any] | None = None,
    ) -> SwapResult:
        """Swap in an engine already built (``swap`` builds one from ``spec``, whose model folder then names
        the weights); ``engine`` is closed when the swap fails. One swap at a time (a second caller
        waits for the first)."""
        from tickcall.agent.core import weights_name

        t0 = time.perf_counter() if t0 is None else t0
        with self._swap_lock:
            load_ms = (time.perf_counter() - t0) * 1e3
            previous = self._core.weights
            weights = name or _spec_name(spec) or weights_name(engine)
            if weights == previous:  # the same folder again: still a new generation of weights
                weights = f"{weights}#{self._core.stats.get('swaps', 0) + 1}"
            try:
                warmed = self._core.warm(engine)
            except Exception as exc:
                with contextlib.suppress(Exception):
                    engine.close()
                return self._swap_failed(
                    f"the new weights cannot serve the registrations: {_one_line(exc)}", t0
                )
            warm_ms = (time.perf_counter() - t0) * 1e3
            n_regs = len(warmed)
            cmd = _Switch(engine, warmed, weights)
            with self._cond:
                self._commands.append((b"", cmd))  # type: ignore[arg-type]  # an engine-thread command
                self._cond.notify()
            if not cmd.done.wait(timeout_s):
                # the engine thread is stuck in a batch (or stopped): the command may still run later
                return self._swap_failed(f"the engine thread did not switch within {timeout_s:.0f} s", t0)
            old, cmd.old = cmd.old, None
            with contextlib.suppress(Exception):
                old.close()  # no longer used by the engine thread: its memory goes now
            log.info(
                "hot swap: %s -> %s (warm %.0f ms, pause %.2f ms)", previous, weights, warm_ms, cmd.pause_ms
            )
            return SwapResult(
                ok=True,
                weights=weights,
                previous=previous,
                load_ms=round(load_ms, 3),
                warm_ms=round(warm_ms, 3),
                switch_ms=round(cmd.pause_ms, 3),
                registrations=n_regs,
                dropped=list(cmd.dropped),
            )

    def _swap_failed(self, error: str, t0: float) -> SwapResult:
        self._core.stats["swap_failures"] = self._core.stats.get("swap_failures", 0) + 1
        log.warning("hot swap failed, %s still serves: %s", self._core.weights, error)
        w = self._core.weights
        return SwapResult(
            ok=False, weights=w, previous=w, error=error, warm_ms=round((time.perf_counter() - t0) * 1e3, 3)
        )

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
                ready = [
                    sock for sock, _ in poller.poll(self.config.poll_ms if not self._stop.is_set() else 10)
                ]
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
        """Send the replies the engine thread handed over (its wake-up frames are only read)."""
        while inbox.getsockopt(_EVENTS) & _POLLIN:  # no zmq.Again exceptions (~10 us each)
            inbox.recv()
        handover = self._handover
        while handover:
            for ident, payload, kind in handover.popleft():
                self._deliver(ident, payload, kind)

    def _deliver(self, ident: bytes, payload: bytes, kind: str) -> None:
        # Counted before the send, taken back if it fails: a client that has its reply must find it
        # counted when it asks for stats() right after (counting after the send raced with it).
        self._count(self._io_stats, kind)
        try:
            # the identity frame is where ROUTER_MANDATORY (peer gone) and the high-water mark refuse:
            # nothing is queued then, as with send_multipart
            self._router.send(ident, _NOBLOCK | _SNDMORE)
            self._router.send(payload, _NOBLOCK)
        except zmq.Again:
            self._count(self._io_stats, kind, -1)
            self._count(self._io_stats, "dropped_hwm")
        except zmq.ZMQError:  # EHOSTUNREACH: the peer is gone (ROUTER_MANDATORY)
            self._count(self._io_stats, kind, -1)
            self._count(self._io_stats, "unroutable")

    def _io_send(self, ident: bytes, msg: Reply) -> None:
        self._deliver(ident, P.encode(msg), _kind(msg))

    def _io_error(self, ident: bytes, code: str, message: str, msg_id: Any, **extra: Any) -> None:
        self._io_send(ident, P.error_reply(code, message, msg_id, self.epoch, **extra))

    def _drain(self, router: zmq.Socket) -> None:
        """Read what has arrived; the engine thread is woken once at the end (and every ``max_batch``
        queued decides), not once per decide: one wake-up, and one GIL hand-over, per burst."""
        try:
            for _ in range(100_000):
                if not router.getsockopt(_EVENTS) & _POLLIN:
                    return
                ident = router.recv()  # a ROUTER message is the peer's identity and 1+ frames
                frame = router.recv(copy=False)  # Frame.more: ~1 us less than getsockopt(RCVMORE)
                frames = [frame.bytes]
                while frame.more:
                    frame = router.recv(copy=False)
                    frames.append(frame.bytes)
                self._on_message(ident, frames, time.perf_counter())
                if self._queued >= self.config.max_batch:
                    self._wake_engine()
        finally:
            self._wake_engine()

    def _wake_engine(self) -> None:
        if self._queued:
            self._queued = 0
            with self._cond:
                self._cond.notify()

    def _on_message(self, ident: bytes, frames: list[bytes], now: float) -> None:
        self._count(self._io_stats, "received")
        size = len(frames[0]) if len(frames) == 1 else sum(len(f) for f in frames)
        if size > self.config.max_message_bytes:
            self._io_error(
                ident,
                "oversized",
                f"message of {size} bytes exceeds the limit of {self.config.max_message_bytes}",
                None,
            )
            return
        if len(frames) != 1:
            self._io_error(ident, "malformed", f"a message is exactly one frame, got {len(frames)}", None)
            return
        try:
            req = P.decode_request(frames[0], self.config.max_message_bytes)
        except P.ProtocolError as exc:
            self._io_error(ident, exc.code, exc.message, exc.msg_id, **exc.extra)
            return
        if isinstance(req, Decide):
            self._on_decide(ident, req, now, size)
        elif isinstance(req, Ping):
            with self._cond:
                queued = len(self._pending)
            busy = self._core.busy_since
            self._io_send(
                ident,
                Pong(
                    id=req.id,
                    epoch=self.epoch,
                    sent_ms=req.sent_ms,
                    queued=queued,
                    busy_ms=0.0 if busy is None else (time.perf_counter() - busy) * 1e3,
                ),
            )
        elif isinstance(req, Hello):
            cfg = self.config
            self._io_send(
                ident,
                self._core.welcome(
                    req,
                    Limits(
                        max_message_bytes=cfg.max_message_bytes,
                        max_batch=cfg.max_batch,
                        max_registrations=cfg.max_registrations,
                        max_deadline_ms=P.MAX_DEADLINE_MS,
                    ),
                ),
            )
        else:  # register, bye: the engine thread runs them in arrival order
            if not isinstance(req, Register):
                self._cancel_pending(ident)
            with self._cond:
                self._commands.append((ident, req))
                self._cond.notify()

    def _on_decide(self, ident: bytes, req: Decide, now: float, nbytes: int = 0) -> None:
        """Queue ``req`` (``nbytes``: its wire size) latest-wins per (client, stream), within the
        client's quotas; a decide beyond them is answered ``over_quota`` at once, nothing queued."""
        if req.handle not in self._core.handles:
            self._io_error(
                ident,
                "unknown_handle",
                f"handle {req.handle!r} is not registered in epoch {self.epoch}: register the tools again",
                req.id,
                tick=req.tick,
                handle=req.handle,
            )
            return
        key = (ident, req.stream if req.stream is not None else req.handle)
        expires = None if req.deadline_ms is None else now + req.deadline_ms / 1e3
        new = Job(
            owner=ident,
            req=req,
            turn=P.to_turn(req.turn),
            recv_t=now,
            expires_t=expires,
            nbytes=nbytes,
            chunk_seq=self._chunk_seq,
        )
        with self._cond:
            old = self._pending.get(key)
            refusal = self._quota.refusal(ident, nbytes, None if old is None else old.nbytes)
            if refusal is None:
                if old is not None:
                    del self._pending[key]
                    self._quota.remove(ident, old.nbytes)
                self._pending[key] = new
                self._quota.add(ident, nbytes)
        if refusal is None:
            self._queued += 1  # _drain wakes the engine thread
        else:
            self._count(self._io_stats, "refused_over_quota")
            self._io_error(ident, "over_quota", refusal, req.id, tick=req.tick, handle=req.handle)
            return
        if old is not None:
            self._io_error(
                old.owner,
                "superseded",
                f"tick {old.req.tick} replaced by tick {req.tick} before decoding",
                old.req.id,
                tick=old.req.tick,
                handle=old.req.handle,
                by_tick=req.tick,
            )

    def _cancel_pending(self, ident: bytes) -> None:
        with self._cond:
            gone = [self._pending.pop(k) for k in [k for k in self._pending if k[0] == ident]]
            for p in gone:
                self._quota.remove(ident, p.nbytes)
        for p in gone:
            self._io_error(
                ident,
                "cancelled",
                "the client said bye before this decide was decoded",
                p.req.id,
                tick=p.req.tick,
                handle=p.req.handle,
            )

    # ------------------------------------------------------------------ engine thread
    def _engine_main(self) -> None:
        _ = self._core.engine_info  # engines are used from this thread only: ask for the info here, once
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
                    expired, batch, long_jobs = self._take_batch()
                for ident, req in commands:
                    if isinstance(req, _Switch):
                        t_sw = time.perf_counter()
                        req.old, req.dropped = self._core.switch(req.engine, req.warmed, req.weights)
                        self.engine = req.engine
                        req.pause_ms = (time.perf_counter() - t_sw) * 1e3
                        req.done.set()
                        continue
                    try:
                        reply = (
                            self._core.register(ident, req)
                            if isinstance(req, Register)
                            else self._core.bye(ident, req)
                        )
                    except Exception as exc:  # one request must never end the engine thread
                        log.exception("%s failed", req.type)
                        reply = P.error_reply(
                            "engine_failure",
                            f"{req.type} failed: {type(exc).__name__}: {exc}"[:1000],
                            req.id,
                            self.epoch,
                        )
                    self._send(ident, reply)
                for p, late in expired:
                    self._send(
                        p.owner,
                        P.error_reply(
                            "expired",
                            f"deadline of {p.req.deadline_ms:.1f} ms passed {late:.1f} ms before decoding "
                            "started",
                            p.req.id,
                            self.epoch,
                            tick=p.req.tick,
                            handle=p.req.handle,
                            late_ms=late,
                        ),
                    )
                self._flush()  # before the batch: a register or an expired decide never waits for decoding
                if batch:
                    self._last_batch = len([p for p in batch if p.req.handle in self._core.handles])
                    waits = self.chunk_waits
                    for p in batch:
                        if p.part is None:  # decides never chunked: other turns' chunks they waited for
                            n = self._chunk_seq - p.chunk_seq
                            waits[n] = waits.get(n, 0) + 1
                    for p, reply in zip(batch, self._core.decide(batch), strict=True):
                        self._send(p.owner, reply)
                    self._flush()
                live = [j for j in long_jobs if self._pending.get(self._key(j)) is j]
                if live:
                    self._chunk_seq += 1  # before it starts: a decide received from now on waits for it
                    self._core.prefill_chunks(live, self.config.prefill_chunk_tokens)
        finally:
            out.close(0)
            self._engine_done.set()

    def _gather(self) -> None:
        """Under the lock: when fewer decides wait than the last batch held, wait up to ``gather_ms``
        for the others (closed-loop clients resend a moment after their reply) so batches stay whole."""
        gather_s = self.config.gather_ms / 1e3
        if (
            gather_s <= 0
            or self._chunk_backlog
            or not self._pending
            or len(self._pending) >= self._last_batch
        ):
            return
        self._core.stats["gather_waits"] = self._core.stats.get("gather_waits", 0) + 1
        end = time.perf_counter() + gather_s
        while len(self._pending) < self._last_batch and not self._commands and not self._stop.is_set():
            left = end - time.perf_counter()
            if left <= 0:
                return
            self._cond.wait(left)

    def _is_long(self, job: Job, chunk: int) -> bool:
        """Whether ``job`` is prefilled by chunks of ``chunk`` tokens, not batched yet: more than twice
        ``chunk`` turn tokens left (a shorter turn costs about two chunks: splitting it would only add
        steps) whose whole prefill would take over ``prefill_chunk_ms`` at the engine's measured cost
        per token (unknown before the first batch: long), while another client has had decides queued
        within ``PEER_WINDOW_S`` (chunks only let others in between; a client alone gets its turn
        whole, sooner); or a chunked turn not yet down to its last token (the heads' tags are prefilled
        with it in the batch, which then costs what a short decide costs)."""
        if not chunk:
            return False
        left = self._core.to_prefill(job)
        if job.part is not None:
            return left > 1
        if left <= 2 * chunk or not (self._recent - {job.owner}):  # alone: nobody to keep waiting less
            return False
        cost = self._core.prefill_cost_ms(left)  # cheap enough to batch whole: nobody waits long for it
        return cost is None or cost > self.config.prefill_chunk_ms

    @staticmethod
    def _key(job: Job) -> tuple[bytes, str]:
        """The latest-wins key of a queued decide: (client, stream; the handle without one)."""
        return (job.owner, job.req.stream if job.req.stream is not None else job.req.handle)

    def _send(self, ident: bytes, msg: Reply) -> None:
        """Encode ``msg`` for ``ident`` into the outbox (``_flush`` hands it to the I/O thread)."""
        try:
            payload = P.encode(msg)
        except Exception as exc:  # an engine produced something msgpack cannot carry
            msg = P.error_reply(
                "engine_failure",
                f"reply not encodable: {exc}"[:300],
                msg.id,
                self.epoch,
                tick=getattr(msg, "tick", None),
            )
            payload = P.encode(msg)
        self._outbox.append((ident, payload, _kind(msg)))

    def _flush(self) -> None:
        """Hand the outbox to the I/O thread: one list and one wake-up frame per engine step, not a
        message per reply (a deque's append and popleft are atomic; the frame is sent after the append,
        so the I/O thread, woken, finds the list)."""
        replies, self._outbox = self._outbox, []
        if not replies:
            return
        self._handover.append(replies)
        try:  # never blocks: unlimited HWM while the I/O thread runs; after it is gone, drop
            self._out.send(b"", _NOBLOCK)
        except zmq.Again:  # no I/O thread to read it (stopping)
            with contextlib.suppress(ValueError):  # unless the I/O thread took it meanwhile
                self._handover.remove(replies)
                stats = self._core.stats
                stats["dropped_stopping"] = stats.get("dropped_stopping", 0) + len(replies)

    def _take_batch(self) -> tuple[list[tuple[Job, float]], list[Job], list[Job]]:
        """Under the lock: pull the expired decides, the next batch, and the long turns to prefill one
        chunk each of this step (module docstring "Scheduling"). The batch is built in rounds of at most one
        decide per client, clients ordered by their head's deadline (nearest first, none last), then by
        the step they were last served (longest ago first), then by arrival; it stops at ``max_batch``
        decides, and a decide that would take the step over ``step_tokens`` turn tokens waits (the first
        always fits). With chunking, a turn with more than ``prefill_chunk_tokens`` left to prefill is
        not batched: such turns get one chunk each this step (``_chunk_picks``: rounds of one per client,
        within what the batch left of ``step_tokens``), and stay queued meanwhile (latest-wins, quotas
        and deadlines still apply to them)."""
        cfg = self.config
        now = time.perf_counter()
        self._step += 1
        expired: list[tuple[Job, float]] = []
        queues: dict[Any, list[tuple[tuple[bytes, str], Job]]] = {}
        for key in list(self._pending):
            p = self._pending[key]
            if p.expires_t is not None and now > p.expires_t:
                del self._pending[key]
                self._quota.remove(p.owner, p.nbytes)
                expired.append((p, (now - p.expires_t) * 1e3))
            else:
                queues.setdefault(p.owner, []).append((key, p))
        seen = self._seen
        for owner in queues:
            seen[owner] = now
        for owner in [o for o, t in seen.items() if now - t > PEER_WINDOW_S]:
            del seen[owner]
        self._recent = set(seen)
        chunk = cfg.prefill_chunk_tokens if self._core.can_chunk else 0
        inf = float("inf")
        for q in queues.values():  # each client's own order: nearest deadline, then oldest
            q.sort(key=lambda kp: (inf if kp[1].expires_t is None else kp[1].expires_t, kp[1].recv_t))
        batch: list[Job] = []
        longs: list[tuple[Any, Job]] = []  # (client, its turn too long to batch whole)
        tokens = 0
        served = self._served
        while queues and len(batch) < cfg.max_batch:
            order = sorted(
                queues,
                key=lambda o: (
                    inf if queues[o][0][1].expires_t is None else queues[o][0][1].expires_t,
                    served.get(o, -1),
                    queues[o][0][1].recv_t,
                ),
            )
            took = False
            for owner in order:
                q = queues[owner]
                while q and self._is_long(q[0][1], chunk):
                    longs.append((owner, q.pop(0)[1]))
                if not q:
                    del queues[owner]
                    continue
                if len(batch) >= cfg.max_batch:
                    break
                key, p = q[0]
                need = self._core.to_prefill(p)
                if batch and tokens + need > cfg.step_tokens:  # over this step's budget: the next step
                    del queues[owner]
                    continue
                q.pop(0)
                del self._pending[key]
                self._quota.remove(p.owner, p.nbytes)
                batch.append(p)
                tokens += need
                served[owner] = self._step
                took = True
                if not q:
                    del queues[owner]
            if not took:
                break
        for q in queues.values():  # long turns behind a full batch still count for the chunks' choice
            longs += [(q[0][1].owner, p) for _, p in q if self._is_long(p, chunk)]
        long_jobs = self._chunk_picks(longs, chunk, cfg.step_tokens - tokens)
        self._chunk_backlog = bool(long_jobs)
        if len(served) > 4 * cfg.max_batch + 1024:  # forget clients with nothing queued
            live = {p.owner for p in self._pending.values()} | {p.owner for p in batch}
            self._served = {o: s for o, s in served.items() if o in live}
            self._chunked = {o: s for o, s in self._chunked.items() if o in live}
        return expired, batch, long_jobs

    def _chunk_picks(self, longs: list[tuple[Any, Job]], chunk: int, budget: int) -> list[Job]:
        """The long turns that get one chunk each this step: in rounds of at most one turn per client
        (clients ordered by their most urgent turn: nearest deadline, then chunked longest ago; within a
        client a turn already begun first, its K/V held, then arrival), until ``max_batch`` turns or
        ``budget`` chunk tokens (what ``step_tokens`` leaves after the batch; the first always fits)."""
        if not longs:
            return []
        inf = float("inf")
        chunked = self._chunked
        ordered = sorted(
            longs,
            key=lambda op: (
                inf if op[1].expires_t is None else op[1].expires_t,
                chunked.get(op[0], -1),
                op[1].part is None,
                op[1].recv_t,
            ),
        )
        per_owner: dict[Any, list[Job]] = {}
        for owner, job in ordered:
            per_owner.setdefault(owner, []).append(job)
        picks: list[Job] = []
        while per_owner and len(picks) < self.config.max_batch:
            for owner in list(per_owner):
                q = per_owner[owner]
                if picks and chunk > budget:
                    return picks
                picks.append(q.pop(0))
                budget -= chunk
                chunked[owner] = self._step
                if not q:
                    del per_owner[owner]
                if len(picks) >= self.config.max_batch:
                    break
        return picks


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or repr(exc)
    return f"{type(exc).__name__}: {text}"[:500]


def _spec_name(spec: dict[str, Any] | None) -> str | None:
    """The name of the weights an engine spec asks for: its model folder's name (None without one)."""
    model = (spec or {}).get("model")
    if not model:
        return None
    from pathlib import Path

    return Path(str(model)).name or str(model)


def _what(spec: dict[str, Any]) -> str:
    return str(spec.get("model") or spec.get("factory") or spec.get("backend") or spec)


def _kind(msg: Reply) -> str:
    """Stats key of a reply: ``reply_<type>`` or ``error_<code>``."""
    return f"error_{msg.code}" if isinstance(msg, ErrorReply) else f"reply_{msg.type}"
