"""Every bad ``tickcall serve --config FILE`` fails with one clear stderr line, exit 2, no traceback.

Each case writes a serve YAML into ``tmp_path`` and runs ``tickcall serve --config FILE`` as a real
subprocess (the way a user meets it). The line names the setting and what to write instead
(agent/config_check.py); settings are checked before any engine or socket is made.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = [
    # (YAML text, phrases the one line must hold: the problem, then the fix)
    ("max_batch: abc\n", ["max_batch 'abc' is not a whole number", "e.g. max_batch: 32"]),
    ("gather_ms: abc\n", ["gather_ms 'abc' is not a number", "e.g. gather_ms: 1"]),
    ("gather_ms: 500\n", ["gather_ms 500 is outside 0-100", "pick a value"]),
    ("max_batch: [1\n", ["is not valid YAML at line 2", "fix the syntax"]),
    ("- a\n- b\n", ["a serve config is a YAML mapping", "not a list"]),
    ("bogus: 1\n", ["unknown serve config keys ['bogus']", "known: allow_insecure"]),
    ("curve:\n  foo: keys/x\n", ["curve has unknown keys ['foo']", "known: server_secret"]),
    ("curve: 5\n", ["curve 5 is not a mapping", "--gen-keys"]),
    (
        "max_message_bytes: 1e9\n",
        ["max_message_bytes '1e9' is not a whole number (YAML reads 1e9 as text)", "write digits"],
    ),
    ("max_message_bytes: 10\n", ["max_message_bytes 10 is too small", "use 1024 or more"]),
    ("engine:\n  backend: bogus\n", ["engine.backend 'bogus' is unknown", "choose from noop, random"]),
    ("engine:\n  backend: transformers\n", ["needs engine.model, a model folder", "backend noop or random"]),
    ("engine: 5\n", ["engine 5 is not a mapping", "engine: {backend: noop}"]),
    ("bind: garbage\n", ["bind 'garbage' is not a ZMQ endpoint", "tcp://127.0.0.1:5555"]),
    ("bind: tcp://127.0.0.1\n", ["is not a tcp endpoint (tcp://HOST:PORT", "tcp://127.0.0.1:5555"]),
    ("bind: tcp://127.0.0.1:99999\n", ["is not a tcp endpoint", "PORT 0-65535"]),
    ("poll_ms: 0\n", ["poll_ms 0 is too small", "use 1 or more"]),
    ("allow_insecure: maybe\n", ["allow_insecure 'maybe' is not true or false", "allow_insecure: true"]),
    ("max_restarts: -2\n", ["max_restarts -2 is too small", "use -1 or more"]),
    # valid shape, refused when used: the bind policy's own line (not the endpoint check's)
    (
        "bind: tcp://10.1.2.3:5555\n",
        ["refusing to bind tcp://10.1.2.3:5555 without authentication", "Bind 127.0.0.1"],
    ),
    # the bind policy comes before the engine: a model that would fail to load is never reached
    (
        "bind: tcp://10.1.2.3:5555\nengine: {backend: transformers, model: /nonexistent}\n",
        ["refusing to bind tcp://10.1.2.3:5555", "Bind 127.0.0.1"],
    ),
    # the SimpleTool HTTP door's settings (agent/http_door.py HttpDoorConfig), checked with the others
    ("http: garbage\n", ["http bind 'garbage': expected HOST:PORT", "e.g. 127.0.0.1:8899"]),
    ("http: 5\n", ["http 5 is not HOST:PORT or a mapping", "e.g. http: 127.0.0.1:8899"]),
    ("http: {bogus: 1}\n", ["unknown http keys ['bogus']", "known: bind"]),
    ("http: {max_inflight: 0}\n", ["http.max_inflight 0 is too small", "use 1 or more"]),
    ("http: {timeout_s: abc}\n", ["http.timeout_s 'abc' is not a number", "http.timeout_s: 30"]),
    ("http: {allow_insecure: maybe}\n", ["http.allow_insecure 'maybe' is not true or false", "true"]),
    ("http: {template: zz}\n", ["http.template 'zz' is not one of", "leave it out"]),
    (
        "http: '0.0.0.0:8899'\nengine: {backend: transformers, model: /nonexistent}\n",
        ["refusing to bind the HTTP door to 0.0.0.0:8899", "HTTP carries no authentication", "--insecure"],
    ),
]


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tickcall.cli", "serve", *args], capture_output=True, text=True, timeout=60
    )


def _one_line(result: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tickcall serve: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("text,phrases", CASES, ids=[c[0].strip().replace("\n", " ") for c in CASES])
def test_bad_serve_config_is_one_line(tmp_path, text, phrases):
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    line = _one_line(_serve("--config", str(path)))
    for phrase in phrases:
        assert phrase in line, line


def test_missing_config_file_is_one_line(tmp_path):
    line = _one_line(_serve("--config", str(tmp_path / "nope.yaml")))
    assert "cannot read" in line and "configs/serve.yaml is an example" in line


def test_bad_backend_flag_is_one_line():
    line = _one_line(_serve("--backend", "bogus"))
    assert "engine.backend 'bogus' is unknown" in line


@pytest.mark.parametrize(
    "flags,phrases",
    [
        (["--http", "garbage"], ["http bind 'garbage': expected HOST:PORT"]),
        (["--http", "127.0.0.1:99999"], ["expected HOST:PORT (PORT 0-65535)"]),
        (["--http", "0.0.0.0:8899"], ["refusing to bind the HTTP door to 0.0.0.0:8899", "--insecure"]),
        (["--http-template", "v2"], ["--http-template sets the HTTP door, which is off", "--http HOST:PORT"]),
        (["--http", "127.0.0.1:0", "--http-template", "zz"], ["http.template 'zz' is not one of"]),
    ],
)
def test_bad_http_flags_are_one_line_before_the_engine(flags, phrases):
    """``--http`` mistakes are refused before the engine is built (its model folder does not exist here,
    so a check made after the load would print the model's error instead)."""
    line = _one_line(_serve("--backend", "transformers", "--model", "/nonexistent", *flags))
    for phrase in phrases:
        assert phrase in line, line


def test_http_port_in_use_is_one_line():
    """A taken HTTP port: one line naming the bind and the fix, exit 1, the service stopped with it."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve("--backend", "noop", "--bind", "tcp://127.0.0.1:0", "--http", f"127.0.0.1:{port}")
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"tickcall serve: --http: the HTTP door cannot bind 127.0.0.1:{port}"), lines
    assert "pick a free port" in lines[0]


def test_insecure_covers_the_http_door(tmp_path):
    """The service's allow_insecure (or --insecure) lets the door bind an exposed address too; the
    config keeps the door's settings as a checked mapping."""
    import argparse

    from tickcall.agent.config import ServeConfig

    from tickcall.commands.serve import _config, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = _config(parser.parse_args(["--backend", "noop", "--http", "0.0.0.0:0", "--insecure"]))
    assert cfg.http["bind"] == "0.0.0.0:0" and cfg.http["allow_insecure"] is True
    with pytest.raises(ValueError, match="refusing to bind the HTTP door"):
        _config(parser.parse_args(["--backend", "noop", "--http", "0.0.0.0:0"]))
    assert ServeConfig(http="127.0.0.1:8899").http == {**ServeConfig(http={}).http, "bind": "127.0.0.1:8899"}


def test_shipped_serve_configs_still_load():
    from tickcall.agent.config import ServeConfig

    for name in ("configs/serve.yaml", "configs/serve-curve.yaml"):
        ServeConfig.from_yaml(name)
    ServeConfig(bind="tcp://127.0.0.1:0")
    ServeConfig(bind="tcp://[::1]:5555", engine={"backend": "factory", "factory": "m:f"})
    ServeConfig(bind="ipc:///tmp/x.sock", gather_ms=0, num_gpus=0.5)
