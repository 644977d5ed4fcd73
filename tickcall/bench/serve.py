"""``tickcall bench serve``: what the policy service costs, and what batching across clients buys.

Part 1, overhead (side by side, interleaved in blocks so machine noise hits both alike): the round trip
of one ``decide`` through the policy service (a Ray actor running the no-op engine; client:
``agent.client.PolicyClient``, and a bare DEALER for reference) against a raw ZMQ DEALER/ROUTER echo
of the same bytes in another process. Key ``overhead_ratio`` = service P50 (PolicyClient) / echo P50;
goal <= 2.

Part 2, batching: decisions per second through the service with the tiny model (transformers backend;
random weights, so every head decodes ``--max-new-tokens`` tokens; unless ``--model`` is given) for
1, 2, 4 and 8 concurrent clients, each in closed loop (it sends its next decide as soon as its reply
arrives). Key ``batching_gain_8`` = throughput at 8 clients / at 1; goal >= 3.

Writes ``--json FILE`` with ``overhead_ratio``, ``batching_gain_8``, the per-part tables and the machine.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from tickcall.bench.common import machine, print_table, write_json
from tickcall.timing import percentile, summary

# a no-op engine whose every batch takes batch_delay_ms: the service's own batching, whatever the model
STANDIN = "tickcall.bench.standin:slow_noop"

TOOLS = [
    {"type": "function", "function": {"name": "move", "description": "Move the player in a direction.",
     "parameters": {"type": "object", "properties": {
         "direction": {"type": "string", "enum": ["north", "south", "east", "west"]},
         "speed": {"type": "number", "minimum": 0, "maximum": 1}}, "required": ["direction"]}}},
    {"type": "function", "function": {"name": "fire", "description": "Fire at a target.",
     "parameters": {"type": "object", "properties": {
         "target": {"type": "integer"}, "burst": {"type": "integer", "minimum": 1, "maximum": 5},
         "lead": {"type": "boolean"}}, "required": ["target"]}}},
    {"type": "function", "function": {"name": "wait", "description": "Do nothing this tick.",
     "parameters": {"type": "object", "properties": {}}}},
]


def _turn(i: int) -> dict[str, Any]:
    return {"query": "", "history": ["move(direction=\"north\", speed=0.5)"],
            "observation": {"x": round(12.5 + i * 0.01, 3), "y": -3.0, "hp": 87, "enemy": 3,
                            "dist": 14.2, "bearing": -37}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--round-trips", type=int, default=3000, help="round trips per path in part 1")
    parser.add_argument("--block", type=int, default=100, help="round trips per interleaved block")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per client count in part 2")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8], help="client counts")
    parser.add_argument("--model", help="model folder for part 2 (default: a tiny random Qwen2 built here)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="head budget (tokens) in part 2")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of the engine in part 2")
    parser.add_argument("--standin-ms", type=float, default=10.0,
                        help="also run part 2 against a stand-in engine costing this many ms per batch "
                             "whatever its size (no-op + batch_delay_ms): the service's own batching; 0: skip")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-batching", action="store_true")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")


# --------------------------------------------------------------------------- raw echo (other process)


def _echo_main(endpoint: str, ready: Any, decode: bool = False) -> None:
    """ROUTER echo. ``decode``: also msgpack-decode and re-encode each message (the least a service does)."""
    import msgpack
    import zmq

    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    ready.set()
    while True:
        frames = sock.recv_multipart()
        if frames[1] == b"stop":
            break
        if decode:
            frames[1] = msgpack.packb(msgpack.unpackb(frames[1], raw=False), use_bin_type=True)
        sock.send_multipart(frames)
    sock.close(0)


def _free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _overhead(args: argparse.Namespace) -> dict[str, Any]:
    import ray
    import zmq

    from tickcall.agent import protocol as P
    from tickcall.agent.actor import start_policy_service
    from tickcall.agent.client import PolicyClient

    ctx = mp.get_context("spawn")
    echo_ep, mp_ep = _free_endpoint(), _free_endpoint()
    echoes = []
    for ep, decode in ((echo_ep, False), (mp_ep, True)):
        ready = ctx.Event()
        proc = ctx.Process(target=_echo_main, args=(ep, ready, decode), daemon=True)
        proc.start()
        ready.wait(30)
        echoes.append(proc)
    handle, svc_ep = start_policy_service({"backend": "noop"})
    zctx = zmq.Context.instance()
    raw_echo = zctx.socket(zmq.DEALER)
    raw_echo.connect(echo_ep)
    mp_echo = zctx.socket(zmq.DEALER)
    mp_echo.connect(mp_ep)
    raw_svc = zctx.socket(zmq.DEALER)
    raw_svc.connect(svc_ep)
    client = PolicyClient(svc_ep, timeout_ms=30_000)
    reg = client.register(TOOLS)
    payload = P.pack({"v": 1, "type": "decide", "id": 1, "handle": reg.handle, "tick": 1, "turn": _turn(0),
                      "sent_ms": 0.0, "deadline_ms": 1000.0})

    def raw_rt(sock: Any) -> float:
        t = time.perf_counter()
        sock.send(payload)
        sock.recv()
        return (time.perf_counter() - t) * 1e3

    def client_rt(i: int) -> float:
        t = time.perf_counter()
        r = client.decide(_turn(i), tick_id=i, deadline_ms=1000.0)
        dt = (time.perf_counter() - t) * 1e3
        assert r.type == "call", r
        return dt

    times: dict[str, list[float]] = {"raw echo": [], "msgpack echo": [], "service (bare DEALER)": [],
                                     "service (PolicyClient)": []}
    for i in range(200):  # warm-up
        raw_rt(raw_echo), raw_rt(mp_echo), raw_rt(raw_svc), client_rt(i)
    done = 0
    while done < args.round_trips:
        n = min(args.block, args.round_trips - done)
        times["raw echo"] += [raw_rt(raw_echo) for _ in range(n)]
        times["msgpack echo"] += [raw_rt(mp_echo) for _ in range(n)]
        times["service (bare DEALER)"] += [raw_rt(raw_svc) for _ in range(n)]
        times["service (PolicyClient)"] += [client_rt(done + k) for k in range(n)]
        done += n
    stats = ray.get(handle.stats.remote())
    for sock, proc in ((raw_echo, echoes[0]), (mp_echo, echoes[1])):
        sock.send(b"stop")
        proc.join(10)
    for sock in (raw_echo, mp_echo, raw_svc):
        sock.close(0)
    client.close()
    ray.kill(handle, no_restart=True)
    rows = {k: summary(v) for k, v in times.items()}
    echo_p50 = rows["raw echo"]["p50"]
    return {"round_trip_ms": rows, "payload_bytes": len(payload),
            "added_us_p50": (rows["service (PolicyClient)"]["p50"] - echo_p50) * 1e3,
            "overhead_ratio": rows["service (PolicyClient)"]["p50"] / echo_p50,
            "overhead_ratio_bare": rows["service (bare DEALER)"]["p50"] / echo_p50,
            "server_replies": stats.get("reply_call", 0)}


# --------------------------------------------------------------------------- batching


def _closed_loop(endpoint: str, n: int, duration_s: float, reg_tools: list) -> dict[str, Any]:
    import zmq

    from tickcall.agent.client import PolicyClient

    clients = [PolicyClient(endpoint, timeout_ms=120_000, name=f"bench{i}") for i in range(n)]
    for c in clients:
        c.register(reg_tools)
    poller = zmq.Poller()
    for c in clients:
        poller.register(c.socket, zmq.POLLIN)
    by_sock = {c.socket: c for c in clients}
    lat: list[float] = []
    batches: list[int] = []
    errors = 0
    tick = 0

    def run_for(seconds: float, record: bool) -> int:
        nonlocal tick, errors
        count = 0
        for c in clients:
            tick += 1
            c.send_decide(_turn(tick), tick_id=tick)
        end = time.perf_counter() + seconds
        outstanding = n
        while outstanding:
            for sock, _ in poller.poll(1000):
                c = by_sock[sock]
                for r in c.poll(0):
                    outstanding -= 1
                    if r.type != "call":
                        errors += 1
                        continue
                    if record:
                        count += 1
                        lat.append(time.monotonic() * 1e3 - r.sent_ms)  # sent_ms: the client's clock
                        batches.append(r.batch)
                    if time.perf_counter() < end:
                        tick += 1
                        c.send_decide(_turn(tick), tick_id=tick)
                        outstanding += 1
        return count

    run_for(min(2.0, duration_s / 4), record=False)  # warm-up
    t0 = time.perf_counter()
    count = run_for(duration_s, record=True)
    elapsed = time.perf_counter() - t0
    for c in clients:
        c.close()
    return {"clients": n, "decisions": count, "seconds": elapsed, "per_s": count / elapsed,
            "latency_ms": summary(lat), "mean_batch": sum(batches) / max(1, len(batches)), "errors": errors}


def _batching(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from tickcall.agent.actor import start_policy_service

    if args.model:
        model, desc = Path(args.model), args.model
    else:
        from tickcall.models.tiny import make_tiny_model

        model = make_tiny_model(Path(tempfile.mkdtemp(prefix="tickcall-bench-serve-")) / "tiny")
        desc = "tiny random Qwen2 (models.tiny.make_tiny_model defaults)"
    handle, endpoint = start_policy_service({"backend": "transformers", "model": str(model),
                                             "max_new_tokens": args.max_new_tokens,
                                             "threads": args.threads})
    info = ray.get(handle.ready.remote())
    rows = []
    try:
        for n in args.clients:
            rows.append(_closed_loop(endpoint, n, args.duration, TOOLS))
            print(f"  {n} clients: {rows[-1]['per_s']:.1f} decisions/s, mean batch {rows[-1]['mean_batch']:.2f}",
                  flush=True)
    finally:
        ray.kill(handle, no_restart=True)
    engine_rows = _engine_alone(model, args)
    standin = []
    if args.standin_ms > 0:
        handle, endpoint = start_policy_service({"backend": "factory", "factory": STANDIN,
                                                 "batch_delay_ms": args.standin_ms})
        try:
            for n in args.clients:
                standin.append(_closed_loop(endpoint, n, min(args.duration, 3.0), TOOLS))
        finally:
            ray.kill(handle, no_restart=True)
    return {"model": desc, "engine": info["engine"], "max_new_tokens": args.max_new_tokens, "rows": rows,
            "batching_gain_8": _gain(rows), "engine_alone": engine_rows, "engine_alone_gain_8": _gain(engine_rows),
            "standin": standin, "standin_gain_8": _gain(standin) if standin else None}


def _gain(rows: list[dict[str, Any]]) -> float | None:
    per = {r["clients"]: r["per_s"] for r in rows}
    return per[8] / per[1] if 1 in per and 8 in per else None


def _engine_alone(model: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The same engine in this process: decide_batch(N) of N different turns, median of 15 (no service)."""
    import torch

    from tickcall.agent.protocol import parse_turn, to_turn
    from tickcall.models.loading import load_engine

    torch.set_num_threads(args.threads)
    engine = load_engine({"backend": "transformers", "model": str(model), "max_new_tokens": args.max_new_tokens})
    reg = engine.register(TOOLS)
    rows = []
    for n in args.clients:
        times = []
        for k in range(16):
            turns = [to_turn(parse_turn(_turn(1000 * k + i), None)) for i in range(n)]
            t = time.perf_counter()
            engine.decide_batch([(reg.handle, turn) for turn in turns])
            if k:  # the first is a warm-up
                times.append(time.perf_counter() - t)
        med = percentile(times, 50)
        rows.append({"clients": n, "batch_ms": med * 1e3, "per_s": n / med})
    engine.close()
    return rows


