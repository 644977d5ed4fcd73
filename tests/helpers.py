"""Engine stand-ins for tests (not part of tickcall).

``InjectedEngine`` wraps any engine: ``batch_delay_ms`` sleeps that long once per ``decide_batch``
call (a decode whose cost is per batch, as a memory-bound decode step is) and ``fail_on_query`` raises
``EngineError`` for any turn whose query contains that text. ``injected_engine`` builds one from a
service engine spec, so a policy service in another process (a Ray actor) can build it too:

    {"backend": "factory", "factory": "tests.helpers:injected_engine", "batch_delay_ms": 400}

(``load_delay_ms`` sleeps once while building: a slow model load, e.g. across a restart.) Ray workers
import ``tests.helpers`` from the driver's working directory, the repository root under pytest.

``ScriptedEngine`` answers each turn with what the test asks for next (a legal call, an illegal one,
or a failure), through the real assembly of ``models.engine.Engine``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgpack
from tickcall.agent import protocol as P
from tickcall.models.engine import EngineError, RawHeads, Registration
from tickcall.models.format import Turn
from tickcall.models.stand_ins import NoOpEngine

FACTORY = "tests.helpers:injected_engine"

# A CartPole-like tool set (one enum argument, one tool without arguments) for service tests.
CART_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "push",
            "description": "Push the cart.",
            "parameters": {
                "type": "object",
                "properties": {"dir": {"type": "string", "enum": ["left", "right"]}},
                "required": ["dir"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "wait",
            "description": "Do nothing.",
            "parameters": {"type": "object", "properties": {}},
        },
    },
]


class InjectedEngine:
    """Delegates to ``inner``; adds the fixed per-batch delay (ms) and the failure marker."""

    def __init__(self, inner: Any, batch_delay_ms: float = 0.0, fail_on_query: str | None = None) -> None:
        self.inner = inner
        self.batch_delay_ms = float(batch_delay_ms or 0.0)
        self.fail_on_query = fail_on_query

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def decide_batch(self, requests: Sequence[tuple[str, Any]]) -> list[Any]:
        if self.fail_on_query is not None:
            for _handle, turn in requests:
                if self.fail_on_query in turn.query:
                    raise EngineError(f"injected failure: query contains {self.fail_on_query!r}")
        if self.batch_delay_ms > 0:
            time.sleep(self.batch_delay_ms / 1e3)
        return self.inner.decide_batch(requests)

    def decide(self, handle: str, turn: Any) -> Any:
        return self.decide_batch([(handle, turn)])[0]

    def info(self) -> dict[str, Any]:
        info = dict(self.inner.info())
        info["injected"] = {"batch_delay_ms": self.batch_delay_ms, "fail_on_query": self.fail_on_query}
        return info


def injected_engine(
    inner: dict[str, Any] | None = None,
    batch_delay_ms: float = 0.0,
    fail_on_query: str | None = None,
    load_delay_ms: float = 0.0,
) -> InjectedEngine:
    """The ``factory`` of a service engine spec: ``inner`` is the wrapped engine's spec (default noop)."""
    from tickcall.agent.engines import build_engine

    if load_delay_ms > 0:
        time.sleep(load_delay_ms / 1e3)
    return InjectedEngine(build_engine(inner or {"backend": "noop"}), batch_delay_ms, fail_on_query)


def injected(**kw: Any) -> dict[str, Any]:
    """A service engine spec for ``injected_engine`` (keyword arguments as there)."""
    return {"backend": "factory", "factory": FACTORY, **kw}


class ScriptedEngine(NoOpEngine):
    """Answers with the kind of decision set in ``kind`` before each decide: ``"ok"`` (the first tool
    with ``ok_args``), ``"illegal"`` (the first tool with ``illegal_args``, which the assembly refuses)
    or ``"error"`` (raises EngineError ``boom``). Heads go through the real strict assembly."""

    def __init__(self, ok_args: dict[str, str], illegal_args: dict[str, str]) -> None:
        super().__init__()
        self.kind = "ok"
        self.ok_args = ok_args
        self.illegal_args = illegal_args

    def _decode(self, items: list[tuple[Registration, Turn]]) -> list[RawHeads]:
        if self.kind == "error":
            raise EngineError("boom")
        out = super()._decode(items)
        args = self.ok_args if self.kind == "ok" else self.illegal_args
        for (reg, _turn), raw in zip(items, out, strict=True):
            raw.texts = {h: "<|null|>" for h in reg.heads} | {"function": reg.tools[0].name}
            for i, value in enumerate(args.values(), start=1):
                raw.texts[f"arg{i}"] = value
        return out


