"""The engine bridge, mode 1: a game engine connects over ZeroMQ and becomes the world of a loop.

``EngineBridge`` binds a ROUTER socket (127.0.0.1 by default) and runs one I/O thread that owns it.
An engine (any language) connects a DEALER, says ``hello`` (name, tools as JSON schema, how it
describes observations), streams ``obs`` and answers each ``call`` with ``ack`` and ``result``.
The protocol is in docs/protocol.md and envs/engine_bridge_protocol.py.

Invariants
----------
* Nothing on the caller's side blocks on the engine: ``latest_observation`` reads a slot,
  ``send_call`` queues a message and returns an ``EngineCall`` at once (microseconds).
  Only the explicitly blocking helpers (``wait_for_engine``, ``wait_observation`` for lock-step)
  wait, each with a timeout.
* Observations: latest wins. Only the newest observation of the current session is kept; one from
  an older session, with a seq not above the newest, or older than ``max_obs_age_ms`` is never
  returned.
* Every call ends in exactly one terminal state: ``done``, ``failed`` (the engine's error),
  ``rejected`` (never sent: illegal for the engine's tools, or no engine), ``lost`` (the engine left,
  restarted or was superseded first) or ``timeout`` (no ack within ``ack_timeout_ms`` or no result
  within ``result_timeout_ms``). ``calls == done + failed + rejected + lost + timeout + in_flight``.
* A bad engine message gets an ``error`` reply with a code (rate-limited per peer) and is counted;
  it never stops the I/O thread or touches the current session unless the error is fatal.
* One engine at a time: the newest ``hello`` wins (an engine restart is a new hello); the previous
  peer, if still connected, gets a fatal ``superseded`` error.
* Heartbeats both ways: the bridge pings every ``heartbeat_ms``; a session silent for
  ``heartbeat_ms * heartbeat_misses`` (using the larger of both sides' periods) is dropped.

Times are milliseconds (``*_ms``) unless stated; ``time.monotonic`` is the bridge's clock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import zmq
from tickcall.envs.engine_bridge_protocol import (
    DEFAULT_HEARTBEAT_MISSES,
    DEFAULT_HEARTBEAT_MS,
    DEFAULT_MAX_MSG_BYTES,
    ENGINE_TYPES,
    Hello,
    Observation,
    ProtocolError,
    bye_message,
    call_message,
    decode,
    encode,
    parse_ack,
    parse_episode,
    parse_hello,
    parse_obs,
    parse_result,
    ping_message,
    pong_message,
    render_values,
    step_message,
    welcome_message,
)
from tickcall.models.calls import Call
from tickcall.models.tools import ToolSchemaError, ToolSpec, normalize_tools, validate_arguments

from tickcall.timing import summary

log = logging.getLogger("tickcall.engine_bridge")

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5560"
TERMINAL_STATES = ("done", "failed", "rejected", "lost", "timeout")


class EngineCallError(RuntimeError):
    """A call that did not succeed: ``state`` is its terminal state, ``code`` says why."""

    def __init__(self, state: str, code: str, message: str) -> None:
        # str() is what a history line shows: "cooldown: fire is cooling down: 3 steps left"
        super().__init__(f"{code}: {message}" if message else code)
        self.state = state
        self.code = code
        self.message = message


class BridgeConfigError(ValueError):
    """A bridge configuration that must not run (e.g. an exposed bind without CURVE)."""


@dataclass
class BridgeConfig:
    """Bridge settings. ``endpoint`` is bound (ROUTER). Binding anything but loopback needs CURVE
    (``curve_secret_key`` = the server's z85 secret key, or a path to a file holding it) unless
    ``allow_insecure`` is set."""

    endpoint: str = DEFAULT_ENDPOINT
    heartbeat_ms: float = DEFAULT_HEARTBEAT_MS
    heartbeat_misses: int = DEFAULT_HEARTBEAT_MISSES
    max_msg_bytes: int = DEFAULT_MAX_MSG_BYTES
    ack_timeout_ms: float = 1000.0
    result_timeout_ms: float = 10_000.0  # 0 disables the result timeout
    max_obs_age_ms: float = 500.0  # older observations are stale and never returned
    errors_per_second: int = 20  # error replies per peer per second; the rest are only counted
    curve_secret_key: str | None = None
    allow_insecure: bool = False

    def __post_init__(self) -> None:
        if not 10 <= self.heartbeat_ms <= 60_000:
            raise BridgeConfigError(f"heartbeat_ms={self.heartbeat_ms} must be within 10..60000")
        if self.heartbeat_misses < 2:
            raise BridgeConfigError("heartbeat_misses must be >= 2")
        if self.max_msg_bytes < 1024:
            raise BridgeConfigError("max_msg_bytes must be >= 1024")
        if self.ack_timeout_ms <= 0 or self.max_obs_age_ms <= 0:
            raise BridgeConfigError("ack_timeout_ms and max_obs_age_ms must be > 0")


def is_loopback(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on 127.0.0.0/8, ::1 or localhost."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _load_key(value: str) -> bytes:
    if os.path.isfile(value):
        with open(value, encoding="ascii") as fh:
            for line in fh:
                line = line.strip()
                if line.startswith("secret-key"):
                    return line.split("=", 1)[1].strip().strip('"').encode()
                if len(line) == 40:
                    return line.encode()
        raise BridgeConfigError(f"{value}: no 40-character z85 secret key found")
    if len(value) != 40:
        raise BridgeConfigError("curve_secret_key must be a 40-character z85 key or a key file")
    return value.encode()


# --------------------------------------------------------------------------- calls


@dataclass
class CallOutcome:
    """A finished call's result as reported by the engine (``value`` is the engine's, may be None)."""

    id: int
    value: Any
    ack_frame: int
    result_frame: int
    ack_ms: float
    result_ms: float


@dataclass
class EngineCall:
    """One call handed to the engine. ``acked`` resolves with the engine's frame when the engine
    acknowledges; ``result`` with a ``CallOutcome``, or raises ``EngineCallError``. Callbacks added
    to these futures run on the bridge's I/O thread: keep them short."""

    id: int
    call: Call
    session: str
    tick: int
    obs_seq: int
    sent_at: float  # bridge monotonic seconds
    acked: Future = field(default_factory=Future, repr=False)
    result: Future = field(default_factory=Future, repr=False)
    state: str = "in_flight"
    ack_frame: int = -1
    ack_at: float | None = None

    @property
    def done(self) -> bool:
        return self.state != "in_flight"


