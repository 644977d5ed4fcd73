"""``tickcall bench soak``: does the policy service keep its memory under mixed hostile traffic?

A real ``tickcall serve`` in its own process (the shipped arena model by default, loopback ZMQ) takes
``--minutes`` of traffic from ``--clients`` raw DEALER sockets, each sending a random mix of: legal
decides (short turns), decides on many distinct streams, over-long turns (``too_long``), frames over
``max_message_bytes``, bytes that are not msgpack, msgpack that is not a request, unknown types and
handles, register spam with distinct tool sets, pings; a client is closed and a new one connected
every ``--reconnect-every`` messages (dead peers). Replies are read and dropped.

The server's resident memory (RSS, MB, psutil) is sampled every ``--sample-s`` seconds. *Steady
state* is the median of the samples in the second quarter of the run (after warm-up); reported: the
largest sample after that minus steady state (goal <= 50 MB), the last sample minus steady state, and
the messages sent per kind. Figures depend on the machine (``machine`` in the JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

KINDS = ("decide", "streams", "too_long", "oversized", "garbage", "not_a_request", "unknown", "register",
         "ping")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="models/shipped/tickcall-arena", help="model folder (transformers)")
    p.add_argument("--minutes", type=float, default=10.0, help="length of the soak, minutes")
    p.add_argument("--clients", type=int, default=4, help="hostile clients at once")
    p.add_argument("--sample-s", type=float, default=5.0, help="RSS sample period, s")
    p.add_argument("--reconnect-every", type=int, default=500, help="messages before a client is replaced")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write results to this file")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tools(i: int) -> list[dict[str, Any]]:
    return [{"name": f"act_{i}", "description": "d", "parameters": {"type": "object", "properties": {
        "x": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["x"]}}]


class _Client:
    """One raw DEALER (as a non-Python engine would speak) with a registered handle."""

    def __init__(self, endpoint: str, ctx: Any) -> None:
        import zmq

        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 1000)
        self.sock.connect(endpoint)
        self.ids = 0
        self.handle: str | None = None
        self.sent = 0

    def send(self, msg: dict[str, Any] | bytes) -> None:
        import msgpack
        import zmq

        data = msg if isinstance(msg, bytes) else msgpack.packb(msg)
        with contextlib.suppress(zmq.Again):  # the server is behind: drop it (a flood, not our queue)
            self.sock.send(data, zmq.NOBLOCK)
        self.sent += 1

    def request(self, mtype: str, **fields: Any) -> None:
        self.ids += 1
        self.send({"v": 1, "type": mtype, "id": self.ids, **fields})

    def drain(self) -> None:
        import msgpack
        import zmq

        while self.sock.poll(0):
            data = self.sock.recv(zmq.NOBLOCK)
            if self.handle is None:
                try:
                    reply = msgpack.unpackb(data, raw=False)
                except Exception:
                    continue
                if isinstance(reply, dict) and reply.get("type") == "registered":
                    self.handle = reply.get("handle")

    def close(self) -> None:
        self.sock.close(0)


def _hostile(c: _Client, kind: str, rng: random.Random, k: int) -> None:
    turn = {"query": f"tgt=N d={rng.random() * 9:.1f} aim=E cd=0 dcd=1 tl=3.0"}
    handle = c.handle or "h1"
    if kind == "decide":
        c.request("decide", handle=handle, tick=k, turn=turn)
    elif kind == "streams":
        c.request("decide", handle=handle, tick=k, turn=turn, stream=f"s{rng.randrange(10_000)}")
    elif kind == "too_long":
        c.request("decide", handle=handle, tick=k, turn={"query": "tgt=N d=2.0 " * 2000})
    elif kind == "oversized":
        c.send(b"\x81" + b"x" * (2 << 20))
    elif kind == "garbage":
        c.send(os.urandom(rng.randrange(1, 512)))
    elif kind == "not_a_request":
        c.send([1, 2, 3] if rng.random() < 0.5 else {"v": 1})
    elif kind == "unknown":
        c.request(rng.choice(["nope", "decide"]), handle=f"h{rng.randrange(10**6)}", tick=k, turn=turn)
    elif kind == "register":
        c.request("register", tools=_tools(rng.randrange(10_000)))
    else:
        c.request("ping", sent_ms=0.0)


def run(args: argparse.Namespace) -> int:
    import psutil
    import zmq

    from tickcall.bench.common import machine, print_table, write_json

    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    server = subprocess.Popen([sys.executable, "-m", "tickcall.cli", "serve", "--bind", endpoint,
                               "--backend", "transformers", "--model", args.model],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    proc = psutil.Process(server.pid)
    rng = random.Random(args.seed)
    ctx = zmq.Context()
    samples: list[tuple[float, float]] = []
    counts = dict.fromkeys(KINDS, 0)
    clients: list[_Client] = []
    try:
        probe = _Client(endpoint, ctx)
        t_ready = time.monotonic() + 120
        while probe.handle is None and time.monotonic() < t_ready:  # the model loads first
            probe.request("register", tools=_tools(0))
            time.sleep(0.5)
            probe.drain()
            if server.poll() is not None:
                raise SystemExit(f"tickcall bench soak: the server exited: {server.stderr.read()[-500:]}")
        clients = [probe] + [_Client(endpoint, ctx) for _ in range(args.clients - 1)]
        for c in clients[1:]:
            c.request("register", tools=_tools(0))
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        next_sample = t0
        k = 0
        print(f"soak: {args.minutes:g} min against {endpoint} (server pid {server.pid}) ...", file=sys.stderr)
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                samples.append((now - t0, proc.memory_info().rss / 2**20))
                next_sample += args.sample_s
            for i, c in enumerate(clients):
                kind = rng.choices(KINDS, weights=(40, 10, 5, 1, 10, 8, 8, 5, 5))[0]
                _hostile(c, kind, rng, k)
                counts[kind] += 1
                k += 1
                c.drain()
                if c.sent >= args.reconnect_every:  # a dead peer and a new one
                    c.close()
                    clients[i] = _Client(endpoint, ctx)
                    clients[i].request("register", tools=_tools(0))
            time.sleep(0.001)
        samples.append((time.monotonic() - t0, proc.memory_info().rss / 2**20))
    finally:
        for c in clients:
            c.close()
        ctx.term()
        alive = server.poll() is None
        if alive:
            os.killpg(server.pid, signal.SIGINT)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
    n = len(samples)
    warm = [m for _, m in samples[n // 4: n // 2]] or [samples[0][1]]
    steady = statistics.median(warm)
    after = [m for _, m in samples[n // 4:]]
    growth_max = max(after) - steady
    growth_end = samples[-1][1] - steady
    print_table(["samples", "steady MB", "max after MB", "growth max MB (goal <= 50)", "growth at end MB",
                 "server alive"],
                [[n, steady, max(after), growth_max, growth_end, alive]],
                title=f"soak: {args.minutes:g} min, {args.clients} clients, {sum(counts.values())} messages")
    print("messages: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    write_json(args.json, {"bench": "soak", "machine": machine(), "minutes": args.minutes,
                           "clients": args.clients, "messages": counts, "rss_mb": samples,
                           "steady_mb": steady, "growth_max_mb": growth_max, "growth_end_mb": growth_end,
                           "server_alive": alive})
    return 0 if alive else 1