def scripted_engine(
    kind: str = "ok", ok_args: dict[str, str] | None = None, illegal_args: dict[str, str] | None = None
) -> ScriptedEngine:
    """The ``factory`` of a service engine spec: a ``ScriptedEngine`` that always answers ``kind``."""
    engine = ScriptedEngine(ok_args or {}, illegal_args or {})
    engine.kind = kind
    return engine


class Raw:
    """A bare DEALER speaking msgpack, as a non-Python engine would (no PolicyClient in between)."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.ids = 0

    def send(self, msg: dict | bytes | list[bytes]) -> None:
        if isinstance(msg, dict):
            self.sock.send(P.pack(msg))
        elif isinstance(msg, bytes):
            self.sock.send(msg)
        else:
            self.sock.send_multipart(msg)

    def request(self, mtype: str, **fields: Any) -> int:
        self.ids += 1
        self.send({"v": 1, "type": mtype, "id": self.ids, **fields})
        return self.ids

    def recv(self, timeout_ms: int = 5000) -> dict | None:
        if not self.sock.poll(timeout_ms):
            return None
        return msgpack.unpackb(self.sock.recv(), raw=False)

    def register(self, tools: list[dict]) -> dict:
        self.request("register", tools=tools)
        reply = self.recv()
        assert reply is not None
        return reply

    def close(self) -> None:
        self.sock.close(0)


def free_endpoint() -> str:
    """A tcp endpoint on a loopback port that was free a moment ago."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


class SimClock:
    """Simulated monotonic seconds: ``sleep`` and policy polls move it forward, nothing else does."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        assert s >= 0
        self.t += s


class HeldReplies:
    """Replies held back on a ``SimClock`` until their simulated time: ``poll`` hands over the due ones,
    jumping the clock to the first one due within ``timeout_ms`` (or sleeping the whole timeout)."""

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self._queue: list[tuple[float, object]] = []

    def _hold(self, reply: object, delay_s: float | None) -> None:
        if delay_s is not None:  # None: never answered
            self._queue.append((self.clock() + delay_s, reply))

    def poll(self, timeout_ms: float = 0) -> list:
        now = self.clock()
        due = [r for t, r in self._queue if t <= now]
        if not due and self._queue:
            first = min(t for t, _ in self._queue)
            if first <= now + timeout_ms / 1e3:
                self.clock.t = first
                due = [r for t, r in self._queue if t <= first]
            else:
                self.clock.sleep(timeout_ms / 1e3)
        elif not due:
            self.clock.sleep(timeout_ms / 1e3)
        self._queue = [(t, r) for t, r in self._queue if r not in due]
        return due


def kart_dataset(path: Any, rows: int, episode_len: int | None = None) -> Any:
    """A dataset of an engine game with no gymnasium env here (``engine:kart``: one ``steer(side)``
    tool, the label ``left`` exactly when the text's ``x`` is positive), written to ``path``; rows are
    split into episodes of ``episode_len`` when given. Returns ``path``."""
    import numpy as np
    from tickcall.models.calls import Call
    from tickcall.models.training.collect import Record
    from tickcall.models.training.dataset import EnvInfo, make_header, write_dataset

    tool = {
        "type": "function",
        "function": {
            "name": "steer",
            "description": "Steer.",
            "parameters": {
                "type": "object",
                "properties": {"side": {"type": "string", "enum": ["left", "right"]}},
                "required": ["side"],
            },
        },
    }
    rng = np.random.default_rng(0)
    recs = []
    for i in range(rows):
        x = float(rng.uniform(-1, 1))
        side = "left" if x > 0 else "right"
        episode = i // episode_len if episode_len else None
        recs.append(Record("engine:kart", f"x={x:+.2f}", [], Call("steer", {"side": side}), episode=episode))
    write_dataset(path, make_header({"engine:kart": EnvInfo([tool])}, "engine-ai"), recs)
    return path
