"""The SimpleTool HTTP door of the policy service: ``GET /health`` and ``POST /v1/function_call``.

SimpleTool's browser demos (and pages written against its API) call a FastAPI server; this door
answers them from a running policy service (``agent.server.PolicyServer`` or its Ray actor) through
``agent.http_link.ServiceLink``, so every HTTP request is a ``decide`` batched with all other clients'.
FastAPI on uvicorn, in a thread of its own (``HttpDoor``), or from the command line::

    tickcall serve --backend transformers --model DIR --http 127.0.0.1:8899

Defaults (docs/simpletool-compat.md): the prompt template is the engine's training-time template's
server variant (``v1`` -> ``v1-server``, ``v2`` -> ``v2-server``, as SimpleTool's servers build it;
``compact`` stays ``compact``); heads are assembled ``lenient`` (the servers' readings, then the
schema), ``strict`` on request (``"assembly": "strict"`` in the body, or the door's setting).
CORS is open to every origin (pages opened from disk have the origin ``null``), without credentials.

Security: the door binds 127.0.0.1 unless told otherwise; HTTP has no CURVE, so a bind that is not
loopback (``agent.security.is_local_endpoint``) is refused unless ``allow_insecure`` (a trusted
network). Request bodies are JSON validated by pydantic (``agent.http_api``): 422 with the field at
fault; bodies over ``max_body_bytes`` get 413 before they are read. Nothing is ever unpickled.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

from tickcall.agent import config_check as check
from tickcall.agent.config import CurveConfig
from tickcall.agent.http_api import FCRequest, FCResponse, response_of
from tickcall.agent.http_link import ServiceLink, ServiceUnavailable
from tickcall.agent.security import check_http_bind
from tickcall.models.assembly import ASSEMBLY_MODES
from tickcall.models.format import SERVER_VARIANTS, TEMPLATES

DEFAULT_HTTP_BIND = "127.0.0.1:8899"


@dataclass
class HttpDoorConfig:
    """The door's settings (``ServeConfig.http`` holds them as a mapping; ``--http`` sets ``bind``).

    ``bind``: ``HOST:PORT`` (port 0: any free port). ``template``: the prompt template for every
    request that names none (None: the server variant of the engine's default). ``assembly``:
    ``lenient`` (default) or ``strict``. ``max_inflight``: decides on the wire at once (keep it at or
    under the service's ``max_streams_per_client``). ``timeout_s``: a decide unanswered this long gets
    504. ``max_body_bytes``: larger bodies get 413."""

    bind: str = DEFAULT_HTTP_BIND
    template: str | None = None
    assembly: str = "lenient"
    allow_insecure: bool = False
    max_inflight: int = 16
    timeout_s: float = 30.0
    max_body_bytes: int = 4 << 20

    def __post_init__(self) -> None:
        """Check every field's type and range; ValueError names the field and what to write (one line)."""
        host_port(self.bind)
        if self.template is not None and self.template not in TEMPLATES:
            raise ValueError(
                f"http.template {self.template!r} is not one of {', '.join(TEMPLATES)}; "
                "leave it out for the server variant of the model's template"
            )
        if self.assembly not in ASSEMBLY_MODES:
            raise ValueError(
                f"http.assembly must be one of {', '.join(ASSEMBLY_MODES)}, not {self.assembly!r}"
            )
        check.check_bool("http.allow_insecure", self.allow_insecure)
        check.check_int("http.max_inflight", self.max_inflight, 1, 16)
        check.check_int("http.max_body_bytes", self.max_body_bytes, 1, 4 << 20)
        check.check_number("http.timeout_s", self.timeout_s, 0.001, 3600, 30)

    @classmethod
    def from_value(cls, value: Any) -> HttpDoorConfig:
        """From ``ServeConfig.http``: a mapping of these fields, or a bare ``HOST:PORT`` string."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(bind=value)
        if not isinstance(value, dict):
            raise ValueError(
                f"http {value!r} is not HOST:PORT or a mapping of {', '.join(f.name for f in fields(cls))}; "
                f"write e.g. http: {DEFAULT_HTTP_BIND}"
            )
        unknown = sorted(str(key) for key in set(value) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown http keys {unknown}; known: {', '.join(f.name for f in fields(cls))}")
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def host_port(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port). ValueError when it is not one."""
    host, sep, port = str(bind).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"http bind {bind!r}: expected HOST:PORT (PORT 0-65535), e.g. {DEFAULT_HTTP_BIND}")
    return (host[1:-1] if host.startswith("[") and host.endswith("]") else host), int(port)


def default_template(engine_info: dict[str, Any]) -> str:
    """The server variant of the engine's default template (what SimpleTool's demos get today)."""
    name = str(engine_info.get("default_template") or "v2")
    return SERVER_VARIANTS.get(name, name)


def create_app(
    endpoint: str, config: HttpDoorConfig | None = None, *, curve: CurveConfig | None = None
) -> Any:
    """The FastAPI application of the door, linked to the policy service at ``endpoint`` (ZMQ)."""
    from fastapi import FastAPI, Request
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import JSONResponse

    cfg = config or HttpDoorConfig()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ARG001 - FastAPI's signature
        link = ServiceLink(endpoint, curve=curve, max_inflight=cfg.max_inflight, timeout_s=cfg.timeout_s)
        state["link"] = link
        try:
            await link.start()
            yield
        finally:
            await link.close()

    app = FastAPI(title="tickcall SimpleTool door", lifespan=lifespan)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    app.state.door = state

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > cfg.max_body_bytes):
            return JSONResponse(
                FCResponse(
                    success=False, error=f"oversized: body over {cfg.max_body_bytes} bytes"
                ).model_dump(),
                status_code=413,
            )
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        link: ServiceLink = state["link"]
        engine = dict(link.welcome.engine) if link.welcome else {}
        return {
            "status": "ok",
            "loaded": link.welcome is not None,
            "model": str(engine.get("model") or engine.get("backend") or ""),
            "version": cfg.template or default_template(engine),
            "assembly": cfg.assembly,
            "backend": engine.get("backend"),
            "epoch": link.epoch,
            "server": "tickcall",
        }

    @app.post("/v1/function_call", response_model=FCResponse)
    async def function_call(body: FCRequest) -> Any:
        t0 = time.perf_counter()
        link: ServiceLink = state["link"]
        engine = dict(link.welcome.engine) if link.welcome else {}
        template = body.template or cfg.template or default_template(engine)
        assembly = body.assembly or cfg.assembly
        try:
            reply = await link.decide(body.tools, body.system, template, assembly, body.wire_turn())
        except (OverflowError, TypeError, ValueError) as exc:  # not msgpack-encodable (ints over 64 bits)
            err = FCResponse(success=False, error=f"malformed: {exc}"[:300])
            return JSONResponse(err.model_dump(), status_code=400)
        except ServiceUnavailable as exc:
            err = FCResponse(
                success=False, latency_ms=(time.perf_counter() - t0) * 1e3, error=f"unavailable: {exc}"
            )
            return JSONResponse(err.model_dump(), status_code=504)
        status, out = response_of(reply, (time.perf_counter() - t0) * 1e3)
        return out if status == 200 else JSONResponse(out.model_dump(), status_code=status)

    return app


