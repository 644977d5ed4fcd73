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


def test_shipped_serve_configs_still_load():
    from tickcall.agent.config import ServeConfig

    for name in ("configs/serve.yaml", "configs/serve-curve.yaml"):
        ServeConfig.from_yaml(name)
    ServeConfig(bind="tcp://127.0.0.1:0")
    ServeConfig(bind="tcp://[::1]:5555", engine={"backend": "factory", "factory": "m:f"})
    ServeConfig(bind="ipc:///tmp/x.sock", gather_ms=0, num_gpus=0.5)
