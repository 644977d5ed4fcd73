"""``tickcall serve``: run the policy service standalone (ZeroMQ, protocol v1: docs/protocol.md).

Examples::

    tickcall serve --config configs/serve.yaml                      # in this process, until Ctrl-C
    tickcall serve --backend transformers --model models/shipped/X  # no config file
    tickcall serve --config configs/serve.yaml --ray                # as a Ray actor (GPU if any)
    tickcall serve --gen-keys keys/                                 # CURVE key pairs for server/client
    tickcall serve --probe tcp://127.0.0.1:5555                     # hello + ping a running service
    tickcall serve --model DIR --http 127.0.0.1:8899                # + SimpleTool's HTTP API (its demos)
    tickcall serve --model DIR --swap-file swap.txt                 # hot swap: echo NEW_DIR > swap.txt

``--swap-file FILE``: when FILE's content (one line: a model folder) changes, the service loads those
weights beside the ones serving, registers every live tool set on them, and switches between two engine
steps, same endpoint, epoch and handles (docs/protocol.md, "Hot swap"). One line says how it went; a
folder that does not load leaves the old weights serving. A file, not a wire message: only someone who
may write on the service's machine chooses its weights.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from typing import Any

HELP = "run the policy service standalone (ZeroMQ, wire protocol v1)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="serve YAML (configs/serve*.yaml); flags below override it")
    parser.add_argument("--bind", help="ZMQ endpoint to bind (default tcp://127.0.0.1:5555)")
    parser.add_argument("--backend", help="engine backend: transformers, vllm, noop or random (no model)")
    parser.add_argument("--model", help="model folder for the engine")
    parser.add_argument("--max-batch", type=int, help="most decides decoded in one batch")
    parser.add_argument("--max-message-bytes", type=int, help="larger requests are answered 'oversized'")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback bind without CURVE (trusted networks only)",
    )
    parser.add_argument("--ray", action="store_true", help="run as a Ray actor (placed on a GPU if any)")
    parser.add_argument(
        "--swap-file",
        metavar="FILE",
        help="hot swap: when FILE's content (a model folder) changes, serve those weights "
        "(same endpoint and handles; the old ones serve until the new are warm)",
    )
    parser.add_argument(
        "--stats-every",
        type=float,
        default=0.0,
        metavar="S",
        help="print the service counters every S seconds (0: only at exit)",
    )
    parser.add_argument("--gen-keys", metavar="DIR", help="write CURVE key pairs (server, client) and exit")
    parser.add_argument(
        "--probe", metavar="ENDPOINT", help="hello + ping a running service, print JSON, exit"
    )
    parser.add_argument("--server-public", help="--probe with CURVE: the server's .key file")
    parser.add_argument("--client-secret", help="--probe with CURVE: this client's .key_secret file")
    parser.add_argument("--timeout-ms", type=float, default=2000.0, help="--probe timeout (ms)")
    parser.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="also serve SimpleTool's HTTP API (GET /health, POST /v1/function_call) here, "
        "e.g. 127.0.0.1:8899 (docs/simpletool-compat.md)",
    )
    parser.add_argument(
        "--http-assembly",
        choices=("lenient", "strict"),
        help="HTTP door: how heads become a call (default lenient, as SimpleTool's server)",
    )
    parser.add_argument(
        "--http-template",
        help="HTTP door: prompt template (default: the server variant of the model's, "
        "v1-server or v2-server)",
    )


def _config(args: argparse.Namespace) -> Any:
    from tickcall.agent.config import ServeConfig

    cfg = ServeConfig.from_yaml(args.config) if args.config else ServeConfig()
    if args.bind:
        cfg.bind = args.bind
    if args.backend or args.model:
        engine = dict(cfg.engine) if not args.backend or args.backend == cfg.engine.get("backend") else {}
        engine["backend"] = args.backend or engine.get("backend") or "transformers"
        if args.model:
            engine["model"] = args.model
        cfg.engine = engine
    if args.max_batch:
        cfg.max_batch = args.max_batch
    if args.max_message_bytes:
        cfg.max_message_bytes = args.max_message_bytes
    if args.insecure:
        cfg.allow_insecure = True
    if (args.http_assembly or args.http_template) and not args.http and cfg.http is None:
        flag = "--http-assembly" if args.http_assembly else "--http-template"
        raise ValueError(
            f"{flag} sets the HTTP door, which is off; add --http HOST:PORT "
            "(e.g. --http 127.0.0.1:8899) or http: in the serve config"
        )
    if args.http or args.http_assembly or args.http_template:
        http = dict(cfg.http or {})  # ServeConfig keeps the door's settings as a checked mapping
        http.update(
            {
                k: v
                for k, v in (
                    ("bind", args.http),
                    ("assembly", args.http_assembly),
                    ("template", args.http_template),
                )
                if v
            }
        )
        cfg.http = http
    if cfg.http is not None:  # the service's --insecure / allow_insecure covers its door too
        cfg.http = {**cfg.http, "allow_insecure": bool(cfg.http.get("allow_insecure")) or cfg.allow_insecure}
    cfg.__post_init__()
    _check_binds(cfg)
    return cfg


def _check_binds(cfg: Any) -> None:
    """The bind policy of the ZMQ socket and of the HTTP door, before any engine loads (a model can
    take seconds) or any socket is made: ValueError with the one line to print."""
    from tickcall.agent.security import check_bind, check_http_bind

    if not cfg.allow_insecure:  # allowed binds are logged once, by the server that makes them
        check_bind(cfg.bind, cfg.curve, False)
    if cfg.http is not None and not cfg.http["allow_insecure"]:
        from tickcall.agent.http_door import host_port

        check_http_bind(*host_port(cfg.http["bind"]), False)


def _probe(args: argparse.Namespace) -> int:
    import msgspec

    from tickcall.agent.client import PolicyClient, PolicyError, PolicyTimeout

    curve = None
    if args.server_public:
        curve = {"server_public": args.server_public, "client_secret": args.client_secret}
    client = PolicyClient(args.probe, timeout_ms=args.timeout_ms, curve=curve, name="tickcall-probe")
    try:
        welcome = client.hello()
        rtts = sorted(client.ping() for _ in range(20))
    except (PolicyTimeout, PolicyError) as exc:
        print(f"tickcall serve --probe {args.probe}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(
        json.dumps(
            {
                "endpoint": args.probe,
                "epoch": welcome.epoch,
                "versions": welcome.versions,
                "server": welcome.server,
                "engine": welcome.engine,
                "limits": welcome.limits,
                "ping_ms": {"p50": round(rtts[len(rtts) // 2], 3), "max": round(rtts[-1], 3)},
            },
            indent=2,
            default=msgspec.to_builtins,
        )
    )  # welcome's parts are typed structs
    return 0


def run(args: argparse.Namespace) -> int:
    if args.gen_keys:
        from tickcall.agent.security import generate_keys

        for name, secret in generate_keys(args.gen_keys).items():
            print(f"{name}: public {secret.with_suffix('.key')}  secret {secret}")
        print(
            "server: curve.server_secret = server.key_secret; clients need server.key (public). "
            "Authorise a client by copying its .key into the folder named by curve.client_keys."
        )
        return 0
    if args.probe:
        return _probe(args)
    from tickcall.commands.errors import CommandError, one_line

    try:
        cfg = _config(args)
    except (ValueError, OSError) as exc:  # agent/config_check.py: the setting, its value, what to write
        raise CommandError(one_line(exc)) from None

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.ray:
        return _run_ray(cfg, stop, args.stats_every, args.swap_file)
    from tickcall.agent.engines import build_engine
    from tickcall.agent.server import PolicyServer
    from tickcall.models.engine import EngineError

    try:
        engine = build_engine(cfg.engine)
        server = PolicyServer(engine, cfg)
        endpoint = server.start()
    except Exception as exc:  # a model folder that does not load, a port in use: one line, exit 2
        kind = "" if isinstance(exc, (ValueError, EngineError)) else f"{type(exc).__name__}: "
        raise CommandError(f"{kind}{one_line(exc)}") from None
    print(
        f"policy service on {endpoint}  epoch {server.epoch}  engine {json.dumps(engine.info())}", flush=True
    )
    try:
        door = _start_http(cfg, endpoint)
    except CommandError:  # the port is taken: stop the service it was to front, then the one line
        server.stop()
        engine.close()
        raise
    watcher = _swap_watcher(args.swap_file, lambda path: server.swap({**cfg.engine, "model": path}).to_dict())
    _wait(stop, server.stats, args.stats_every, watcher)
    if door is not None:
        door.stop()
    server.stop()
    engine.close()
    print(json.dumps(server.stats()), flush=True)
    return 0


def _start_http(cfg: Any, endpoint: str) -> Any:
    """The SimpleTool HTTP door in front of the service at ``endpoint`` when ``cfg.http`` asks for one."""
    if cfg.http is None:
        return None
    from tickcall.agent.http_door import HttpDoor, HttpDoorConfig

    curve = None
    if cfg.curve is not None and cfg.curve.server_secret:
        from tickcall.agent.config import CurveConfig

        # the door is a client of its own server, with the server's key pair (which the server
        # authorises even when curve.client_keys lists who else may connect: agent/security.py)
        curve = CurveConfig(server_public=cfg.curve.server_secret, client_secret=cfg.curve.server_secret)
    from tickcall.commands.errors import CommandError, one_line

    try:
        http = HttpDoorConfig.from_value(cfg.http)
        # the door is one client of the service: more decides in flight than its quota would be refused
        http.max_inflight = min(http.max_inflight, cfg.max_streams_per_client)
        door = HttpDoor(endpoint, http, curve=curve)
        url = door.start()
    except ValueError as exc:  # checked before the engine loaded (_config); kept for API callers
        raise CommandError(f"--http: {one_line(exc)}") from None
    except OSError as exc:  # the port is in use, or the service did not answer the door's hello
        raise CommandError(f"--http: {one_line(exc)}", code=1) from None
    print(f"SimpleTool HTTP API on {url}  (GET /health, POST /v1/function_call)", flush=True)
    return door


class SwapWatcher:
    """Watches ``--swap-file``: a new model folder in it is swapped in by ``swap(path) -> SwapResult
    dict`` in a thread of its own (serving and the watch go on meanwhile); one line per swap."""

    def __init__(self, path: str, swap: Any) -> None:
        self.path = path
        self.swap = swap
        self._seen = self._read()  # what the file says at start is not a request
        self._busy: threading.Thread | None = None

    def _read(self) -> str | None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                return fh.read().strip() or None
        except OSError:
            return None

    def check(self) -> None:
        want = self._read()
        if want is None or want == self._seen or (self._busy is not None and self._busy.is_alive()):
            return
        self._seen = want
        self._busy = threading.Thread(target=self._swap, args=(want,), name="swap", daemon=True)
        self._busy.start()

    def _swap(self, path: str) -> None:
        try:
            r = self.swap(path)
        except Exception as exc:  # the actor died, Ray went away: the line says so
            r = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if r.get("ok"):
            print(
                f"swap: {r['previous']} -> {r['weights']} (warm {r['warm_ms']:.0f} ms, pause "
                f"{r['switch_ms']:.2f} ms, {r['registrations']} registrations)",
                flush=True,
            )
        else:
            print(
                f"swap to {path} failed, {r.get('weights', 'the old weights')} still serving: "
                f"{' '.join(str(r.get('error')).split())}",
                file=sys.stderr,
                flush=True,
            )


def _swap_watcher(path: str | None, swap: Any) -> SwapWatcher | None:
    return None if not path else SwapWatcher(path, swap)


def _wait(stop: threading.Event, stats: Any, every: float, watcher: SwapWatcher | None = None) -> None:
    last = time.monotonic()
    try:
        while not stop.wait(0.5):
            if watcher is not None:
                watcher.check()
            if every > 0 and time.monotonic() - last >= every:
                last = time.monotonic()
                print(json.dumps(stats()), flush=True)
    except KeyboardInterrupt:
        pass


def _run_ray(cfg: Any, stop: threading.Event, every: float, swap_file: str | None = None) -> int:
    import ray

    from tickcall.agent.actor import start_policy_service
    from tickcall.cluster import init_ray

    init_ray(log_to_driver=True)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # ray.init installs its own handler
    try:
        handle, endpoint = start_policy_service(config=cfg)
        info = ray.get(handle.ready.remote())
        print(
            f"policy service actor on {endpoint}  epoch {info['epoch']}  engine {json.dumps(info['engine'])}",
            flush=True,
        )
        door = _start_http(cfg, endpoint)
        watcher = _swap_watcher(swap_file, lambda path: ray.get(handle.swap.remote(path)))
        _wait(stop, lambda: ray.get(handle.stats.remote()), every, watcher)
        if door is not None:
            door.stop()
        print(json.dumps(ray.get(handle.stats.remote())), flush=True)
        ray.kill(handle, no_restart=True)
    finally:
        ray.shutdown()
    return 0
