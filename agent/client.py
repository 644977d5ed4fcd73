"""Python client of the policy service (protocol v1, docs/protocol.md): a ZMQ DEALER with timeouts,
reconnect, and automatic re-registration when the server's epoch changes.

Accounting invariant: every ``send_decide`` produces exactly one reply from ``poll`` (or ``decide``),
typed as the wire structs (``agent.messages.DecideReply`` = ``CallReply | ErrorReply``; an error's text
is ``ErrorReply.message``, a call's illegality ``CallReply.reason``): the server's ``call`` or
``error``, or an ``ErrorReply`` made here: ``timeout`` (no reply within ``timeout_ms``; also for
requests lost when the socket is reset), ``superseded`` (a newer decide for the same registration and
stream replaced one that was waiting for a re-registration) or ``bad_reply`` (the server answered a
decide with another reply type). Every ``ErrorReply`` handed out carries the decide's ``tick``.

Recovery: a timeout resets the socket (a fresh DEALER drops anything queued for a dead server) and
sends a ``hello``; when the reply shows a new epoch (the server restarted) every kept registration is
registered again, and a decide answered ``unknown_handle`` is re-sent once after re-registering, with
its deadline reduced by the time already spent. Decides sent while a registration is being renewed
wait for it (latest-wins) and are sent as soon as it is renewed.

Times are milliseconds; ``sent_ms`` on the wire is this client's ``time.monotonic()`` in ms (echoed by
the server, never compared with the server's clock).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Sequence
from typing import Any

import msgspec
import zmq
from tickcall.agent import protocol as P
from tickcall.agent.client_state import CLIENT_CODES, ClientRegistration, Out, PolicyTimeout, now_ms
from tickcall.agent.config import CurveConfig
from tickcall.agent.messages import (
    Bye,
    CallReply,
    Decide,
    DecideReply,
    ErrorReply,
    Hello,
    Ping,
    Register,
    Registered,
    Reply,
    Request,
    Welcome,
)
from tickcall.agent.protocol import PolicyError

__all__ = ["CLIENT_CODES", "ClientRegistration", "PolicyClient", "PolicyError", "PolicyTimeout"]

# pyzmq's constants are enums (``events & zmq.POLLIN`` builds an enum member, ~0.6 us): ints on the hot path
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)


class PolicyClient:
    """DEALER client of one policy service endpoint. Not thread-safe: use one per thread."""

    def __init__(
        self,
        endpoint: str,
        timeout_ms: float = 1000,
        curve: CurveConfig | dict | None = None,
        *,
        name: str | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout_ms = float(timeout_ms)
        self.curve = CurveConfig(**curve) if isinstance(curve, dict) else curve
        self.name = name
        self._ctx = context or zmq.Context.instance()
        self._ids = itertools.count(1)
        self._sock: zmq.Socket | None = None
        self.epoch: str | None = None
        self.welcome: Welcome | None = None
        self.registrations: list[ClientRegistration] = []
        self._default: ClientRegistration | None = None
        self._out: dict[int, Out] = {}
        self._waiting: dict[tuple[int, str], Out] = {}  # (id(reg), stream) -> decide waiting for its reg
        self._ready: list[DecideReply] = []
        # at most the earliest timeout_at (ms) in _out and _waiting: _expire_all scans only from then on
        self._expiry_floor = math.inf
        self.stats: dict[str, int] = {
            "sent": 0,
            "replies": 0,
            "timeouts": 0,
            "resets": 0,
            "renewals": 0,
            "late_replies": 0,
            "bad_replies": 0,
            "resent": 0,
            "register_errors": 0,
        }
        self._connect()

    # ------------------------------------------------------------------ socket
    @property
    def socket(self) -> zmq.Socket:
        """The current DEALER socket (for a zmq.Poller; it changes after a reset)."""
        assert self._sock is not None
        return self._sock

    def _connect(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 10000)
        sock.setsockopt(zmq.SNDHWM, 10000)
        sock.setsockopt(zmq.RECONNECT_IVL, 50)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if self.curve is not None:
            from tickcall.agent.security import setup_client_curve

            setup_client_curve(sock, self.curve)
        sock.connect(self.endpoint)
        self._sock = sock
        self._poller = zmq.Poller()  # kept: Socket.poll builds a new Poller every call
        self._poller.register(sock, zmq.POLLIN)

    def _reset(self, reason: str) -> None:
        """Close the socket (dropping anything queued), answer what was in flight, reconnect, say hello."""
        self.stats["resets"] += 1
        if self._sock is not None:
            self._sock.close(0)
        now = now_ms()
        for out in list(self._out.values()):
            self._expire(out, now, f"connection reset ({reason}) before a reply")
        self._out.clear()
        for reg in self.registrations:
            reg._pending_id = None
        self._connect()
        self._send_hello(internal=True)
        waiting_regs = {k[0] for k in self._waiting}
        for reg in self.registrations:  # idempotent on the server: same epoch gives the same handle
            if id(reg) in waiting_regs or reg.epoch != self.epoch:
                self._send_register(reg)

    def _send(self, msg: Request, out: Out) -> None:
        """Send ``msg`` (whose ``id`` is ``out.msg_id``) and track ``out`` until its reply or timeout."""
        try:  # noqa: SIM105 - contextlib.suppress costs ~1 us a decide
            self.socket.send(P.encode(msg), _NOBLOCK)
        except zmq.Again:  # high-water mark: the server is not reading; it will time out
            pass
        self.stats["sent"] += 1
        self._out[out.msg_id] = out
        if out.timeout_at < self._expiry_floor:
            self._expiry_floor = out.timeout_at

    def _new_out(self, kind: str, timeout_ms: float | None = None, **kw: Any) -> Out:
        now = now_ms()
        return Out(
            kind=kind,
            msg_id=next(self._ids),
            t_ms=now,
            timeout_at=now + (self.timeout_ms if timeout_ms is None else float(timeout_ms)),
            **kw,
        )

    # ------------------------------------------------------------------ blocking requests
    def _wait(self, out: Out, what: str) -> Any:
        while not out.done:
            left = out.timeout_at - now_ms()
            if left <= 0:
                break
            self._pump(left)
        if not out.done:
            if self._out.pop(out.msg_id, None) is not None:  # else _expire_all already reset the socket
                self._reset(f"{what} timed out")
            raise PolicyTimeout(
                f"no reply to {what} from {self.endpoint} within {out.timeout_at - out.t_ms:.0f} ms"
            )
        if isinstance(out.result, PolicyError):
            raise out.result
        return out.result

    def _send_hello(self, internal: bool, timeout_ms: float | None = None) -> Out:
        out = self._new_out("hello", timeout_ms, internal=internal)
        self._send(Hello(id=out.msg_id, client=self.name or None, versions=list(P.SUPPORTED_VERSIONS)), out)
        return out

    def hello(self, timeout_ms: float | None = None) -> Welcome:
        """Handshake: the server's epoch, versions, engine and limits. Raises PolicyTimeout/PolicyError."""
        return self._wait(self._send_hello(internal=False, timeout_ms=timeout_ms), "hello")

    def register(
        self,
        tools: Sequence[Any],
        system: str | None = None,
        template: str | None = None,
        timeout_ms: float | None = None,
        allow_no_call: bool = False,
    ) -> ClientRegistration:
        """Register a tool set; it is kept and registered again automatically after a server restart.

        The last registration is the default one for ``send_decide``. ``allow_no_call``: "no call this
        tick" (a null function head) is a legal answer. Raises PolicyError (e.g. ``illegal_tools``) or
        PolicyTimeout.
        """
        reg = ClientRegistration(
            tools=P.wire_tools(tools), system=system, template=template, allow_no_call=allow_no_call
        )
        out = self._send_register(reg, timeout_ms)
        self._wait(out, "register")
        self.registrations.append(reg)
        self._default = reg
        return reg

    def _send_register(self, reg: ClientRegistration, timeout_ms: float | None = None) -> Out:
        out = self._new_out("register", timeout_ms, reg=reg)
        reg._pending_id = out.msg_id
        self._send(
            Register(
                id=out.msg_id,
                tools=reg.tools,
                system=reg.system,
                template=reg.template,
                allow_no_call=reg.allow_no_call,
            ),
            out,
        )
        return out

    def ping(self, timeout_ms: float | None = None) -> float:
        """Round trip of a ping in ms (client clock)."""
        out = self._new_out("ping", timeout_ms)
        self._send(Ping(id=out.msg_id, sent_ms=out.t_ms), out)
        self._wait(out, "ping")
        return now_ms() - out.t_ms

    # ------------------------------------------------------------------ decisions
    def send_decide(
        self,
        turn: Any,
        tick_id: int,
        deadline_ms: float | None = None,
        *,
        reg: ClientRegistration | None = None,
        stream: str | None = None,
        timeout_ms: float | None = None,
    ) -> int:
        """Send a decide without waiting; returns its message id (the ``id`` of its reply).

        ``turn``: a ``models.format.Turn``, a ``WireTurn``, a mapping with the wire keys (query, history,
        environment, observation) or a query string; a mapping that is no valid turn raises ValueError.
        ``deadline_ms``: budget from the server's receipt (ms) after which it answers ``expired`` instead
        of decoding. ``stream``: latest-wins key (default: the handle).
        """
        reg = reg or self._default
        if reg is None:
            raise RuntimeError("register tools before send_decide")
        out = self._new_out(
            "decide",
            timeout_ms,
            reg=reg,
            tick=int(tick_id),
            turn=P.turn_to_wire(turn),
            deadline_ms=None if deadline_ms is None else float(deadline_ms),
            stream=stream,
        )
        if reg.handle is None or reg.epoch != self.epoch or reg._pending_id is not None:
            self._hold(out)
            if reg._pending_id is None:
                self._send_register(reg)
        else:
            self._send_decide(out)
        return out.msg_id

    def _hold(self, out: Out) -> None:
        key = (id(out.reg), out.stream or "")
        old = self._waiting.pop(key, None)
        if old is not None:
            self._ready.append(
                self._client_reply(
                    old,
                    "superseded",
                    f"tick {old.tick} replaced by tick {out.tick} while the registration was renewed",
                )
            )
        self._waiting[key] = out
        if out.timeout_at < self._expiry_floor:
            self._expiry_floor = out.timeout_at

    def _send_decide(self, out: Out) -> None:
        assert out.reg is not None and out.reg.handle is not None and out.tick is not None
        assert out.turn is not None
        deadline = None
        if out.deadline_ms is not None:
            left = out.deadline_ms - (now_ms() - out.t_ms)  # time already spent waiting counts
            deadline = max(left, 0.001)
        self._send(
            Decide(
                id=out.msg_id,
                handle=out.reg.handle,
                tick=out.tick,
                turn=out.turn,
                sent_ms=now_ms(),
                deadline_ms=deadline,
                stream=out.stream,
            ),
            out,
        )

    def poll(self, timeout_ms: float = 0) -> list[DecideReply]:
        """Replies to decides that are ready, waiting up to ``timeout_ms`` for the first one."""
        end = now_ms() + max(0.0, float(timeout_ms))
        while True:  # one poll per pass: it returns at once when a reply is already there
            left = end - now_ms()
            self._pump(min(left, self._next_timeout_in()) if left > 0 else 0)
            if self._ready or left <= 0:
                break
        out, self._ready = self._ready, []
        return out

    def decide(
        self,
        turn: Any,
        tick_id: int,
        deadline_ms: float | None = None,
        timeout_ms: float | None = None,
        *,
        reg: ClientRegistration | None = None,
        stream: str | None = None,
    ) -> DecideReply:
        """Blocking decide: its reply (an ``ErrorReply`` with ``code == 'timeout'`` when none came).

        Replies to other decides that arrive meanwhile are kept for the next ``poll``.
        """
        msg_id = self.send_decide(turn, tick_id, deadline_ms, reg=reg, stream=stream, timeout_ms=timeout_ms)
        while True:
            self._pump(self._next_timeout_in())
            for i, r in enumerate(self._ready):
                if r.id == msg_id:
                    return self._ready.pop(i)

    @property
    def in_flight(self) -> int:
        """Decides sent or waiting, not yet answered."""
        return sum(1 for o in self._out.values() if o.kind == "decide") + len(self._waiting)

    def close(self) -> None:
        """Say bye (best effort, not waited for) and close the socket."""
        if self._sock is None:
            return
        with contextlib.suppress(zmq.ZMQError):
            self._sock.send(P.encode(Bye(id=next(self._ids))), zmq.NOBLOCK)
        self._sock.close(0)
        self._sock = None

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ receiving
    def _next_timeout_in(self) -> float:
        """ms until the earliest timeout (a little early when it was answered meanwhile: then the
        next ``_expire_all`` finds the new earliest)."""
        if not self._out and not self._waiting:
            return 50.0
        return max(0.0, self._expiry_floor - now_ms()) + 0.05

    def _pump(self, wait_ms: float) -> None:
        """Receive everything available (waiting up to ``wait_ms`` for the first), then expire timeouts."""
        sock = self.socket
        if self._poller.poll(math.ceil(wait_ms) if wait_ms > 0 else 0):
            while True:  # EVENTS instead of catching zmq.Again: an exception costs ~10 us
                self._on_reply(sock.recv())
                if not sock.getsockopt(_EVENTS) & _POLLIN:
                    break
        if self._out or self._waiting:
            self._expire_all()

    def _expire_all(self) -> None:
        now = now_ms()
        if now < self._expiry_floor:  # nothing in flight has reached its timeout yet
            return
        expired = [o for o in self._out.values() if now >= o.timeout_at]
        waiting = [k for k, o in self._waiting.items() if now >= o.timeout_at]
        for key in waiting:
            self._expire(self._waiting.pop(key), now, "no reply (registration not renewed) within timeout")
        for o in expired:
            self._out.pop(o.msg_id, None)
        self._expiry_floor = min(
            (o.timeout_at for o in itertools.chain(self._out.values(), self._waiting.values())),
            default=math.inf,
        )
        if not expired:
            return
        for o in expired:
            self._expire(o, now, "no reply within timeout")
        self._reset("timeout")

    def _expire(self, out: Out, now: float, why: str) -> None:
        if out.kind == "decide":
            self.stats["timeouts"] += 1
            self._ready.append(self._client_reply(out, "timeout", f"{why} ({now - out.t_ms:.0f} ms)"))
        elif out.kind == "register" and out.reg is not None:
            out.reg._pending_id = None

    def _client_reply(self, out: Out, code: str, message: str) -> ErrorReply:
        return ErrorReply(
            id=out.msg_id,
            epoch=self.epoch or "",
            code=code,
            message=message,
            tick=out.tick,
            handle=out.reg.handle if out.reg else None,
        )

    def _on_reply(self, payload: bytes) -> None:
        try:
            reply = P.decode_reply(payload)
        except P.ProtocolError:
            self.stats["bad_replies"] += 1
            return
        if reply.epoch != self.epoch:
            self._new_epoch(reply.epoch)
        out = self._out.pop(reply.id, None) if isinstance(reply.id, int) else None
        if out is None:
            self.stats["late_replies"] += 1
            return
        if out.kind == "decide":
            self._on_decide_reply(out, reply)
        elif out.kind == "register":
            self._on_register_reply(out, reply)
        elif isinstance(reply, ErrorReply):  # hello, ping, bye
            out.result = PolicyError(reply.code, reply.message)
        else:
            out.result = reply
            if isinstance(reply, Welcome):
                self.welcome = reply
        out.done = True

    def _new_epoch(self, epoch: str) -> None:
        """The server restarted (or we met it for the first time): renew every kept registration."""
        first = self.epoch is None
        self.epoch = epoch
        if first and all(r.epoch == epoch or r.epoch is None for r in self.registrations):
            return
        for reg in self.registrations:
            if reg.epoch != epoch and reg._pending_id is None:
                self._send_register(reg)

    def _on_register_reply(self, out: Out, reply: Reply) -> None:
        reg = out.reg
        assert reg is not None
        if reg._pending_id == out.msg_id:
            reg._pending_id = None
        if isinstance(reply, Registered):
            renewed = reg.handle is not None
            reg.handle = reply.handle
            reg.epoch = reply.epoch
            reg.heads = list(reply.heads)
            reg.prefix_tokens = reply.prefix_tokens
            reg.tool_names = list(reply.tools)
            if renewed:
                reg.renewals += 1
                self.stats["renewals"] += 1
            out.result = reg
            for key in [k for k in self._waiting if k[0] == id(reg)]:
                self._send_decide(self._waiting.pop(key))
        else:
            err = (
                PolicyError(reply.code, reply.message)
                if isinstance(reply, ErrorReply)
                else PolicyError("bad_reply", f"unexpected reply type {reply.type!r} to register")
            )
            out.result = err
            self.stats["register_errors"] += 1
            for key in [k for k in self._waiting if k[0] == id(reg)]:
                w = self._waiting.pop(key)
                self._ready.append(self._client_reply(w, err.code, f"re-registration failed: {err.message}"))

    def _on_decide_reply(self, out: Out, reply: Reply) -> None:
        if (
            isinstance(reply, ErrorReply)
            and reply.code == "unknown_handle"
            and not out.retried
            and out.reg is not None
        ):
            # the server restarted or evicted the tool set: renew it and send this decide once more
            out.retried = True
            self.stats["resent"] += 1
            reg = out.reg
            if reg.handle == reply.handle:
                reg.epoch = None  # force renewal even within the same epoch (eviction)
            self._hold(out)
            if reg._pending_id is None:
                self._send_register(reg)
            return
        self.stats["replies"] += 1
        if isinstance(reply, CallReply):
            self._ready.append(reply)
        elif isinstance(reply, ErrorReply):
            self._ready.append(
                reply if reply.tick is not None else msgspec.structs.replace(reply, tick=out.tick)
            )
        else:
            self._ready.append(self._client_reply(out, "bad_reply", f"unexpected reply type {reply.type!r}"))
