"""``tickcall bench anchor``: tickcall against SimpleTool's own server on the same model and request.

The request is Pong-style (issue 20): 1 tool with 1 parameter, so 2 heads (``<function>``, ``<arg1>``),
each decoding exactly ``--tokens`` tokens (32; random weights never stop on their own, and SimpleTool's
server caps a head at 32), greedy. Every server is its own process, started and stopped one after
another, on the same tiny random Qwen2 (``models.tiny.make_tiny_model``, the 17 SimpleTool tokens):

* ``tickcall serve`` per backend (``--backends``; transformers by default, vllm when asked), timed
  over ZMQ (``agent.client.PolicyClient``) and over its SimpleTool HTTP door (``--http``);
* SimpleTool's ``rt_server.py`` from a local folder of its public repository (``--simpletool DIR``),
  run unchanged in a scratch folder whose ``models/RT-Qwen3-4B-AWQ`` links to the same model (it binds
  0.0.0.0:8899, its own choice). Without ``--simpletool`` tickcall is measured alone.

Sequential: ``--requests`` requests one at a time after ``--warmup`` discarded, P50/P90 (ms, client
clock, request sent -> answer read). Concurrent: ``--clients`` HTTP clients in closed loop, each
sending ``--per-client`` requests; throughput (requests/s over the wall time) and P50/P90. The query
and environment change with every request (a game's state does), so no server answers from a cache
of the whole prompt. Keys (``--json FILE``): ``p50_ms.<server>``, ``p90_ms.<server>``,
``throughput_rps.<server>`` with servers ``simpletool``, ``<backend>.zmq``, ``<backend>.http``,
``<backend>.http_8`` / ``simpletool_8`` (8 = ``--clients``); with the anchor also
``ratio_p50.<backend>`` (tickcall ZMQ P50 / SimpleTool P50), ``ratio_p50_http.<backend>`` (the HTTP
door's) and ``throughput_ratio.<backend>`` (the door's concurrent throughput / SimpleTool's).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tickcall.bench.common import machine, print_table, write_json
from tickcall.commands.eval import add_option_argument, parse_engine_options
from tickcall.timing import percentile

SIMPLETOOL_URL = "https://github.com/HaxxorCialtion/SimpleTool"
ANCHOR_PORT = 8899  # rt_server.py's own, fixed
PONG = {
    "type": "function",
    "function": {
        "name": "move",
        "description": "Move paddle vertically to intercept ball",
        "parameters": {
            "type": "object",
            "properties": {"direction": {"type": "string", "enum": ["up", "down", "stay"]}},
            "required": ["direction"],
        },
    },
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--simpletool", metavar="DIR", help=f"a local clone of {SIMPLETOOL_URL} (its rt_server.py)"
    )
    parser.add_argument("--backends", nargs="+", default=["transformers"], choices=("transformers", "vllm"))
    parser.add_argument("--model", help="model folder (default: a tiny random Qwen2 built here)")
    add_option_argument(
        parser,
        "--vllm-option",
        "vllm_options",
        "an option of tickcall's vLLM engine (repeatable), e.g. --vllm-option enforce_eager=false "
        "(vLLM compiles the model with torch.compile, as SimpleTool's server does; tickcall's CPU default "
        "is eager)",
    )
    parser.add_argument("--tokens", type=int, default=32, help="tokens decoded per head (forced)")
    parser.add_argument("--requests", type=int, default=100, help="timed sequential requests per path")
    parser.add_argument("--warmup", type=int, default=5, help="discarded requests before timing")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    parser.add_argument("--per-client", type=int, default=25, help="requests per concurrent client")
    parser.add_argument(
        "--start-timeout", type=float, default=900.0, help="seconds a server may take to start"
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")


# --------------------------------------------------------------------------- the engine of the service


def forced_engine(inner: str, model: str, tokens: int, **options: Any) -> Any:
    """A service engine (``backend: factory``) decoding exactly ``tokens`` tokens on every head;
    ``options``: the inner engine's own options (``--vllm-option``)."""
    from tickcall.models.format import head_names
    from tickcall.models.loading import load_engine

    engine = load_engine({"backend": inner, "model": model, **options})
    engine.forced_lengths = {h: tokens for h in head_names(engine.max_heads)}
    return engine


# --------------------------------------------------------------------------- requests


def request_body(i: int) -> dict[str, Any]:
    """The Pong demo's request, its state moved by ``i``."""
    ball, paddle = 100 + (7 * i) % 300, 200
    return {
        "messages": [
            {"role": "user", "content": f"Pong AI. Ball is {abs(ball - paddle)}px away. Choose: up/down/stay"}
        ],
        "tools": [PONG],
        "environment": [
            f"ball_y={ball}",
            f"paddle_y={paddle}",
            f"diff={ball - paddle}",
            "ball_moving_towards",
        ],
        "history": [],
    }


