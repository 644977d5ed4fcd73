"""The SimpleTool HTTP door (agent/http_door.py): real uvicorn on 127.0.0.1 port 0, real httpx, a real
policy service (ZMQ) behind it. Every request and response field, CORS, bad requests, strict and
lenient assembly, re-registration, batching of concurrent HTTP clients, and ``tickcall serve --http``.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import Raw, scripted_engine
from polling import wait_for
from tickcall.agent.config import ServeConfig
from tickcall.agent.engines import build_engine
from tickcall.agent.http_api import NO_FUNCTION, FCRequest, response_of
from tickcall.agent.http_door import HttpDoor, HttpDoorConfig, host_port
from tickcall.agent.messages import CallReply, Timings, Tokens
from tickcall.agent.server import PolicyServer

from tickcall.bench.anchor import PONG  # the bench's Pong-demo tool: one copy

BODY = {
    "messages": [{"role": "system", "content": "ignored"}, {"role": "user", "content": "Move UP."}],
    "tools": [PONG],
    "environment": ["ball_y=120", "paddle_y=200"],
    "history": ["up", "down"],
}
RESPONSE_KEYS = {"success", "function", "args", "heads", "content", "latency_ms", "error"}


class Door:
    """A policy service on a free port with the HTTP door in front of it."""

    def __init__(self, engine: Any, cfg: ServeConfig | None = None, door_cfg: HttpDoorConfig | None = None):
        self.server = PolicyServer(engine, cfg or ServeConfig(bind="tcp://127.0.0.1:0"))
        self.endpoint = self.server.start()
        self.door = HttpDoor(self.endpoint, door_cfg or HttpDoorConfig(bind="127.0.0.1:0"))
        self.url = self.door.start()

    def post(self, body: Any, **kw: Any) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/function_call", json=body, timeout=30, **kw)

    def close(self) -> None:
        self.door.stop()
        self.server.stop()


@pytest.fixture
def door() -> Iterator[Door]:
    d = Door(build_engine({"backend": "random", "seed": 0}))
    yield d
    d.close()


def test_health(door):
    h = httpx.get(f"{door.url}/health").json()
    assert h["status"] == "ok" and h["loaded"] is True and h["model"] == "random"
    assert h["version"] == "v2-server" and h["assembly"] == "lenient" and h["epoch"] == door.server.epoch


def test_function_call_fields(door):
    r = door.post(BODY)
    assert r.status_code == 200
    d = r.json()
    assert set(d) == RESPONSE_KEYS
    assert d["success"] is True and d["function"] == "move" and d["error"] is None and d["content"] is None
    assert d["args"]["direction"] in ("up", "down", "stay")
    assert d["heads"] == {"function": "move", "arg1": d["args"]["direction"]}
    assert d["latency_ms"] > 0
    # the same tool set again: no new registration (the link caches the handle; the service too)
    assert door.post(BODY).json()["success"] is True
    assert door.door.link_stats["registers"] == 1 and door.server.stats()["registrations"] == 1


def test_optional_fields_and_unknown_ones(door):
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "tools": [PONG],
        "system": "",
        "max_tokens": 8,
        "temperature": 0.7,
        "include_content_head": True,
        "not_a_field": 1,
    }
    d = door.post(body).json()
    assert d["success"] is True and d["content"] is None  # no content head is decoded (documented)
    assert door.post({**body, "messages": []}).json()["success"] is True  # no user message: empty query


def test_cors(door):
    pre = httpx.options(
        f"{door.url}/v1/function_call",
        headers={
            "Origin": "null",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "*"
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "content-type" in pre.headers["access-control-allow-headers"].lower()
    r = door.post(BODY, headers={"Origin": "http://example.test"})
    assert r.headers["access-control-allow-origin"] == "*"
    assert (
        httpx.get(f"{door.url}/health", headers={"Origin": "null"}).headers["access-control-allow-origin"]
        == "*"
    )


@pytest.mark.parametrize(
    "body, where",
    [
        ({"tools": [PONG]}, "messages"),
        ({"messages": [], "tools": []}, "tools"),
        ({"messages": [], "tools": "move"}, "tools"),
        ({"messages": [{"role": "user"}], "tools": [PONG]}, "content"),
        ({"messages": [], "tools": [PONG], "temperature": -1}, "temperature"),
        ({"messages": [], "tools": [PONG], "max_tokens": 0}, "max_tokens"),
        ({"messages": [], "tools": [PONG], "history": "up"}, "history"),
        ({"messages": [], "tools": [PONG], "assembly": "loose"}, "assembly"),
    ],
)
def test_invalid_bodies_are_422_naming_the_field(door, body, where):
    r = door.post(body)
    assert r.status_code == 422
    assert any(where in [str(x) for x in e["loc"]] for e in r.json()["detail"])


def test_not_json_and_oversized(door):
    r = httpx.post(
        f"{door.url}/v1/function_call", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    big = httpx.post(
        f"{door.url}/v1/function_call", content=b" " * (5 << 20), headers={"content-type": "application/json"}
    )
    assert big.status_code == 413 and big.json()["success"] is False and "oversized" in big.json()["error"]


def test_service_refusals_map_to_4xx(door):
    r = door.post({**BODY, "tools": [{"type": "function", "function": {"description": "no name"}}]})
    assert r.status_code == 400 and r.json()["error"].startswith("illegal_tools:")
    huge = {**PONG, "function": {**PONG["function"], "x-limit": 2**70}}  # JSON allows it, msgpack does not
    r = door.post({**BODY, "tools": [huge]})
    assert r.status_code == 400 and r.json()["error"].startswith("malformed:")
    assert door.post(BODY).json()["success"] is True  # the door goes on serving
    r = door.post({**BODY, "template": "v9"})
    assert r.status_code == 400 and "unknown template" in r.json()["error"]
    assert set(r.json()) == RESPONSE_KEYS and r.json()["success"] is False


def test_too_long_turn_is_413():
    d = Door(
        build_engine({"backend": "random", "seed": 0}),
        ServeConfig(bind="tcp://127.0.0.1:0", max_turn_tokens=8),
    )
    try:
        r = d.post({**BODY, "messages": [{"role": "user", "content": "word " * 50}]})
        assert r.status_code == 413 and r.json()["error"].startswith("too_long:")
    finally:
        d.close()


def test_lenient_by_default_strict_on_request():
    """The head ``" Up</arg1>"``: the server's reading (trim, cut the marker, lowercase) is legal;
    strict assembly takes the raw text, which the enum refuses."""
    engine = scripted_engine("ok", ok_args={"direction": " Up</arg1>"})
    d = Door(engine)
    try:
        lenient = d.post(BODY).json()
        assert lenient["success"] is True and lenient["args"] == {"direction": "up"}
        assert lenient["heads"]["arg1"] == "Up"  # heads as the server hands them: cleaned
        strict = d.post({**BODY, "assembly": "strict"}).json()
        assert strict["success"] is False and strict["function"] == "move" and "direction" in strict["error"]
        assert d.server.stats()["registrations"] == 2  # one per (tool set, assembly)
    finally:
        d.close()
    d = Door(
        scripted_engine("ok", ok_args={"direction": " Up</arg1>"}),
        door_cfg=HttpDoorConfig(bind="127.0.0.1:0", assembly="strict"),
    )
    try:
        assert d.post(BODY).json()["success"] is False
        assert d.post({**BODY, "assembly": "lenient"}).json()["success"] is True
    finally:
        d.close()


def test_no_function_reads_as_the_server_says():
    reply = CallReply(
        id=1,
        epoch="e",
        tick=1,
        handle="h",
        call=None,
        legal=False,
        reason="no function was chosen (<function> head is null)",
        heads={"function": "<|null|>", "arg1": "<|null|>"},
        tokens=Tokens(prompt=1, cached=0, generated={}),
        timings_ms=Timings(queue=0, prefill=0, decode=0, assemble=0, engine=0, server=0),
        batch=1,
        sent_ms=None,
    )
    status, out = response_of(reply, 1.5)
    assert status == 200 and out.success is False and out.error == NO_FUNCTION
    assert out.heads == {"function": "", "arg1": ""} and out.function is None and out.latency_ms == 1.5
    assert FCRequest(messages=[], tools=[PONG]).query() == ""


def test_evicted_tool_set_is_registered_again():
    d = Door(
        build_engine({"backend": "random", "seed": 0}),
        ServeConfig(bind="tcp://127.0.0.1:0", max_registrations_per_client=1),
    )
    try:
        other = {**PONG, "function": {**PONG["function"], "name": "steer"}}
        assert d.post(BODY).json()["success"] is True
        assert d.post({**BODY, "tools": [other]}).json()["function"] == "steer"  # releases the first set
        assert d.post(BODY).json()["function"] == "move"
        assert d.door.link_stats["reregistered"] == 1
    finally:
        d.close()


class GatedEngine:
    """Delegates to ``inner``; its first ``decide_batch`` waits for ``release`` (so others queue)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.release = threading.Event()
        self.entered = threading.Event()  # the first decide_batch is holding the engine
        self._first = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def decide_batch(self, requests: Sequence[tuple[str, Any]]) -> list[Any]:
        if self._first:
            self._first = False
            self.entered.set()
            self.release.wait(30)
        return self.inner.decide_batch(requests)