# --------------------------------------------------------------------------- sessions


@dataclass
class Session:
    """The engine currently connected (one at a time)."""

    peer: bytes
    hello: Hello
    tools: list[ToolSpec]
    started: float
    last_seen: float
    last_ping: float = 0.0
    newest_seq: int = -1
    obs_received: int = 0

    @property
    def id(self) -> str:
        return self.hello.session

    @property
    def tool_map(self) -> dict[str, ToolSpec]:
        return {t.name: t for t in self.tools}


class _PeerLimiter:
    """Error replies per peer per second (bounded memory: at most ``cap`` peers remembered)."""

    def __init__(self, per_second: int, cap: int = 1024) -> None:
        self.per_second = per_second
        self.cap = cap
        self._windows: dict[bytes, list[float]] = {}

    def allow(self, peer: bytes, now: float) -> bool:
        w = self._windows.get(peer)
        if w is None or now - w[0] >= 1.0:
            if w is None and len(self._windows) >= self.cap:
                self._windows.pop(next(iter(self._windows)))
            self._windows[peer] = [now, 1]
            return True
        if w[1] >= self.per_second:
            return False
        w[1] += 1
        return True


def _settle(fut: Future, value: Any = None, exc: BaseException | None = None) -> None:
    """Resolve a future unless it is already done (a caller may have cancelled it)."""
    if fut.done():
        return
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)
    except InvalidStateError:  # cancelled between the check and the set
        pass