def _turn(i: int) -> dict[str, Any]:
    body = request_body(i)
    return {"query": body["messages"][0]["content"], "history": [], "environment": body["environment"]}


def timed(call: Callable[[int], None], n: int, warmup: int) -> list[float]:
    """Milliseconds of ``call(i)`` for ``n`` calls after ``warmup`` untimed ones."""
    out = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        call(i)
        if i >= warmup:
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def http_sequential(url: str, n: int, warmup: int) -> list[float]:
    import httpx

    with httpx.Client(timeout=120) as client:

        def one(i: int) -> None:
            r = client.post(f"{url}/v1/function_call", json=request_body(i))
            if r.status_code != 200 or "success" not in r.json():
                raise RuntimeError(f"{url}: HTTP {r.status_code} {r.text[:200]}")

        return timed(one, n, warmup)


def zmq_sequential(endpoint: str, n: int, warmup: int) -> list[float]:
    from tickcall.agent.client import PolicyClient
    from tickcall.agent.messages import CallReply

    client = PolicyClient(endpoint, timeout_ms=120_000)
    try:
        client.register([PONG])

        def one(i: int) -> None:
            reply = client.decide(_turn(i), tick_id=i)
            if not isinstance(reply, CallReply):
                raise RuntimeError(f"{endpoint}: {reply}")

        return timed(one, n, warmup)
    finally:
        client.close()


def http_concurrent(url: str, clients: int, per_client: int, warmup: int) -> tuple[float, list[float]]:
    """(requests per second, latencies ms) of ``clients`` closed-loop HTTP clients."""
    import httpx

    lat: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    start = threading.Barrier(clients + 1)

    def worker(k: int) -> None:
        with httpx.Client(timeout=120) as client:
            for i in range(warmup):  # each client's connection and tool set, before the clock starts
                client.post(f"{url}/v1/function_call", json=request_body(1000 * k + i))
            start.wait()
            for i in range(per_client):
                t0 = time.perf_counter()
                r = client.post(f"{url}/v1/function_call", json=request_body(1000 * k + warmup + i))
                lat[k].append((time.perf_counter() - t0) * 1e3)
                if r.status_code != 200:
                    errors.append(f"HTTP {r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{url}: {errors[0]}")
    flat = [x for xs in lat for x in xs]
    return len(flat) / wall, flat


# --------------------------------------------------------------------------- servers (own processes)


class Process:
    """A server in its own process group (so its children, e.g. a vLLM engine core, die with it)."""

    def __init__(self, argv: list[str], cwd: str | None = None, log: Path | None = None) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.log = open(log, "w") if log is not None else None  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.tail: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.tail = (self.tail + [line.rstrip()])[-30:]
            self.lines.put(line)
            if self.log is not None:
                self.log.write(line)

    def wait_line(self, prefix: str, timeout_s: float) -> str:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if line.startswith(prefix):
                return line
        raise RuntimeError(f"no {prefix!r} line; last output:\n" + "\n".join(self.tail))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        # whatever the group left behind (rt_server.py's vLLM engine core outlives it otherwise)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        if self.log is not None:
            self.log.close()


def start_tickcall(
    backend: str,
    model: Path,
    tokens: int,
    workdir: Path,
    timeout_s: float,
    options: dict[str, Any] | None = None,
) -> tuple[Process, str, str]:
    """``tickcall serve`` with the HTTP door: (process, ZMQ endpoint, HTTP URL)."""
    import yaml

    cfg = workdir / f"serve-{backend}.yaml"
    engine = {"backend": "factory", "factory": "tickcall.bench.anchor:forced_engine", "inner": backend,
              "model": str(model), "tokens": tokens, **(options or {})}  # fmt: skip
    cfg.write_text(yaml.safe_dump({"engine": engine, "bind": "tcp://127.0.0.1:0"}))
    proc = Process(
        [sys.executable, "-m", "tickcall.cli", "serve", "--config", str(cfg), "--http", "127.0.0.1:0"],
        log=workdir / f"serve-{backend}.log",
    )
    try:
        endpoint = proc.wait_line("policy service on ", timeout_s).split()[3]
        url = proc.wait_line("SimpleTool HTTP API on ", 60).split()[4]
    except BaseException:
        proc.stop()
        raise
    return proc, endpoint, url


def start_simpletool(folder: Path, model: Path, workdir: Path, timeout_s: float) -> tuple[Process, str]:
    """SimpleTool's rt_server.py, unchanged, serving ``model`` (its MODEL_PATH links to it)."""
    import httpx

    server = folder / "rt_server.py"
    if not server.is_file():
        raise SystemExit(f"--simpletool {folder}: no rt_server.py there (git clone {SIMPLETOOL_URL})")
    scratch = workdir / "simpletool"
    (scratch / "models").mkdir(parents=True, exist_ok=True)
    link = scratch / "models" / "RT-Qwen3-4B-AWQ"
    if not link.exists():
        link.symlink_to(model.resolve())
    proc = Process([sys.executable, str(server.resolve())], cwd=str(scratch), log=workdir / "rt_server.log")
    url = f"http://127.0.0.1:{ANCHOR_PORT}"
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.proc.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/health", timeout=2).json().get("loaded"):
                return proc, url
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(1.0)
    proc.stop()
    raise RuntimeError(f"rt_server.py did not come up (whole log: {workdir / 'rt_server.log'}); last output:\n"
                       + "\n".join(proc.tail))  # fmt: skip