def test_concurrent_clients_are_batched():
    """8 HTTP clients at once: the first decide holds the engine, the other 7 queue and are decoded
    together in one batch (the service's stats show it); every client gets its call."""
    engine = GatedEngine(build_engine({"backend": "random", "seed": 0}))
    d = Door(engine)
    probe = Raw(d.endpoint)

    def queued() -> int:
        probe.request("ping")
        pong = probe.recv()
        return -1 if pong is None else pong["queued"]

    try:

        def ask(i: int) -> Any:
            return d.post({**BODY, "messages": [{"role": "user", "content": f"client {i}"}]})

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            # the first alone, so it holds the engine before the others arrive (else, on a busy
            # machine, a second one may join its batch before the engine thread takes it)
            futures = [pool.submit(ask, 0)]
            assert engine.entered.wait(20), "the first decide never reached the engine"
            futures += [pool.submit(ask, i) for i in range(1, 8)]
            assert wait_for(lambda: queued() == 7, 20), "7 decides never queued behind the first"
            engine.release.set()
            answers = [f.result(30) for f in futures]
        assert all(a.status_code == 200 and a.json()["success"] for a in answers)
        stats = d.server.stats()
        assert stats["decided"] == 8 and stats["batch_sizes"] == {1: 1, 7: 1}
        assert d.door.link_stats["registers"] == 1  # concurrent first requests registered once
    finally:
        engine.release.set()
        probe.close()
        d.close()


