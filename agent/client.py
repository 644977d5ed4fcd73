"""Python client of the policy service (protocol v1, docs/protocol.md): a ZMQ DEALER with timeouts,
reconnect, and automatic re-registration when the server's epoch changes.

Accounting invariant: every ``send_decide`` produces exactly one :class:`Reply` from ``poll`` (or
``decide``): the server's ``call`` or ``error``, or one made here: ``timeout`` (no reply within
``timeout_ms``; also for requests lost when the socket is reset) or ``superseded`` (a newer decide for
the same registration and stream replaced one that was waiting for a re-registration).

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
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from tickcall.agent import protocol as P
from tickcall.agent.config import CurveConfig
from tickcall.models.calls import Call

CLIENT_CODES = {
    "timeout": "no reply within timeout_ms (or the request was lost when the socket was reset)",
}


class PolicyError(RuntimeError):
    """The server answered a blocking request (hello, register, ping) with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class PolicyTimeout(TimeoutError):
    """No reply to a blocking request within its timeout (the socket has been reset)."""


def _now_ms() -> float:
    return time.monotonic() * 1e3


@dataclass
class Reply:
    """The answer to one ``decide``: ``type`` is ``'call'`` or ``'error'``.

    For a call: ``call`` (None if no tool was identified), ``legal``/``reason``, raw ``heads``, ``tokens``
    (prompt, cached, generated per head), server ``timings_ms`` (queue, prefill, decode, assemble,
    engine, server) and ``batch`` (decides decoded together). For an error: ``code`` and ``message``.
    ``rtt_ms``: send to receipt on this client's clock (includes any wait for a re-registration).
    """

    type: str
    msg_id: int
    tick_id: int | None
    handle: str | None = None
    call: Call | None = None
    legal: bool = False
    reason: str = ""
    heads: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, Any] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    batch: int = 0
    code: str | None = None
    message: str = ""
    epoch: str | None = None
    rtt_ms: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        """A legal call that may be applied."""
        return self.type == "call" and self.legal and self.call is not None


@dataclass
class Welcome:
    epoch: str
    versions: list[int]
    engine: dict[str, Any]
    server: dict[str, Any]
    templates: list[str]
    limits: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)


@dataclass
class ClientRegistration:
    """A tool set kept by the client. ``handle``/``epoch`` change when it is registered again."""

    tools: list[dict[str, Any]]
    system: str | None
    template: str | None
    handle: str | None = None
    epoch: str | None = None
    heads: list[str] = field(default_factory=list)
    prefix_tokens: int = 0
    tool_names: list[str] = field(default_factory=list)
    renewals: int = 0
    _pending_id: int | None = field(default=None, repr=False)


@dataclass
class _Out:
    """A request in flight (or waiting for a re-registration)."""

    kind: str  # decide | hello | register | ping | bye
    msg_id: int
    t_ms: float  # first send (client clock)
    timeout_at: float  # ms, client clock
    reg: ClientRegistration | None = None
    tick: int | None = None
    turn: dict[str, Any] | None = None
    deadline_ms: float | None = None
    stream: str | None = None
    retried: bool = False
    internal: bool = False
    result: Any = None
    done: bool = False


def _wire_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """Tool dicts go on the wire as given (key order kept); callables are converted with models.tools."""
    if all(isinstance(t, dict) for t in tools):
        return [dict(t) for t in tools]
    from tickcall.models.tools import normalize_tools

    return [s.rendered for s in normalize_tools(tools)]


