"""The engine bridge, mode 1: a game engine connects over ZeroMQ and becomes the world of a loop.

``EngineBridge`` binds a ROUTER socket (127.0.0.1 by default) and runs one I/O thread that owns it.
An engine (any language) connects a DEALER, says ``hello`` (name, tools as JSON schema, how it
describes observations), streams ``obs`` and answers each ``call`` with ``ack`` and ``result``.

This module is the socket loop only: frames in -> ``engine_bridge_protocol.decode`` (typed messages,
the one validation path) -> ``engine_bridge_state.BridgeState`` (the session state machine, where the
invariants live); messages the state emits -> one outgoing queue -> the socket, in order. The wire
protocol is in docs/protocol.md and envs/engine_bridge_messages.py.

* The caller's side never blocks on the engine: the public methods read or change the state under
  its lock and queue messages; only the I/O thread touches the socket.
* A bad engine message gets an ``error`` reply with a code (rate-limited per peer) and is counted;
  neither a bad message nor a bug in a handler stops the I/O thread.
* The bind follows agent/security.py's one policy: local unless told otherwise, CURVE for any
  exposed bind (key files only).

Times are milliseconds (``*_ms``) unless stated; ``time.monotonic`` is the bridge's clock.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import secrets
import threading
from collections.abc import Mapping
from typing import Any

import zmq
from tickcall.agent.security import setup_server_curve
from tickcall.envs.engine_bridge_config import DEFAULT_ENDPOINT, BridgeConfig, BridgeConfigError
from tickcall.envs.engine_bridge_messages import Envelope, HelloMsg, ProtocolError
from tickcall.envs.engine_bridge_protocol import decode, encode
from tickcall.envs.engine_bridge_records import (
    TERMINAL_STATES,
    CallOutcome,
    EngineCall,
    EngineCallError,
    Observation,
    Session,
)
from tickcall.envs.engine_bridge_state import BridgeState
from tickcall.models.calls import Call

__all__ = ["DEFAULT_ENDPOINT", "TERMINAL_STATES", "BridgeConfig", "BridgeConfigError", "CallOutcome",
           "EngineBridge", "EngineCall", "EngineCallError", "Observation", "Session"]

log = logging.getLogger("tickcall.engine_bridge")

_BURST = 1000  # frames read per wake-up before timers and sends get a turn


CLOSE_LINGER_MS = 200  # how long the bridge's socket may hold unsent messages at close (ms)


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
        cfg.check_bind()
        self.config = cfg
        self.epoch = secrets.token_hex(8)
        self.state = BridgeState(cfg, self.epoch, self._emit)
        self.endpoint = cfg.endpoint  # the bound endpoint (port resolved when binding to port 0)
        self._out: queue.SimpleQueue[tuple[bytes, bytes, int | None]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ctx: zmq.Context | None = None
        self._auth: Any = None
        self._wake_push: zmq.Socket | None = None
        self._wake_lock = threading.Lock()

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> EngineBridge:
        if self._thread is not None:
            return self
        self._ctx = zmq.Context()
        router = self._ctx.socket(zmq.ROUTER)
        try:
            for opt, value in ((zmq.LINGER, 0), (zmq.ROUTER_MANDATORY, 1), (zmq.SNDHWM, 1000),
                               (zmq.RCVHWM, 1000), (zmq.MAXMSGSIZE, 4 * self.config.max_msg_bytes)):
                router.setsockopt(opt, value)
            curve = self.config.curve
            if curve is not None:
                self._auth = setup_server_curve(self._ctx, router, curve)
            router.bind(self.config.endpoint)
        except Exception:
            router.close(0)
            self._term()
            raise
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
        self.state.say_bye(reason)
        self._stop.set()
        self._wake()
        self._thread.join(timeout=5)
        self._thread = None
        self.state.end_session("lost", "bridge_closed", reason)
        with self._wake_lock:
            if self._wake_push is not None:
                self._wake_push.close(0)
                self._wake_push = None
        self._term()

    def __enter__(self) -> EngineBridge:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- what the loop uses: the state machine's API ------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.state.session is not None

    @property
    def session(self) -> Session | None:
        return self.state.session

    @property
    def counts(self) -> dict[str, int]:
        return self.state.counts

    @property
    def episodes(self) -> list[dict[str, Any]]:
        return self.state.episodes

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.state.events

    def wait_for_engine(self, timeout_s: float) -> HelloMsg:
        """Block until an engine has said hello; raises TimeoutError after ``timeout_s`` seconds."""
        return self.state.wait_for_engine(timeout_s, self.endpoint)

    def latest_observation(self, max_age_ms: float | None = None) -> Observation | None:
        """The newest fresh observation of the current session, or None. Never blocks."""
        return self.state.latest_observation(max_age_ms)

    def wait_observation(self, after_seq: int, timeout_s: float) -> Observation | None:
        """LOCK-STEP ONLY: block until an observation with seq > ``after_seq`` (None on timeout)."""
        return self.state.wait_observation(after_seq, timeout_s)

    def observation_text(self, obs: Observation) -> str:
        """The engine's ``text``, or its ``values`` rendered in the declared field order."""
        return self.state.observation_text(obs)

    def send_call(self, call: Call | Mapping[str, Any], *, tick: int = -1, obs_seq: int = -1,
                  obs_t_ms: float | None = None, agent: str | None = None) -> EngineCall:
        """Queue ``call`` for the engine and return at once (illegal or engine-less: ``rejected``).
        ``tick``, ``obs_seq`` and ``obs_t_ms`` (the observation's own ``t_ms``) tie it to what it answers;
        ``agent`` names the agent of a crowd engine (protocol 1.1; None for a single-agent engine)."""
        return self.state.send_call(call, tick=tick, obs_seq=obs_seq, obs_t_ms=obs_t_ms, agent=agent)

    def latest_observations(self, max_age_ms: float | None = None) -> dict[str, Observation]:
        """CROWD ENGINES: the newest fresh observation of each agent present (never blocks)."""
        return self.state.latest_observations(max_age_ms)

    def roster(self) -> list[str]:
        """CROWD ENGINES: the agents present now, in join order."""
        return self.state.roster()

    def take_played(self) -> list[Observation]:
        """Protocol 1.2 (recordings): the observations carrying ``played`` (the engine's AI or player's
        call on them) received since the last call, oldest first; needs ``keep_played`` > 0."""
        return self.state.take_played()

    def step(self, seq: int, calls: list[int] | None = None) -> None:
        """LOCK-STEP ONLY: release the engine waiting on observation ``seq`` after ``calls``."""
        self.state.step(seq, calls)

    def pin_tools(self, tools: list[Any] | None) -> None:
        """Accept only engines offering exactly these tools from now on (None: any tools)."""
        self.state.pin_tools(tools)

    def in_flight(self) -> list[EngineCall]:
        return self.state.in_flight()

    def stats(self) -> dict[str, Any]:
        """Counters, errors by code, latencies (ms), events and episodes (see BridgeState.stats)."""
        return self.state.stats(self.endpoint)

    # ---- the socket loop (I/O thread) -----------------------------------------------------------------
    def _emit(self, peer: bytes, msg: Envelope, call_id: int | None) -> None:
        """The state machine's output: queued in order; the I/O thread sends it."""
        self._out.put((peer, encode(msg), call_id))
        if threading.current_thread() is not self._thread:
            self._wake()

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_push is not None:
                # ZMQError: the wake queue is full, so the I/O thread is awake already
                with contextlib.suppress(zmq.ZMQError):
                    self._wake_push.send(b"", zmq.NOBLOCK)

    def _run(self, router: zmq.Socket, wake: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(timeout=min(20.0, self.config.heartbeat_ms / 2)))
                if wake in events:
                    with contextlib.suppress(zmq.Again):
                        while True:
                            wake.recv(zmq.NOBLOCK)
                try:
                    if router in events:
                        self._read_burst(router)
                    self._drain_out(router)
                    self.state.on_timer()
                    self._drain_out(router)
                except zmq.ContextTerminated:
                    raise
                except Exception:  # a bug must be loud but must not stop the bridge
                    log.exception("engine bridge I/O iteration failed; continuing")
                    self.state.count("io_errors")
            self._drain_out(router)  # the final bye
        except Exception:  # pragma: no cover - a bug here must be loud, not silent
            log.exception("engine bridge I/O thread crashed")
            raise
        finally:
            # the last messages (a fatal error to a refused engine, the bye) get a moment to leave: with
            # linger 0 a busy machine could drop them, and the engine would keep saying hello
            router.close(CLOSE_LINGER_MS)
            wake.close(0)

    def _read_burst(self, router: zmq.Socket) -> None:
        for _ in range(_BURST):
            try:
                frames = router.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            self._on_frames(frames)
            self._drain_out(router)  # replies go out in the order their causes arrived

    def _on_frames(self, frames: list[bytes]) -> None:
        peer = frames[0]
        try:
            if len(frames) != 2:
                raise ProtocolError("malformed", f"expected one frame per message, got {len(frames) - 1}")
            self.state.handle(peer, decode(frames[1], self.config.max_msg_bytes))
        except ProtocolError as err:
            self.state.reply_error(peer, err)
        except Exception as exc:  # a bug in a handler must not stop the bridge
            log.exception("engine bridge: handler failed")
            self.state.reply_error(peer, ProtocolError("malformed", f"could not handle the message: "
                                                                    f"{exc}"[:300]))

    def _drain_out(self, router: zmq.Socket) -> None:
        while True:
            try:
                peer, payload, call_id = self._out.get_nowait()
            except queue.Empty:
                return
            try:
                router.send_multipart([peer, payload], zmq.NOBLOCK)
            except zmq.ZMQError as exc:  # EHOSTUNREACH: peer gone; EAGAIN: peer not reading (HWM)
                log.debug("engine bridge: send to %r failed: %s", peer, exc)
                self.state.on_send_failed(call_id)

    def _term(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