def test_exposed_bind_refused_without_insecure():
    with pytest.raises(ValueError, match="refusing to bind"):
        HttpDoor("tcp://127.0.0.1:1", HttpDoorConfig(bind="0.0.0.0:0"))
    HttpDoor(
        "tcp://127.0.0.1:1", HttpDoorConfig(bind="0.0.0.0:0", allow_insecure=True)
    )  # allowed, not started
    with pytest.raises(ValueError, match="HOST:PORT"):
        host_port("8899")
    with pytest.raises(ValueError, match="assembly"):
        HttpDoorConfig(assembly="loose")
    assert host_port("[::1]:80") == ("::1", 80)


def test_cli_serve_http(tmp_path: Path):
    """``tickcall serve --http``: the line it prints names the URL; the door answers; SIGTERM ends it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tickcall.cli",
            "serve",
            "--backend",
            "random",
            "--bind",
            "tcp://127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--http-assembly",
            "strict",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        url = None
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("SimpleTool HTTP API on "):
                url = line.split()[4]
                break
        assert url, "no HTTP door line"
        assert httpx.get(f"{url}/health").json()["assembly"] == "strict"
        assert httpx.post(f"{url}/v1/function_call", json=BODY, timeout=30).json()["success"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_cli_serve_http_behind_curve_with_authorised_clients_only(tmp_path: Path):
    """A CURVE service that lists its clients (``curve.client_keys``, as configs/serve-curve.yaml): the
    door, a client of its own server, connects with the server's key pair and answers; a client key
    that is not listed is still kept out (it used to be the door that was kept out: 30 s, then a line
    blaming the port)."""
    from tickcall.agent.client import PolicyClient, PolicyTimeout
    from tickcall.agent.security import generate_keys

    keys = generate_keys(tmp_path / "keys", ("server", "client", "stranger"))
    (tmp_path / "clients").mkdir()
    (tmp_path / "clients" / "client.key").write_bytes(keys["client"].with_suffix(".key").read_bytes())
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(
        f"engine: {{backend: random}}\nbind: tcp://127.0.0.1:0\n"
        f"curve: {{server_secret: {keys['server']}, client_keys: {tmp_path / 'clients'}}}\n"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tickcall.cli", "serve", "--config", str(cfg), "--http", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        endpoint = url = None
        for line in proc.stdout:
            if line.startswith("policy service on "):
                endpoint = line.split()[3]
            if line.startswith("SimpleTool HTTP API on "):
                url = line.split()[4]
                break
        assert endpoint and url, "no HTTP door line"
        assert httpx.post(f"{url}/v1/function_call", json=BODY, timeout=30).json()["success"] is True
        curve = {"server_public": str(keys["server"].with_suffix(".key"))}
        stranger = PolicyClient(
            endpoint, timeout_ms=500, curve={**curve, "client_secret": str(keys["stranger"])}
        )
        try:
            with pytest.raises(PolicyTimeout):
                stranger.hello()
        finally:
            stranger.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


class RecordingEngine:
    """Delegates to ``inner``; keeps every (handle, turn) it is asked to decide."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seen: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def decide_batch(self, requests: Sequence[tuple[str, Any]]) -> list[Any]:
        self.seen.extend(requests)
        return self.inner.decide_batch(requests)


def test_the_engine_gets_the_servers_prompt_byte_for_byte():
    """A bare tool, 8 history items, an environment: the engine prefills exactly what SimpleTool's
    v2 server would send (tool as given, default system for "", last 6 items, environment line)."""
    bare = dict(PONG["function"])
    engine = RecordingEngine(build_engine({"backend": "random", "seed": 0}))
    d = Door(engine)
    try:
        body = {**BODY, "tools": [bare], "system": "", "history": [f"h{i}" for i in range(8)]}
        assert d.post(body).json()["success"] is True
        [(handle, turn)] = engine.seen
        reg = engine.inner.registration(handle)
        assert reg.template.name == "v2-server"
        default = (
            "You are a real-time function calling assistant. Convert user commands into function calls "
            "using the available tools."
        )
        tools_line = json.dumps(bare, ensure_ascii=False)
        assert reg.prefix_text + reg.template.suffix(turn) == (
            f"<|im_start|>system\n{default}\n\n## Available Tools:\n\n{tools_line}\n<|im_end|>\n"
            "<|im_start|>user\nhistory: [h2, h3, h4, h5, h6, h7]\n\n"
            'environment: ["ball_y=120", "paddle_y=200"]\nMove UP.<|im_end|>\n<|im_start|>assistant\n'
        )
    finally:
        d.close()