class HttpDoor:
    """The door on uvicorn in a daemon thread: ``start()`` returns its base URL, ``stop()`` ends it."""

    def __init__(
        self, endpoint: str, config: HttpDoorConfig | None = None, *, curve: CurveConfig | None = None
    ) -> None:
        self.config = config or HttpDoorConfig()
        self.endpoint = endpoint
        self.curve = curve
        host, port = host_port(self.config.bind)
        # HTTP carries no CURVE: a bind other than loopback needs allow_insecure (agent/security.py)
        check_http_bind(host, port, self.config.allow_insecure)
        self._host, self._port = host, port
        self._server: Any = None
        self._sock: socket.socket | None = None
        self._app: Any = None
        self._thread: threading.Thread | None = None
        self.url: str | None = None

    def start(self, timeout_s: float = 30.0) -> str:
        """Bind and serve; returns ``http://HOST:PORT`` (port 0 resolved). Raises OSError on failure."""
        import uvicorn

        # bound here, not by uvicorn: a port in use is this OSError at once, not a log line of
        # uvicorn's thread followed by a wait
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError as exc:
            sock.close()
            raise OSError(
                f"the HTTP door cannot bind {self.config.bind}: {exc.strerror or exc}; pick a free port "
                "(port 0 takes any)"
            ) from None
        self._sock = sock
        app = create_app(self.endpoint, self.config, curve=self.curve)
        self._app = app
        config = uvicorn.Config(
            app, host=self._host, port=self._port, log_level="warning", access_log=False, lifespan="on"
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="tickcall-http", daemon=True
        )
        self._thread.start()
        end = time.monotonic() + timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > end:
                self.stop()
                raise OSError(
                    f"the HTTP door on {self.config.bind} got no answer to its hello from the policy "
                    f"service at {self.endpoint} within {timeout_s:g} s; check the service runs there "
                    "(and, with CURVE, that the door has the server's keys)"
                )
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @property
    def link_stats(self) -> dict[str, int]:
        """The link's counters (``registers``, ``reregistered``, ``epoch_changes``)."""
        link = self._app.state.door.get("link") if self._app is not None else None
        return dict(link.stats) if link is not None else {}