class PolicyClient:
    """DEALER client of one policy service endpoint. Not thread-safe: use one per thread."""

    def __init__(self, endpoint: str, timeout_ms: float = 1000, curve: CurveConfig | dict | None = None, *,
                 name: str | None = None, context: zmq.Context | None = None) -> None:
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
        self._out: dict[int, _Out] = {}
        self._waiting: dict[tuple[int, str], _Out] = {}  # (id(reg), stream) -> decide waiting for its reg
        self._ready: list[Reply] = []
        self.stats: dict[str, int] = {"sent": 0, "replies": 0, "timeouts": 0, "resets": 0, "renewals": 0,
                                      "late_replies": 0, "bad_replies": 0, "resent": 0,
                                      "register_errors": 0}
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

    def _reset(self, reason: str) -> None:
        """Close the socket (dropping anything queued), answer what was in flight, reconnect, say hello."""
        self.stats["resets"] += 1
        if self._sock is not None:
            self._sock.close(0)
        now = _now_ms()
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

    def _send(self, msg: dict[str, Any], out: _Out) -> None:
        msg["v"] = P.PROTOCOL_VERSION
        msg["id"] = out.msg_id
        with contextlib.suppress(zmq.Again):  # high-water mark: the server is not reading; it will time out
            self.socket.send(P.pack(msg), zmq.NOBLOCK)
        self.stats["sent"] += 1
        self._out[out.msg_id] = out

    def _new_out(self, kind: str, timeout_ms: float | None = None, **kw: Any) -> _Out:
        now = _now_ms()
        return _Out(kind=kind, msg_id=next(self._ids), t_ms=now,
                    timeout_at=now + (self.timeout_ms if timeout_ms is None else float(timeout_ms)), **kw)

    # ------------------------------------------------------------------ blocking requests
    def _wait(self, out: _Out, what: str) -> Any:
        while not out.done:
            left = out.timeout_at - _now_ms()
            if left <= 0:
                break
            self._pump(left)
        if not out.done:
            if self._out.pop(out.msg_id, None) is not None:  # else _expire_all already reset the socket
                self._reset(f"{what} timed out")
            raise PolicyTimeout(f"no reply to {what} from {self.endpoint} within "
                                f"{out.timeout_at - out.t_ms:.0f} ms")
        if isinstance(out.result, PolicyError):
            raise out.result
        return out.result

    def _send_hello(self, internal: bool, timeout_ms: float | None = None) -> _Out:
        out = self._new_out("hello", timeout_ms, internal=internal)
        msg: dict[str, Any] = {"type": "hello", "versions": list(P.SUPPORTED_VERSIONS)}
        if self.name:
            msg["client"] = self.name
        self._send(msg, out)
        return out

    def hello(self, timeout_ms: float | None = None) -> Welcome:
        """Handshake: the server's epoch, versions, engine and limits. Raises PolicyTimeout/PolicyError."""
        return self._wait(self._send_hello(internal=False, timeout_ms=timeout_ms), "hello")

    def register(self, tools: Sequence[Any], system: str | None = None, template: str | None = None,
                 timeout_ms: float | None = None) -> ClientRegistration:
        """Register a tool set; it is kept and registered again automatically after a server restart.

        The last registration is the default one for ``send_decide``. Raises PolicyError (e.g.
        ``illegal_tools``) or PolicyTimeout.
        """
        reg = ClientRegistration(tools=_wire_tools(tools), system=system, template=template)
        out = self._send_register(reg, timeout_ms)
        self._wait(out, "register")
        self.registrations.append(reg)
        self._default = reg
        return reg

    def _send_register(self, reg: ClientRegistration, timeout_ms: float | None = None) -> _Out:
        out = self._new_out("register", timeout_ms, reg=reg)
        msg: dict[str, Any] = {"type": "register", "tools": reg.tools}
        if reg.system is not None:
            msg["system"] = reg.system
        if reg.template is not None:
            msg["template"] = reg.template
        reg._pending_id = out.msg_id
        self._send(msg, out)
        return out

    def ping(self, timeout_ms: float | None = None) -> float:
        """Round trip of a ping in ms (client clock)."""
        out = self._new_out("ping", timeout_ms)
        self._send({"type": "ping", "sent_ms": out.t_ms}, out)
        self._wait(out, "ping")
        return _now_ms() - out.t_ms

    # ------------------------------------------------------------------ decisions
    def send_decide(self, turn: Any, tick_id: int, deadline_ms: float | None = None, *,
                    reg: ClientRegistration | None = None, stream: str | None = None,
                    timeout_ms: float | None = None) -> int:
        """Send a decide without waiting; returns its message id (the ``msg_id`` of its Reply).

        ``turn``: a ``models.format.Turn``, a mapping with the wire keys (query, history, environment,
        observation) or a query string. ``deadline_ms``: budget from the server's receipt (ms) after which
        it answers ``expired`` instead of decoding. ``stream``: latest-wins key (default: the handle).
        """
        reg = reg or self._default
        if reg is None:
            raise RuntimeError("register tools before send_decide")
        out = self._new_out("decide", timeout_ms, reg=reg, tick=int(tick_id), turn=P.turn_to_wire(turn),
                            deadline_ms=None if deadline_ms is None else float(deadline_ms), stream=stream)
        if reg.handle is None or reg.epoch != self.epoch or reg._pending_id is not None:
            self._hold(out)
            if reg._pending_id is None:
                self._send_register(reg)
        else:
            self._send_decide(out)
        return out.msg_id

    def _hold(self, out: _Out) -> None:
        key = (id(out.reg), out.stream or "")
        old = self._waiting.pop(key, None)
        if old is not None:
            self._ready.append(self._client_reply(old, "superseded", f"tick {old.tick} replaced by tick "
                                                  f"{out.tick} while the registration was renewed"))
        self._waiting[key] = out

    def _send_decide(self, out: _Out) -> None:
        assert out.reg is not None
        msg: dict[str, Any] = {"type": "decide", "handle": out.reg.handle, "tick": out.tick, "turn": out.turn,
                               "sent_ms": _now_ms()}
        if out.deadline_ms is not None:
            left = out.deadline_ms - (_now_ms() - out.t_ms)  # time already spent waiting counts
            msg["deadline_ms"] = max(left, 0.001)
        if out.stream is not None:
            msg["stream"] = out.stream
        self._send(msg, out)

    def poll(self, timeout_ms: float = 0) -> list[Reply]:
        """Replies to decides that are ready, waiting up to ``timeout_ms`` for the first one."""
        end = _now_ms() + max(0.0, float(timeout_ms))
        while True:
            self._pump(0)
            if self._ready:
                break
            left = end - _now_ms()
            if left <= 0:
                break
            self._pump(min(left, self._next_timeout_in()))
            if self._ready:
                break
        out, self._ready = self._ready, []
        return out

    def decide(self, turn: Any, tick_id: int, deadline_ms: float | None = None, timeout_ms: float | None = None,
               *, reg: ClientRegistration | None = None, stream: str | None = None) -> Reply:
        """Blocking decide: the Reply (``type == 'error'`` with ``code == 'timeout'`` when none came).

        Replies to other decides that arrive meanwhile are kept for the next ``poll``.
        """
        msg_id = self.send_decide(turn, tick_id, deadline_ms, reg=reg, stream=stream, timeout_ms=timeout_ms)
        while True:
            self._pump(self._next_timeout_in())
            for i, r in enumerate(self._ready):
                if r.msg_id == msg_id:
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
            self._sock.send(P.pack({"v": P.PROTOCOL_VERSION, "type": "bye", "id": next(self._ids)}), zmq.NOBLOCK)
        self._sock.close(0)
        self._sock = None

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ receiving
    def _next_timeout_in(self) -> float:
        if not self._out and not self._waiting:
            return 50.0
        now = _now_ms()
        times = [o.timeout_at for o in self._out.values()] + [o.timeout_at for o in self._waiting.values()]
        return max(0.0, min(times) - now) + 0.05

    def _pump(self, wait_ms: float) -> None:
        """Receive everything available (waiting up to ``wait_ms`` for the first), then expire timeouts."""
        sock = self.socket
        if sock.poll(math.ceil(wait_ms) if wait_ms > 0 else 0, zmq.POLLIN):
            while True:  # EVENTS instead of catching zmq.Again: an exception costs ~10 us
                self._on_reply(sock.recv())
                if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    break
        if self._out or self._waiting:
            self._expire_all()

    def _expire_all(self) -> None:
        now = _now_ms()
        expired = [o for o in self._out.values() if now >= o.timeout_at]
        waiting = [k for k, o in self._waiting.items() if now >= o.timeout_at]
        for key in waiting:
            self._expire(self._waiting.pop(key), now, "no reply (registration not renewed) within timeout")
        if not expired:
            return
        for o in expired:
            self._out.pop(o.msg_id, None)
            self._expire(o, now, "no reply within timeout")
        self._reset("timeout")

    def _expire(self, out: _Out, now: float, why: str) -> None:
        if out.kind == "decide":
            self.stats["timeouts"] += 1
            self._ready.append(self._client_reply(out, "timeout", f"{why} ({now - out.t_ms:.0f} ms)"))
        elif out.kind == "register" and out.reg is not None:
            out.reg._pending_id = None

    def _client_reply(self, out: _Out, code: str, message: str) -> Reply:
        return Reply(type="error", msg_id=out.msg_id, tick_id=out.tick, handle=out.reg.handle if out.reg else None,
                     code=code, message=message, epoch=self.epoch, rtt_ms=_now_ms() - out.t_ms)

    def _on_reply(self, payload: bytes) -> None:
        try:
            msg = P.unpack(payload, 1 << 30)
        except P.ProtocolError:
            self.stats["bad_replies"] += 1
            return
        epoch = msg.get("epoch")
        if isinstance(epoch, str) and epoch != self.epoch:
            self._new_epoch(epoch)
        out = self._out.pop(msg.get("id"), None) if isinstance(msg.get("id"), int) else None
        if out is None:
            self.stats["late_replies"] += 1
            return
        mtype = msg.get("type")
        if out.kind == "decide":
            self._on_decide_reply(out, msg)
        elif out.kind == "register":
            self._on_register_reply(out, msg)
        elif out.kind == "hello":
            if mtype == "welcome":
                out.result = Welcome(epoch=msg["epoch"], versions=msg.get("versions", []),
                                     engine=msg.get("engine", {}), server=msg.get("server", {}),
                                     templates=msg.get("templates", []), limits=msg.get("limits", {}), raw=msg)
                self.welcome = out.result
            else:
                out.result = PolicyError(msg.get("code", "?"), msg.get("message", ""))
        else:  # ping / bye
            out.result = msg if mtype != "error" else PolicyError(msg.get("code", "?"), msg.get("message", ""))
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

    def _on_register_reply(self, out: _Out, msg: dict[str, Any]) -> None:
        reg = out.reg
        assert reg is not None
        if reg._pending_id == out.msg_id:
            reg._pending_id = None
        if msg.get("type") == "registered":
            renewed = reg.handle is not None
            reg.handle = msg["handle"]
            reg.epoch = msg.get("epoch")
            reg.heads = list(msg.get("heads", []))
            reg.prefix_tokens = int(msg.get("prefix_tokens", 0))
            reg.tool_names = list(msg.get("tools", []))
            if renewed:
                reg.renewals += 1
                self.stats["renewals"] += 1
            out.result = reg
            for key in [k for k in self._waiting if k[0] == id(reg)]:
                self._send_decide(self._waiting.pop(key))
        else:
            err = PolicyError(msg.get("code", "?"), msg.get("message", ""))
            out.result = err
            self.stats["register_errors"] += 1
            for key in [k for k in self._waiting if k[0] == id(reg)]:
                w = self._waiting.pop(key)
                self._ready.append(self._client_reply(w, err.code, f"re-registration failed: {err.message}"))

    def _on_decide_reply(self, out: _Out, msg: dict[str, Any]) -> None:
        mtype = msg.get("type")
        if (mtype == "error" and msg.get("code") == "unknown_handle" and not out.retried
                and out.reg is not None):
            # the server restarted or evicted the tool set: renew it and send this decide once more
            out.retried = True
            self.stats["resent"] += 1
            reg = out.reg
            if reg.handle == msg.get("handle"):
                reg.epoch = None  # force renewal even within the same epoch (eviction)
            self._hold(out)
            if reg._pending_id is None:
                self._send_register(reg)
            return
        self.stats["replies"] += 1
        rtt = _now_ms() - out.t_ms
        if mtype == "call":
            c = msg.get("call")
            self._ready.append(Reply(
                type="call", msg_id=out.msg_id, tick_id=msg.get("tick", out.tick), handle=msg.get("handle"),
                call=Call(name=c["name"], arguments=dict(c.get("arguments") or {})) if c else None,
                legal=bool(msg.get("legal")), reason=msg.get("reason", ""), heads=msg.get("heads", {}),
                tokens=msg.get("tokens", {}), timings_ms=msg.get("timings_ms", {}), batch=msg.get("batch", 0),
                epoch=msg.get("epoch"), rtt_ms=rtt, raw=msg))
        else:
            self._ready.append(Reply(
                type="error", msg_id=out.msg_id, tick_id=msg.get("tick", out.tick), handle=msg.get("handle"),
                code=msg.get("code", "?") if mtype == "error" else "bad_reply",
                message=msg.get("message", "") if mtype == "error" else f"unexpected reply type {mtype!r}",
                epoch=msg.get("epoch"), rtt_ms=rtt, raw=msg))