# --------------------------------------------------------------------------- the run


def _summary(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90), "n": len(ms)}


def run(args: argparse.Namespace) -> int:
    # SIGTERM unwinds like Ctrl-C, so every started server's process group is ended (finally blocks)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    vllm_options = parse_engine_options(args.vllm_options, "--vllm-option")
    if vllm_options and "vllm" not in args.backends:
        from tickcall.commands.errors import CommandError

        raise CommandError("--vllm-option applies to the vllm backend: add --backends ... vllm or drop it")
    workdir = Path(tempfile.mkdtemp(prefix="tickcall-bench-anchor-"))
    print(f"work folder (model, configs, server logs): {workdir}")
    if args.model:
        model, desc = Path(args.model), args.model
    else:
        from tickcall.models.tiny import make_tiny_model

        # head size 32 (hidden 64, 2 heads): vLLM's CPU attention has no 16, the defaults' size
        model = make_tiny_model(workdir / "tiny", hidden=64, heads=2, kv_heads=1, intermediate=128, seed=0)
        desc = "tiny random Qwen2 (hidden 64, 2 layers, head size 32; the 17 SimpleTool tokens)"
    if not args.simpletool:
        print(f"no --simpletool DIR: measuring tickcall alone (for the anchor: git clone {SIMPLETOOL_URL} DIR, "
              "pip install vllm, then --simpletool DIR)")  # fmt: skip
    rows: dict[str, dict[str, float]] = {}
    n, w, c = args.requests, args.warmup, args.clients
    if args.simpletool:
        proc, url = start_simpletool(Path(args.simpletool), model, workdir, args.start_timeout)
        try:
            rows["simpletool"] = _summary(http_sequential(url, n, w))
            rps, lat = http_concurrent(url, c, args.per_client, w)
            rows[f"simpletool_{c}"] = {**_summary(lat), "throughput_rps": rps}
        finally:
            proc.stop()
    for backend in args.backends:
        options = vllm_options if backend == "vllm" else None
        proc, endpoint, url = start_tickcall(
            backend, model, args.tokens, workdir, args.start_timeout, options
        )
        try:
            rows[f"{backend}.zmq"] = _summary(zmq_sequential(endpoint, n, w))
            rows[f"{backend}.http"] = _summary(http_sequential(url, n, w))
            rps, lat = http_concurrent(url, c, args.per_client, w)
            rows[f"{backend}.http_{c}"] = {**_summary(lat), "throughput_rps": rps}
        finally:
            proc.stop()

    out: dict[str, Any] = {
        "bench": "anchor",
        "machine": machine(),
        "model": desc,
        "request": {
            "tools": 1,
            "heads": 2,
            "tokens_per_head": args.tokens,
            "requests": n,
            "warmup": w,
            "clients": c,
            "per_client": args.per_client,
        },  # fmt: skip
        "anchor": bool(args.simpletool),
        "vllm_options": vllm_options,
    }
    for name, r in rows.items():
        out[f"p50_ms.{name}"] = r["p50_ms"]
        out[f"p90_ms.{name}"] = r["p90_ms"]
        if "throughput_rps" in r:
            out[f"throughput_rps.{name}"] = r["throughput_rps"]
    if "simpletool" in rows:
        base = rows["simpletool"]["p50_ms"]
        for backend in args.backends:
            out[f"ratio_p50.{backend}"] = rows[f"{backend}.zmq"]["p50_ms"] / base
            out[f"ratio_p50_http.{backend}"] = rows[f"{backend}.http"]["p50_ms"] / base
            out[f"throughput_ratio.{backend}"] = (
                rows[f"{backend}.http_{c}"]["throughput_rps"] / rows[f"simpletool_{c}"]["throughput_rps"]
            )
    print_table(
        ["server", "P50 ms", "P90 ms", "req/s"],
        [[name, r["p50_ms"], r["p90_ms"], r.get("throughput_rps", "")] for name, r in rows.items()],
        title=f"anchor: 1 tool, 2 heads x {args.tokens} tokens, {n} requests after {w} warm-ups; "
        f"_{c}: {c} concurrent HTTP clients x {args.per_client} ({desc})",
    )
    for key in sorted(k for k in out if k.startswith(("ratio_p50", "throughput_ratio"))):
        print(f"{key} = {out[key]:.3f}")
    write_json(args.json, out)
    return 0
