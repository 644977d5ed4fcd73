"""``tickcall serve`` from the command line: standalone service, probe, CURVE keys, bind refusal."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

from tickcall.agent.client import PolicyClient

TOOLS = [{"name": "wait", "description": "Do nothing.", "parameters": {"type": "object", "properties": {}}}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tickcall(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tickcall.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_serve_probe_and_sigterm(tmp_path):
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tickcall.cli", "serve", "--config", "configs/serve.yaml", "--bind", endpoint],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"policy service on {endpoint}"), (
            line,
            proc.stderr.read() if proc.poll() else "",
        )
        c = PolicyClient(endpoint, timeout_ms=10_000)
        c.register(TOOLS)
        r = c.decide("x", tick_id=1)
        assert r.type == "call" and r.ok and r.call.name == "wait"
        c.close()
        probe = _tickcall("serve", "--probe", endpoint)
        assert probe.returncode == 0 and '"backend": "noop"' in probe.stdout
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0 and '"reply_call": 1' in out  # final counters printed on exit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_probe_of_nothing_fails_cleanly():
    r = _tickcall("serve", "--probe", f"tcp://127.0.0.1:{_free_port()}", "--timeout-ms", "200")
    assert r.returncode == 1 and "no reply to hello" in r.stderr


def test_gen_keys_and_exposed_bind_refused(tmp_path):
    r = _tickcall("serve", "--gen-keys", str(tmp_path))
    assert r.returncode == 0
    assert (tmp_path / "server.key").exists() and (tmp_path / "server.key_secret").exists()
    assert (tmp_path / "client.key_secret").exists()
    r = _tickcall("serve", "--bind", "tcp://0.0.0.0:5999")
    assert r.returncode != 0 and "refusing to bind" in r.stderr