# --------------------------------------------------------------------------- the bridge


class EngineBridge:
    """The mode-1 bridge server. Use as a context manager or ``start()``/``close()``.

    >>> with EngineBridge(BridgeConfig(endpoint="tcp://127.0.0.1:5560")) as bridge:
    ...     hello = bridge.wait_for_engine(timeout_s=10)
    ...     obs = bridge.latest_observation()
    ...     handle = bridge.send_call(Call("move", {"direction": "left"}))
    """

    def __init__(self, config: BridgeConfig | None = None, **overrides: Any) -> None:
        cfg = config or BridgeConfig()
        if overrides:
            cfg = BridgeConfig(**{**cfg.__dict__, **overrides})
        if not is_loopback(cfg.endpoint) and not cfg.curve_secret_key and not cfg.allow_insecure:
            raise BridgeConfigError(
                f"refusing to bind {cfg.endpoint} without CURVE: set curve_secret_key (or "
                "allow_insecure=True on a trusted network); loopback binds need neither")
        self.config = cfg
        self.epoch = secrets.token_hex(8)
        self._lock = threading.RLock()  # re-entrant: error replies may be sent while it is held
        self._obs_cond = threading.Condition(self._lock)
        self._session: Session | None = None
        self._latest: Observation | None = None
        self._calls: dict[int, EngineCall] = {}
        self._next_id = 1
        self._out: queue.SimpleQueue[tuple[bytes | None, bytes, int | None]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ctx: zmq.Context | None = None
        self._wake_push: zmq.Socket | None = None
        self._wake_lock = threading.Lock()
        self._limiter = _PeerLimiter(cfg.errors_per_second)
        self.endpoint = cfg.endpoint  # the bound endpoint (port resolved when binding to port 0)
        self.counts: dict[str, int] = {k: 0 for k in (
            "calls", "done", "failed", "rejected", "lost", "timeout", "late_replies",
            "obs_received", "obs_replaced", "obs_taken", "obs_stale_queries",
            "errors_sent", "errors_suppressed", "send_failures", "sessions", "sessions_lost", "rehellos",
            "pings_sent", "pongs_received", "episodes", "steps_sent", "io_errors")}
        self.errors_by_code: dict[str, int] = {}
        self.events: list[dict[str, Any]] = []
        self.episodes: list[dict[str, Any]] = []
        self._ack_ms: deque[float] = deque(maxlen=100_000)
        self._result_ms: deque[float] = deque(maxlen=100_000)
        self._rtt_ms: deque[float] = deque(maxlen=10_000)
        self._taken_seq = -1
        self._pinned: list[ToolSpec] | None = None
        self._t0 = time.monotonic()

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> EngineBridge:
        if self._thread is not None:
            return self
        self._ctx = zmq.Context()
        router = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.SNDHWM, 1000)
        router.setsockopt(zmq.RCVHWM, 1000)
        router.setsockopt(zmq.MAXMSGSIZE, 4 * self.config.max_msg_bytes)
        if self.config.curve_secret_key:
            secret = _load_key(self.config.curve_secret_key)
            router.curve_secretkey = secret
            router.curve_publickey = zmq.curve_public(secret)
            router.curve_server = True
        router.bind(self.config.endpoint)
        self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        wake_addr = f"inproc://engine-bridge-wake-{self.epoch}"
        wake_pull = self._ctx.socket(zmq.PULL)
        wake_pull.setsockopt(zmq.LINGER, 0)
        wake_pull.bind(wake_addr)
        self._wake_push = self._ctx.socket(zmq.PUSH)
        self._wake_push.setsockopt(zmq.LINGER, 0)
        self._wake_push.connect(wake_addr)
        self._thread = threading.Thread(target=self._run, args=(router, wake_pull),
                                        name="engine-bridge-io", daemon=True)
        self._thread.start()
        log.info("engine bridge listening on %s (epoch %s)", self.endpoint, self.epoch)
        return self

    def close(self, reason: str = "tickcall is closing") -> None:
        """Tell the engine ``bye``, end every in-flight call as ``lost`` and stop the I/O thread."""
        if self._thread is None:
            return
        with self._lock:
            sess = self._session
        if sess is not None:
            self._enqueue(sess.peer, encode(bye_message(reason)))
        self._stop.set()
        self._wake()
        self._thread.join(timeout=5)
        self._thread = None
        with self._lock:
            self._end_session_locked("lost", "bridge_closed", reason)
        if self._wake_push is not None:
            self._wake_push.close(0)
        if self._ctx is not None:
            self._ctx.term()
        self._ctx = None

    def __enter__(self) -> EngineBridge:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- what the loop uses ----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._session is not None

    @property
    def session(self) -> Session | None:
        return self._session

    def wait_for_engine(self, timeout_s: float) -> Hello:
        """Block until an engine has said hello; raises TimeoutError after ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        with self._obs_cond:
            while self._session is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no engine connected to {self.endpoint} within {timeout_s} s")
                self._obs_cond.wait(left)
            return self._session.hello

    def latest_observation(self, max_age_ms: float | None = None) -> Observation | None:
        """The newest observation of the current session, or None when there is none that is fresh
        (no engine, none yet, or older than ``max_age_ms``, default the config's). Never blocks."""
        max_age = self.config.max_obs_age_ms if max_age_ms is None else max_age_ms
        with self._lock:
            obs = self._latest
            if obs is None:
                return None
            if (time.monotonic() - obs.received) * 1e3 > max_age:
                self.counts["obs_stale_queries"] += 1
                return None
            if obs.seq != self._taken_seq:
                self._taken_seq = obs.seq
                self.counts["obs_taken"] += 1
            return obs

    def wait_observation(self, after_seq: int, timeout_s: float) -> Observation | None:
        """LOCK-STEP ONLY (deterministic tests): block until an observation with seq > ``after_seq``
        arrives in the current session, or ``timeout_s`` passes (returns None)."""
        deadline = time.monotonic() + timeout_s
        with self._obs_cond:
            while True:
                obs = self._latest
                if obs is not None and obs.seq > after_seq:
                    if obs.seq != self._taken_seq:
                        self._taken_seq = obs.seq
                        self.counts["obs_taken"] += 1
                    return obs
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._obs_cond.wait(left)

    def observation_text(self, obs: Observation) -> str:
        """The per-tick text of an observation: the engine's ``text``, or its ``values`` rendered in
        the declared field order (``x=+0.012 v=-0.340``)."""
        sess = self._session
        if obs.text is not None:
            return obs.text
        if sess is None or obs.values is None:
            return ""
        return render_values(obs.values, sess.hello.observation)

    def send_call(self, call: Call | Mapping[str, Any], *, tick: int = -1,
                  obs_seq: int = -1) -> EngineCall:
        """Queue ``call`` for the engine and return at once. A call the engine's tools do not allow,
        or one made while no engine is connected, is ``rejected`` (never sent): its ``result`` future
        raises EngineCallError."""
        if not isinstance(call, Call):
            call = Call.from_dict(call)
        now = time.monotonic()
        with self._lock:
            sess = self._session
            call_id = self._next_id
            self._next_id += 1
            handle = EngineCall(id=call_id, call=call, session=sess.id if sess else "",
                                tick=tick, obs_seq=obs_seq, sent_at=now)
            self.counts["calls"] += 1
            if sess is None:
                self._finish_locked(handle, "rejected", "no_engine", "no engine is connected")
                return handle
            spec = sess.tool_map.get(call.name)
            reason = (f"the engine offers no tool {call.name!r}" if spec is None
                      else validate_arguments(spec, call.arguments))
            if reason:
                self._finish_locked(handle, "rejected", "illegal_call", reason)
                return handle
            self._calls[handle.id] = handle
            payload = encode(call_message(call_id=handle.id, name=call.name,
                                          arguments=call.arguments, tick=tick, obs_seq=obs_seq))
            peer = sess.peer
        self._enqueue(peer, payload, handle.id)
        return handle

    def step(self, seq: int, calls: list[int] | None = None) -> None:
        """LOCK-STEP ONLY: release the engine waiting on observation ``seq`` (after the calls in
        ``calls``, already sent, which the engine applies first)."""
        with self._lock:
            sess = self._session
            if sess is None:
                return
            self.counts["steps_sent"] += 1
            peer = sess.peer
        self._enqueue(peer, encode(step_message(seq=seq, calls=list(calls or []))))

    def pin_tools(self, tools: list[Any] | None) -> None:
        """Accept only engines offering exactly these tools from now on (None: any tools). A control
        loop pins the tools it registered with the model; an engine that comes back with others gets
        a fatal ``bad_tools`` error."""
        with self._lock:
            self._pinned = None if tools is None else normalize_tools(tools)

    def in_flight(self) -> list[EngineCall]:
        with self._lock:
            return list(self._calls.values())

    def stats(self) -> dict[str, Any]:
        """Counters, per-code error counts, call latencies (ms: sent -> ack, sent -> result, ping
        round trip), session events and episodes. ``calls`` always equals the terminal states plus
        ``in_flight``."""
        with self._lock:
            counts = dict(self.counts)
            counts["in_flight"] = len(self._calls)
            sess = self._session
            return {
                "endpoint": self.endpoint, "epoch": self.epoch, "counts": counts,
                "errors_by_code": dict(self.errors_by_code),
                "ack_ms": summary(self._ack_ms, digits=3), "result_ms": summary(self._result_ms, digits=3),
                "ping_rtt_ms": summary(self._rtt_ms, digits=3),
                "engine": None if sess is None else {
                    "name": sess.hello.engine, "version": sess.hello.engine_version,
                    "session": sess.id, "tools": [t.name for t in sess.tools],
                    "lockstep": sess.hello.lockstep, "frame_hz": sess.hello.frame_hz},
                "events": list(self.events), "episodes": list(self.episodes),
            }

    # ---- internals: queueing -----------------------------------------------------------------------
    def _enqueue(self, peer: bytes | None, payload: bytes, call_id: int | None = None) -> None:
        self._out.put((peer, payload, call_id))
        self._wake()

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_push is not None:
                # ZMQError: the wake queue is full, so the I/O thread is awake already
                with contextlib.suppress(zmq.ZMQError):
                    self._wake_push.send(b"", zmq.NOBLOCK)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def _event(self, event: str, **info: Any) -> None:
        self.events.append({"t_s": round(time.monotonic() - self._t0, 3), "event": event, **info})
        log.info("engine bridge: %s %s", event, info)

    # ---- internals: call states (lock held) -----------------------------------------------------------
    def _finish_locked(self, handle: EngineCall, state: str, code: str, message: str,
                       outcome: CallOutcome | None = None) -> None:
        if handle.done:
            return
        handle.state = state
        self._calls.pop(handle.id, None)
        self.counts[state] += 1
        if state == "done":
            _settle(handle.acked, handle.ack_frame)
            _settle(handle.result, outcome)
        else:
            _settle(handle.acked, exc=EngineCallError(state, code, message))
            _settle(handle.result, exc=EngineCallError(state, code, message))

    def _end_session_locked(self, state: str, code: str, message: str) -> None:
        for handle in list(self._calls.values()):
            self._finish_locked(handle, state, code, message)
        self._session = None
        self._latest = None
        self._obs_cond.notify_all()

    # ---- internals: the I/O thread ----------------------------------------------------------------------
    def _run(self, router: zmq.Socket, wake: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        hb_s = self.config.heartbeat_ms / 1e3
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(timeout=min(20.0, self.config.heartbeat_ms / 2)))
                if wake in events:
                    while True:
                        try:
                            wake.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                try:
                    if router in events:
                        for _ in range(1000):  # bounded burst, then timers and sends get a turn
                            try:
                                frames = router.recv_multipart(zmq.NOBLOCK, copy=True)
                            except zmq.Again:
                                break
                            self._handle_frames(router, frames)
                    self._drain_out(router)
                    self._timers(router, hb_s)
                except zmq.ContextTerminated:
                    raise
                except Exception:  # a bug must be loud but must not stop the bridge
                    log.exception("engine bridge I/O iteration failed; continuing")
                    self._count("io_errors")
            self._drain_out(router)  # the final bye
        except Exception:  # pragma: no cover - a bug here must be loud, not silent
            log.exception("engine bridge I/O thread crashed")
            raise
        finally:
            router.close(0)
            wake.close(0)

    def _send(self, router: zmq.Socket, peer: bytes, payload: bytes) -> bool:
        try:
            router.send_multipart([peer, payload], zmq.NOBLOCK)
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH: peer gone; EAGAIN: peer not reading (HWM)
            self._count("send_failures")
            log.debug("engine bridge: send to %r failed: %s", peer, exc)
            return False

    def _drain_out(self, router: zmq.Socket) -> None:
        while True:
            try:
                peer, payload, call_id = self._out.get_nowait()
            except queue.Empty:
                return
            if peer is None:
                continue
            ok = self._send(router, peer, payload)
            if not ok and call_id is not None:
                with self._lock:
                    handle = self._calls.get(call_id)
                    if handle is not None:
                        self._finish_locked(handle, "lost", "send_failed",
                                            "the engine could not be reached (disconnected or not "
                                            "reading its socket)")

    def _reply_error(self, router: zmq.Socket, peer: bytes, err: ProtocolError) -> None:
        with self._lock:
            self.errors_by_code[err.code] = self.errors_by_code.get(err.code, 0) + 1
            allowed = err.fatal or self._limiter.allow(peer, time.monotonic())
            self.counts["errors_sent" if allowed else "errors_suppressed"] += 1
        if allowed:
            self._send(router, peer, encode(err.to_message()))
        log.debug("engine bridge: error to %r: %s", peer, err)

    def _handle_frames(self, router: zmq.Socket, frames: list[bytes]) -> None:
        peer = frames[0]
        try:
            if len(frames) != 2:
                raise ProtocolError("malformed", f"expected one frame per message, got "
                                                 f"{len(frames) - 1}")
            msg = decode(frames[1], self.config.max_msg_bytes)
            mtype = msg["type"]
            if mtype not in ENGINE_TYPES:
                raise ProtocolError("unknown_type", f"unknown message type {mtype!r}; an engine "
                                                    f"sends one of {list(ENGINE_TYPES)}",
                                    ref_type=mtype[:40])
            if mtype == "hello":
                self._on_hello(router, peer, msg)
                return
            with self._lock:
                sess = self._session
                if sess is None or sess.peer != peer:
                    raise ProtocolError("no_session", "no live session for this peer (tickcall "
                                        "restarted, the session timed out, or hello was never "
                                        "sent): send hello", ref_type=mtype)
                sess.last_seen = time.monotonic()
                self._dispatch_locked(router, sess, msg)
        except ProtocolError as err:
            self._reply_error(router, peer, err)
        except Exception as exc:  # a bug in a handler must not stop the bridge
            log.exception("engine bridge: handler failed")
            self._reply_error(router, peer, ProtocolError("malformed", f"could not handle the "
                                                                      f"message: {exc}"[:300]))

    def _dispatch_locked(self, router: zmq.Socket, sess: Session, msg: dict[str, Any]) -> None:
        mtype = msg["type"]
        now = time.monotonic()
        if mtype == "obs":
            obs = parse_obs(msg, sess.hello.observation)
            if obs.seq <= sess.newest_seq:
                raise ProtocolError("stale_observation", f"obs.seq={obs.seq} is not above the newest "
                                    f"seq {sess.newest_seq} of this session; dropped",
                                    ref_type="obs", ref_id=obs.seq)
            sess.newest_seq = obs.seq
            sess.obs_received += 1
            self.counts["obs_received"] += 1
            if self._latest is not None and self._latest.seq != self._taken_seq:
                self.counts["obs_replaced"] += 1
            self._latest = dataclasses.replace(obs, session=sess.id, received=now)
            self._obs_cond.notify_all()
        elif mtype == "ack":
            ack = parse_ack(msg)
            handle = self._calls.get(ack.id)
            if handle is None:
                self._late_or_unknown(ack.id, "ack")
                return
            if handle.ack_at is None:
                self._record_ack(handle, ack.frame, now)
                _settle(handle.acked, ack.frame)
        elif mtype == "result":
            res = parse_result(msg)
            handle = self._calls.get(res.id)
            if handle is None:
                self._late_or_unknown(res.id, "result")
                return
            if handle.ack_at is None:  # a result implies the ack
                self._record_ack(handle, res.frame, now)
            result_ms = (now - handle.sent_at) * 1e3
            self._result_ms.append(result_ms)
            if res.ok:
                self._finish_locked(handle, "done", "ok", "", CallOutcome(
                    id=res.id, value=res.value, ack_frame=handle.ack_frame, result_frame=res.frame,
                    ack_ms=(handle.ack_at - handle.sent_at) * 1e3, result_ms=result_ms))
            else:
                self._finish_locked(handle, "failed", res.error_code or "engine_error",
                                    res.error_message)
        elif mtype == "episode":
            ep = parse_episode(msg)
            self.counts["episodes"] += 1
            self.episodes.append({"index": ep.index, "return": ep.ret, "length": ep.length,
                                  "reason": ep.reason, "session": sess.id})
        elif mtype == "ping":
            self._send(router, sess.peer, encode(pong_message(epoch=self.epoch,
                                                              t_ms=float(msg.get("t_ms") or 0.0))))
        elif mtype == "pong":
            self.counts["pongs_received"] += 1
            t_ms = msg.get("t_ms")
            if isinstance(t_ms, int | float) and not isinstance(t_ms, bool):
                rtt = (now - self._t0) * 1e3 - float(t_ms)
                if 0 <= rtt < 60_000:
                    self._rtt_ms.append(rtt)
        elif mtype == "bye":
            self.counts["sessions_lost"] += 1
            self._event("engine_bye", session=sess.id, reason=str(msg.get("reason") or ""))
            self._end_session_locked("lost", "engine_bye", "the engine said bye")

    def _record_ack(self, handle: EngineCall, frame: Any, now: float) -> None:
        """Under the lock: the call's first acknowledgement (an ``ack``, or a ``result`` that implies
        one) at ``now`` (monotonic s), with the engine's frame; its latency goes to the ack statistics."""
        handle.ack_at = now
        handle.ack_frame = frame
        self._ack_ms.append((now - handle.sent_at) * 1e3)

    def _late_or_unknown(self, call_id: int, what: str) -> None:
        if 0 < call_id < self._next_id:
            self.counts["late_replies"] += 1  # a call that already ended (timeout, lost)
            return
        raise ProtocolError("unknown_call", f"{what} for call id {call_id}, which was never sent",
                            ref_type=what, ref_id=call_id)

    def _on_hello(self, router: zmq.Socket, peer: bytes, msg: dict[str, Any]) -> None:
        hello = parse_hello(msg)
        try:
            tools = normalize_tools(hello.tools)
        except ToolSchemaError as exc:
            raise ProtocolError("bad_tools", str(exc), fatal=True, ref_type="hello") from None
        pinned = self._pinned
        if pinned is not None and tools != pinned:
            raise ProtocolError(
                "bad_tools", f"this tickcall run registered the tools {[t.name for t in pinned]} with "
                f"its model; the engine now offers {[t.name for t in tools]} (or changed their "
                "schemas): restart tickcall to use new tools", fatal=True, ref_type="hello")
        if hello.default_call is not None:
            spec = {t.name: t for t in tools}.get(hello.default_call["name"])
            reason = ("names no declared tool" if spec is None else
                      validate_arguments(spec, hello.default_call.get("arguments") or {}))
            if reason:
                raise ProtocolError("bad_field", f"hello.default_call is not a legal call: {reason}",
                                    fatal=True, ref_type="hello")
        now = time.monotonic()
        with self._lock:
            old = self._session
            if (old is not None and old.peer == peer and old.id == hello.session
                    and old.tools == tools):
                # the same engine session saying hello again (it missed our welcome or thought we
                # were gone): idempotent, the session and its calls go on
                old.hello = hello
                old.last_seen = now
                self.counts["rehellos"] += 1
                old = None
                keep = True
            else:
                keep = False
            if old is not None:
                restarted = old.id != hello.session
                self._event("engine_restarted" if restarted else "engine_rehello",
                            old_session=old.id, session=hello.session)
                self._end_session_locked("lost", "engine_restarted" if restarted else "engine_rehello",
                                         "the engine said hello again (new session)")
                if old.peer != peer:
                    err = ProtocolError("superseded", f"engine session {hello.session!r} "
                                        f"({hello.engine}) replaced this one", fatal=True)
                    self._reply_error(router, old.peer, err)
            if not keep:
                self._session = Session(peer=peer, hello=hello, tools=tools, started=now,
                                        last_seen=now, last_ping=now)
                self._taken_seq = -1
                self.counts["sessions"] += 1
                self._event("engine_connected", engine=hello.engine, session=hello.session,
                            tools=[t.name for t in tools], lockstep=hello.lockstep)
                self._obs_cond.notify_all()
        self._send(router, peer, encode(welcome_message(
            epoch=self.epoch, session=hello.session, heartbeat_ms=self.config.heartbeat_ms,
            max_msg_bytes=self.config.max_msg_bytes, tools=[t.name for t in tools],
            lockstep=hello.lockstep)))

    def _timers(self, router: zmq.Socket, hb_s: float) -> None:
        now = time.monotonic()
        with self._lock:
            sess = self._session
            if sess is None:
                return
            silent_ms = (now - sess.last_seen) * 1e3
            limit_ms = max(self.config.heartbeat_ms, sess.hello.heartbeat_ms) * self.config.heartbeat_misses
            if silent_ms > limit_ms:
                self.counts["sessions_lost"] += 1
                self._event("engine_lost", session=sess.id, silent_ms=round(silent_ms, 1))
                self._end_session_locked("lost", "engine_lost",
                                         f"no message from the engine for {silent_ms:.0f} ms")
                return
            ack_s = self.config.ack_timeout_ms / 1e3
            res_s = self.config.result_timeout_ms / 1e3
            for handle in list(self._calls.values()):
                if handle.ack_at is None and now - handle.sent_at > ack_s:
                    self._finish_locked(handle, "timeout", "ack_timeout",
                                        f"no ack within {self.config.ack_timeout_ms:.0f} ms")
                elif res_s > 0 and now - handle.sent_at > res_s:
                    self._finish_locked(handle, "timeout", "result_timeout",
                                        f"no result within {self.config.result_timeout_ms:.0f} ms")
            ping_due = now - sess.last_ping >= hb_s
            if ping_due:
                sess.last_ping = now
            peer = sess.peer
        if ping_due:
            self._count("pings_sent")
            self._send(router, peer, encode(ping_message(epoch=self.epoch,
                                                         t_ms=(now - self._t0) * 1e3)))


def make_world(spec: Any, **kwargs: Any) -> Any:
    """The control loop's hook (``control_loop.world``): an ``EngineWorld`` for ``engine:ENDPOINT``.
    See ``envs.engine_bridge_world.make_world``."""
    from tickcall.envs.engine_bridge_world import make_world as _make_world

    return _make_world(spec, **kwargs)