def run(args: argparse.Namespace) -> int:
    import ray

    from tickcall.cluster import init_ray

    started = init_ray(logging_level="ERROR")
    out: dict[str, Any] = {"bench": "serve", "machine": machine(), "loadavg_before": os.getloadavg()}
    try:
        if not args.skip_overhead:
            ov = _overhead(args)
            out["overhead"] = ov
            out["overhead_ratio"] = ov["overhead_ratio"]
            print_table(["path", "p50 ms", "p90 ms", "p99 ms", "mean ms", "n"],
                        [[k, v["p50"], v["p90"], v["p99"], v["mean"], v["n"]] for k, v in ov["round_trip_ms"].items()],
                        title=f"decide round trip, {ov['payload_bytes']}-byte request (no-op engine)")
            print(f"overhead_ratio (PolicyClient / raw echo, P50) = {ov['overhead_ratio']:.2f}  "
                  f"(bare DEALER: {ov['overhead_ratio_bare']:.2f}; goal <= 2); "
                  f"added P50 = {ov['added_us_p50']:.0f} us\n")
        if not args.skip_batching:
            bt = _batching(args)
            out["batching"] = bt
            out["batching_gain_8"] = bt["batching_gain_8"]
            print_table(["clients", "decisions/s", "mean batch", "p50 ms", "p90 ms", "errors"],
                        [[r["clients"], r["per_s"], r["mean_batch"], r["latency_ms"]["p50"],
                          r["latency_ms"]["p90"], r["errors"]] for r in bt["rows"]],
                        title=f"closed-loop clients, {bt['model']}, {bt['max_new_tokens']} tokens per head")
            print_table(["clients", "batch ms", "decisions/s"],
                        [[r["clients"], r["batch_ms"], r["per_s"]] for r in bt["engine_alone"]],
                        title="the same engine alone in this process: decide_batch(N turns), median")
            if bt["standin"]:
                print_table(["clients", "decisions/s", "mean batch", "p50 ms"],
                            [[r["clients"], r["per_s"], r["mean_batch"], r["latency_ms"]["p50"]]
                             for r in bt["standin"]],
                            title=f"service with a stand-in engine costing {args.standin_ms:g} ms per batch "
                                  "(any size)")
            if bt["batching_gain_8"] is not None:
                print(f"batching_gain_8 (service, tiny model: throughput 8 clients / 1 client) = "
                      f"{bt['batching_gain_8']:.2f} (goal >= 3); engine alone: {bt['engine_alone_gain_8']:.2f}"
                      + (f"; stand-in engine: {bt['standin_gain_8']:.2f}" if bt["standin_gain_8"] else ""))
    finally:
        if started:
            ray.shutdown()
    out["loadavg_after"] = os.getloadavg()
    print(f"load average before/after: {out['loadavg_before'][0]:.1f} / {out['loadavg_after'][0]:.1f} "
          f"({os.cpu_count()} cores)")
    write_json(args.json, out)
    return 0
