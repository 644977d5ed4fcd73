"""``tickcall bench service-cost``: the policy service's own CPU per ``decide``, at batch 1 and 64.

The service runs in a subprocess (as it does in its Ray actor) with an engine that does no model work
(``InstantEngine``: the no-op engine's decision made once per registration and handed back for every
request, so ``engine.decide_batch`` costs microseconds; ``--engine noop`` keeps the no-op engine's own
per-request assembly). Beside it, in another subprocess, a raw ZeroMQ echo (a ROUTER that msgpack-
decodes and re-encodes each message: the least any service does) is the floor.

Paths (interleaved in blocks, the order rotated per block, so machine noise hits all alike):

* ``echo``: a bare DEALER sends the decide payloads to the echo;
* ``service (bare DEALER)``: the same pre-encoded payloads to the service (client work as the echo's);
* ``service (PolicyClient)``: ``agent.client.PolicyClient`` (encodes each decide, decodes each reply);
* with ``--baseline-src DIR``, both service paths again with the service run from another source tree
  (``git archive REV | tar -x -C DIR``), its PolicyClient path with that tree's client too (in a
  subprocess of its own): before and after measured in one run, on one machine load.

Batch 1: one client, sequential (send, wait for the reply). Batch 64: one client sends 64 decides on 64
streams at once and waits for the 64 replies (the service decodes them as one batch: ``mean_batch``).

Per decide (ms): ``service_cpu_ms``, the server process's CPU time (every thread: the I/O and engine
threads, libzmq's I/O thread; ``time.process_time`` read in that process), split into ``io_cpu_ms`` and
``engine_cpu_ms`` (those threads' CPU clocks, ``time.pthread_getcpuclockid``); ``client_cpu_ms``, this
process's sending thread (``time.thread_time``). Per round (ms; batch 64: first send to last reply):
wall round trip P50/P90 (``time.perf_counter``). Ratios: each path / the echo. CPU time is what the
figures rest on: the machine may be shared (``loadavg`` before and after is in the JSON).

``--profile DIR``: afterwards, one profiled service per batch size (cProfile on the thread CPU clock, in
the I/O and engine threads) writes ``DIR/service-b{1,64}.prof`` and ``.txt`` (top functions by own
time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tickcall.bench.common import machine, print_table, write_json
from tickcall.timing import summary

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "move",
            "description": "Move the player in a direction.",
            "parameters": {
                "type": "object",
                "properties": {
                    "direction": {"type": "string", "enum": ["north", "south", "east", "west"]},
                    "speed": {"type": "number", "minimum": 0, "maximum": 1},
                },
                "required": ["direction"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "fire",
            "description": "Fire at a target.",
            "parameters": {
                "type": "object",
                "properties": {
                    "target": {"type": "integer"},
                    "burst": {"type": "integer", "minimum": 1, "maximum": 5},
                    "lead": {"type": "boolean"},
                },
                "required": ["target"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "wait",
            "description": "Do nothing this tick.",
            "parameters": {"type": "object", "properties": {}},
        },
    },
]
BATCHES = (1, 64)
DEADLINE_MS = 1000.0
# The rooms of the checkout and their import names (pyproject's package-dir): a --baseline-src tree is
# laid out as one importable ``tickcall`` package from these.
ROOMS = {
    "agent": "agent",
    "models": "models",
    "control_loop": "control_loop",
    "envs": "envs",
    "configs": "configs",
}


def turn(i: int) -> dict[str, Any]:
    """An arena-like per-tick turn (the shape of ``tickcall bench serve``'s), varied by ``i``."""
    return {
        "query": "",
        "history": ['move(direction="north", speed=0.5)'],
        "observation": {
            "x": round(12.5 + i * 0.01, 3),
            "y": -3.0,
            "hp": 87,
            "enemy": 3,
            "dist": 14.2,
            "bearing": -37,
        },
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3000, help="rounds per path at batch 1 (1 decide each)")
    parser.add_argument(
        "--rounds-64", type=int, default=150, help="rounds per path at batch 64 (64 decides each)"
    )
    parser.add_argument(
        "--block",
        type=int,
        default=100,
        help="rounds per interleaved block at batch 1 (batch 64: a tenth, at least 1)",
    )
    parser.add_argument(
        "--engine",
        choices=("instant", "noop"),
        default="instant",
        help="instant: engine time ~0 (default); noop: the no-op engine's own assembly per request",
    )
    parser.add_argument(
        "--baseline-src",
        metavar="DIR",
        help="also measure the service run from this source tree (e.g. `git archive REV`)",
    )
    parser.add_argument(
        "--profile", metavar="DIR", help="also profile the service at batch 1 and 64 into DIR"
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")


# --------------------------------------------------------------------------- the engine


def instant_engine() -> Any:
    """``InstantEngine()``; built in the service's process (a factory, not pickled)."""
    from tickcall.models.stand_ins import NoOpEngine

    class InstantEngine(NoOpEngine):
        """The no-op engine whose decision is made once per registration and returned for every request
        (stand-in for the service benchmark only): ``decide_batch`` does no per-request model work, so
        the CPU measured is the service's. Turns still go through the service's checks (token budget)."""

        backend = "instant"

        def __init__(self) -> None:
            super().__init__()
            self._made: dict[str, Any] = {}

        def decide_batch(self, requests: Any) -> list[Any]:
            out = []
            for handle, t in requests:
                d = self._made.get(handle)
                if d is None:
                    d = self._made[handle] = super().decide_batch([(handle, t)])[0]
                out.append(d)
            return out

    return InstantEngine()


# --------------------------------------------------------------------------- the subprocesses


def child_main(argv: list[str]) -> None:
    """Entry of a service, echo or client subprocess: ``argv`` = [mode, options JSON]. Prints one JSON
    line with its endpoint, then answers on stdin ``cpu`` (a JSON line of CPU seconds), ``block B N``
    (client: N rounds of B decides, a JSON line of ``ClientRounds.run``) and ``stop``."""
    mode, opts = argv[0], json.loads(argv[1])
    threads: dict[str, threading.Thread] = {}
    profiles: dict[str, Any] = {}
    rounds: ClientRounds | None = None
    if mode == "client":
        rounds = ClientRounds(opts["endpoint"])
        endpoint, stop = opts["endpoint"], rounds.close
    elif mode == "service":
        from tickcall.agent.config import ServeConfig
        from tickcall.agent.server import PolicyServer

        if opts["engine"] == "instant":
            engine = instant_engine()
        else:
            from tickcall.agent.engines import build_engine

            engine = build_engine({"backend": "noop"})
        server = PolicyServer(
            engine,
            ServeConfig(
                bind="tcp://127.0.0.1:0", max_batch=max(BATCHES), max_streams_per_client=max(BATCHES)
            ),
        )
        if opts.get("profile"):
            _profile_threads(server, profiles)
        endpoint = server.start()
        threads = {
            t.name.removeprefix("policy-"): t
            for t in threading.enumerate()
            if t.name in ("policy-io", "policy-engine")
        }
        stop = server.stop
    else:
        endpoint, stop, echo = _start_echo()
        threads = {"io": echo}
    print(json.dumps({"endpoint": endpoint, "pid": os.getpid()}), flush=True)
    clocks = {name: time.pthread_getcpuclockid(t.ident) for name, t in threads.items() if t.ident}
    for line in sys.stdin:
        cmd = line.split()
        if cmd[:1] == ["cpu"]:
            cpu = {name: time.clock_gettime(c) for name, c in clocks.items()}
            print(json.dumps({"process": time.process_time(), **cpu}), flush=True)
        elif cmd[:1] == ["block"] and rounds is not None:
            print(json.dumps(rounds.run(int(cmd[1]), int(cmd[2]))), flush=True)
        else:
            break
    stop()
    if profiles:
        _dump_profiles(profiles, Path(opts["profile"]))


def _start_echo() -> tuple[str, Any, threading.Thread]:
    """A ROUTER echo on loopback in a thread: msgpack decode + encode of every message (the floor)."""
    import msgpack
    import zmq

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:0")
    endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            if not sock.poll(100):
                continue
            while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                ident, payload = sock.recv_multipart()
                sock.send_multipart(
                    [ident, msgpack.packb(msgpack.unpackb(payload, raw=False), use_bin_type=True)]
                )
        sock.close(0)

    t = threading.Thread(target=loop, name="echo", daemon=True)
    t.start()

    def stop() -> None:
        done.set()
        t.join(5)

    return endpoint, stop, t


def _profile_threads(server: Any, profiles: dict[str, Any]) -> None:
    """Run the server's I/O and engine threads under cProfile on their own CPU clock."""
    import cProfile

    for name in ("_io_main", "_engine_main"):
        body = getattr(server, name)

        def wrapped(body: Any = body, name: str = name) -> None:
            prof = profiles[name] = cProfile.Profile(time.thread_time)
            prof.enable()
            try:
                body()
            finally:
                prof.disable()

        setattr(server, name, wrapped)


def _dump_profiles(profiles: dict[str, Any], out: Path) -> None:
    import io
    import pstats

    stats = None
    for prof in profiles.values():
        stats = pstats.Stats(prof) if stats is None else stats.add(prof)
    assert stats is not None
    stats.dump_stats(str(out.with_suffix(".prof")))
    text = io.StringIO()
    pstats.Stats(str(out.with_suffix(".prof")), stream=text).sort_stats("tottime").print_stats(30)
    out.with_suffix(".txt").write_text(text.getvalue())


class Child:
    """A service or echo subprocess (``child_main``), optionally run from another source tree."""

    def __init__(self, mode: str, opts: dict[str, Any], src: Path | None = None) -> None:
        env = dict(os.environ)
        self._tmp: str | None = None
        if src is not None:
            self._tmp = tempfile.mkdtemp(prefix="tickcall-service-cost-src-")
            try:
                root = layout_source(src, Path(self._tmp))
            except ValueError:
                shutil.rmtree(self._tmp, ignore_errors=True)
                raise
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        # the child's stderr (closed in close()): its last line names a failure
        self._err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        code = (
            "import runpy, sys; runpy.run_path(sys.argv[1], run_name='service_cost_child')"
            "['child_main'](sys.argv[2:])"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, __file__, mode, json.dumps(opts)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            status = self.proc.wait(30)
            self._err.seek(0)
            lines = self._err.read().strip().splitlines() or ["no message"]
            self.close()
            where = "" if src is None else f" from {src}"
            raise RuntimeError(f"the {mode} subprocess{where} did not start (exit {status}): {lines[-1]}")
        self.endpoint = json.loads(line)["endpoint"]

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: ``process`` (all threads) and per named thread (``io``, ``engine``)."""
        return self.call("cpu")

    def call(self, command: str) -> dict[str, Any]:
        """One command (see ``child_main``) and its JSON answer."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the subprocess exited (status {self.proc.wait(30)}) on {command!r}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("stop\n")
                self.proc.stdin.flush()
                self.proc.stdin.close()
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)
        self._err.close()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


def check_source(src: Path) -> Path:
    """``src`` resolved, when it is a tickcall checkout. Raises ValueError (one line) otherwise."""
    src = src.resolve()
    if not (src / "tickcall" / "__init__.py").is_file() or not (src / "agent" / "server.py").is_file():
        raise ValueError(
            f"--baseline-src {src}: not a tickcall source tree (no tickcall/ and agent/server.py); "
            "make one with: git archive REV | tar -x -C DIR"
        )
    return src


def layout_source(src: Path, dest: Path) -> str:
    """Lay a checkout ``src`` out under ``dest`` as the ``tickcall`` package (links to its rooms); returns
    the folder to put on PYTHONPATH. Raises ValueError when ``src`` is not a tickcall checkout."""
    src = check_source(src)
    pkg = dest / "tickcall"
    pkg.mkdir(parents=True)
    for entry in (src / "tickcall").iterdir():
        (pkg / entry.name).symlink_to(entry)
    for name, folder in ROOMS.items():
        if (src / folder).is_dir():
            (pkg / name).symlink_to(src / folder)
    return str(dest)


# --------------------------------------------------------------------------- clients


class ClientRounds:
    """``agent.client.PolicyClient`` (of whichever source tree is imported) sending rounds of decides."""

    def __init__(self, endpoint: str) -> None:
        from tickcall.agent.client import PolicyClient

        self.client = PolicyClient(endpoint, timeout_ms=30_000, name="service-cost")
        self.client.register(TOOLS)
        self.tick = 0

    def run(self, batch: int, rounds: int) -> dict[str, Any]:
        """``rounds`` rounds of ``batch`` decides (streams s0..): ``round_ms`` per round, ``cpu_s`` of
        this thread, and per reply [type, legal, batch]."""
        times, replies = [], []
        c0 = time.thread_time()
        for _ in range(rounds):
            t = time.perf_counter()
            for j in range(batch):
                self.tick += 1
                self.client.send_decide(turn(self.tick), self.tick, DEADLINE_MS, stream=f"s{j}")
            got: list[Any] = []
            while len(got) < batch:
                got += self.client.poll(30_000)
            times.append((time.perf_counter() - t) * 1e3)
            replies += got
        cpu = time.thread_time() - c0
        summary = [[r.type, bool(getattr(r, "legal", False)), int(getattr(r, "batch", 0))] for r in replies]
        return {"round_ms": times, "cpu_s": cpu, "replies": summary}

    def close(self) -> None:
        self.client.close()


class Route:
    """One measured path: a client of one subprocess (``kind``: ``echo``, ``bare`` DEALER or ``client``,
    a PolicyClient: in this process, or from ``client_src`` in a subprocess of its own), sending
    ``batch`` decides per round."""

    def __init__(self, name: str, child: Child, kind: str, client_src: Path | None = None) -> None:
        import zmq

        from tickcall.agent import protocol as P
        from tickcall.agent.messages import Register

        self.name, self.child, self.kind = name, child, kind
        self.rows: dict[int, dict[str, Any]] = {}
        self.client: ClientRounds | None = None
        self.remote: Child | None = None
        self.sock: Any = None
        self.payloads: list[bytes] = []
        if kind == "client":
            if client_src is None:
                self.client = ClientRounds(child.endpoint)
            else:
                self.remote = Child("client", {"endpoint": child.endpoint}, client_src)
            return
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, 30_000)
        self.sock.connect(child.endpoint)
        handle = "00000000.1"  # the echo reads no handle; the same length as a service's
        if kind == "bare":  # this socket registers the tools itself: it owns its handle
            self.sock.send(P.encode(Register(id=0, tools=TOOLS)))
            reply = P.decode_reply(self.sock.recv())
            if reply.type != "registered":
                raise RuntimeError(f"register failed: {reply}")
            handle = reply.handle
        self.payloads = payloads(handle)

    def row(self, batch: int) -> dict[str, Any]:
        return self.rows.setdefault(
            batch,
            {
                "path": self.name,
                "batch": batch,
                "rounds": 0,
                "decides": 0,
                "replies": 0,
                "calls": 0,
                "errors": 0,
                "batch_sum": 0,
                "cpu_s": {},
                "client_cpu_s": 0.0,
                "round_ms": [],
            },
        )

    def block(self, batch: int, rounds: int, record: bool = True) -> None:
        """``rounds`` rounds of ``batch`` decides; with ``record``, their times and CPU go in the row."""
        before = self.child.cpu()
        if self.client is not None or self.remote is not None:
            res = (
                self.client.run(batch, rounds) if self.client else self.remote.call(f"block {batch} {rounds}")
            )
            times, replies, client_cpu = res["round_ms"], res["replies"], res["cpu_s"]
        else:
            times, replies = [], []
            c0 = time.thread_time()
            for _ in range(rounds):
                t = time.perf_counter()
                for j in range(batch):
                    self.sock.send(self.payloads[j])
                replies += [self.sock.recv() for _ in range(batch)]
                times.append((time.perf_counter() - t) * 1e3)
            client_cpu = time.thread_time() - c0
        after = self.child.cpu()
        if not record:
            return
        row = self.row(batch)
        row["rounds"] += rounds
        row["decides"] += rounds * batch
        row["round_ms"] += times
        row["client_cpu_s"] += client_cpu
        for k, v in after.items():
            row["cpu_s"][k] = row["cpu_s"].get(k, 0.0) + v - before[k]
        for r in replies:
            self._count(row, r)

    def _count(self, row: dict[str, Any], r: Any) -> None:
        """Count one reply: raw bytes (echo, bare DEALER) or a PolicyClient's [type, legal, batch]."""
        row["replies"] += 1
        if self.kind == "echo":  # the echo's reply is the request itself
            row["calls"] += 1
            return
        if isinstance(r, bytes):
            from tickcall.agent import protocol as P

            reply = P.decode_reply(r)
            r = [reply.type, bool(getattr(reply, "legal", False)), int(getattr(reply, "batch", 0))]
        kind, legal, batch = r
        if kind == "call" and legal:
            row["calls"] += 1
            row["batch_sum"] += batch
        else:
            row["errors"] += 1

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.remote is not None:
            self.remote.close()
        if self.sock is not None:
            self.sock.close(0)


def payloads(handle: str) -> list[bytes]:
    """64 decides (streams s0..s63) as a v1 peer writes them: pre-encoded, reused every round."""
    from tickcall.agent import protocol as P

    return [
        P.pack(
            {
                "v": 1,
                "type": "decide",
                "id": j + 1,
                "handle": handle,
                "tick": j,
                "turn": turn(j),
                "sent_ms": 0.0,
                "deadline_ms": DEADLINE_MS,
                "stream": f"s{j}",
            }
        )
        for j in range(max(BATCHES))
    ]


def _finish(row: dict[str, Any]) -> dict[str, Any]:
    n = max(1, row["decides"])
    cpu = row.pop("cpu_s")
    out = dict(row)
    out["round_ms"] = summary(row["round_ms"])
    out["service_cpu_ms"] = cpu.get("process", 0.0) / n * 1e3
    out["io_cpu_ms"] = cpu.get("io", 0.0) / n * 1e3
    out["engine_cpu_ms"] = cpu["engine"] / n * 1e3 if "engine" in cpu else None
    out["client_cpu_ms"] = row["client_cpu_s"] / n * 1e3
    out["mean_batch"] = row["batch_sum"] / row["calls"] if row["calls"] and row["batch_sum"] else None
    del out["batch_sum"], out["client_cpu_s"]
    return out


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return str(machine()["cpu"])


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every path at batch 1 and 64, interleaved; returns the rows (see the module docstring)."""
    opts = {"engine": args.engine}
    children: list[Child] = []
    paths: list[Route] = []
    try:
        echo = Child("echo", opts)
        children.append(echo)
        services = [("service", Child("service", opts))]
        children.append(services[0][1])
        if args.baseline_src:
            services.append(("baseline service", Child("service", opts, Path(args.baseline_src))))
            children.append(services[1][1])
        paths.append(Route("echo", echo, "echo"))
        for label, child in services:
            src = Path(args.baseline_src) if label.startswith("baseline") else None
            paths.append(Route(f"{label} (bare DEALER)", child, "bare"))
            paths.append(Route(f"{label} (PolicyClient)", child, "client", client_src=src))
        for batch, rounds in ((1, args.rounds), (64, args.rounds_64)):
            block = max(1, args.block if batch == 1 else args.block // 10)
            for p in paths:  # warm-up: the gather window learns the batch size, caches fill
                p.block(batch, max(2, block // 5), record=False)
            done, k = 0, 0
            while done < rounds:
                n = min(block, rounds - done)
                for p in paths[k % len(paths) :] + paths[: k % len(paths)]:
                    p.block(batch, n)
                done += n
                k += 1
        rows = [_finish(p.rows[b]) for b in BATCHES for p in paths]
    finally:
        for p in paths:
            p.close()
        for c in children:
            c.close()
    for b in BATCHES:
        echo_row = next(r for r in rows if r["batch"] == b and r["path"] == "echo")
        for r in rows:
            if r["batch"] == b:
                r["cpu_ratio_vs_echo"] = r["service_cpu_ms"] / max(echo_row["service_cpu_ms"], 1e-9)
                r["wall_ratio_vs_echo"] = r["round_ms"]["p50"] / max(echo_row["round_ms"]["p50"], 1e-9)
    return {"rows": rows, "payload_bytes": len(paths[0].payloads[0]) if paths else 0}


def profile(args: argparse.Namespace, out_dir: Path) -> dict[str, str]:
    """One profiled service per batch size (bare DEALER client); returns the .txt paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for batch, rounds in ((1, args.rounds), (64, args.rounds_64)):
        target = (out_dir / f"service-b{batch}").resolve()
        child = Child("service", {"engine": args.engine, "profile": str(target)})
        try:
            p = Route("profiled", child, "bare")
            p.block(batch, rounds)
            p.close()
        finally:
            child.close()
        files[str(batch)] = str(target.with_suffix(".txt"))
    return files


def run(args: argparse.Namespace) -> int:
    if args.rounds < 1 or args.rounds_64 < 1 or args.block < 1:
        raise SystemExit("tickcall bench service-cost: --rounds, --rounds-64 and --block must be 1 or more")
    if args.baseline_src and not Path(args.baseline_src).is_dir():
        raise SystemExit(
            f"tickcall bench service-cost: --baseline-src {args.baseline_src} is not a folder; "
            "make one with: git archive REV | tar -x -C DIR"
        )
    if args.baseline_src:
        try:
            check_source(Path(args.baseline_src))
        except ValueError as exc:
            raise SystemExit(f"tickcall bench service-cost: {exc}") from None
    out: dict[str, Any] = {
        "bench": "service-cost",
        "machine": machine(),
        "cpu_model": _cpu_model(),
        "nproc": os.cpu_count(),
        "engine": args.engine,
        "rounds": {"1": args.rounds, "64": args.rounds_64},
        "baseline_src": args.baseline_src,
        "loadavg_before": os.getloadavg(),
    }
    try:
        out.update(measure(args))
    except (ValueError, RuntimeError) as exc:
        raise SystemExit(f"tickcall bench service-cost: {exc}") from None
    if args.profile:
        out["profiles"] = profile(args, Path(args.profile))
    out["loadavg_after"] = os.getloadavg()
    for b in BATCHES:
        rows = [r for r in out["rows"] if r["batch"] == b]
        print_table(
            ["path", "service CPU us", "io us", "engine us", "other us", "client CPU us", "P50 ms", "P90 ms",
             "CPU x echo", "P50 x echo", "mean batch", "decides"],
            [
                [
                    r["path"],
                    r["service_cpu_ms"] * 1e3,
                    r["io_cpu_ms"] * 1e3,
                    "-" if r["engine_cpu_ms"] is None else r["engine_cpu_ms"] * 1e3,
                    (r["service_cpu_ms"] - r["io_cpu_ms"] - (r["engine_cpu_ms"] or 0.0)) * 1e3,
                    r["client_cpu_ms"] * 1e3,
                    r["round_ms"]["p50"],
                    r["round_ms"]["p90"],
                    r["cpu_ratio_vs_echo"],
                    r["wall_ratio_vs_echo"],
                    "-" if r["mean_batch"] is None else r["mean_batch"],
                    r["decides"],
                ]
                for r in rows
            ],
            title=f"batch {b}: CPU per decide (us; other: libzmq's I/O thread and the rest of the process), "
            f"round trip per round of {b} decides (ms); {out['payload_bytes']}-byte decide, {args.engine} engine",
        )  # fmt: skip
        print()
    for b, path in out.get("profiles", {}).items():
        print(f"profile at batch {b}: {path}")
    print(
        f"{out['cpu_model']}, {out['nproc']} cores; load average before/after: "
        f"{out['loadavg_before'][0]:.2f} / {out['loadavg_after'][0]:.2f}"
    )
    write_json(args.json, out)
    return 0
