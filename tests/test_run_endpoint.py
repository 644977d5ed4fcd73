"""``tickcall run --endpoint URL``: the driver says what it waits for, and gives up in one line.

An endpoint nobody serves is found by the driver within ``--connect-timeout`` seconds, before Ray or any
actor starts (ZeroMQ connects lazily, so silence is the only sign). A live ``tickcall serve`` (a real
subprocess, no-op engine) passes the same check and the run goes on to its report.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tickcall.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def test_unreachable_endpoint_is_one_line_after_a_bounded_wait(tmp_path, capsys):
    import ray

    endpoint = _free_endpoint()
    report = tmp_path / "r"
    argv = [
        "run",
        "--env",
        "CartPole-v1",
        "--backend",
        "noop",
        "--duration",
        "1",
        "--endpoint",
        endpoint,
        "--connect-timeout",
        "0.5",
        "--report",
        str(report),
    ]
    assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines[0].startswith(f"waiting for the policy service at {endpoint} (up to 0.5 s"), lines
    assert len(lines) == 2, lines
    assert lines[1].startswith(f"tickcall run: no policy service answered at {endpoint} within 0.5 s"), lines
    assert "tickcall serve --bind" in lines[1] and "--connect-timeout" in lines[1]
    assert not ray.is_initialized() and not report.exists()  # nothing started, no empty folder left


def test_bad_connect_timeout_is_refused(capsys):
    assert main(["run", "--backend", "noop", "--connect-timeout", "0"]) == 2
    assert "connect_timeout_s" in capsys.readouterr().err


@pytest.mark.slow
def test_run_against_a_live_serve(tmp_path):
    endpoint = _free_endpoint()
    serve = subprocess.Popen(
        [sys.executable, "-m", "tickcall.cli", "serve", "--backend", "noop", "--bind", endpoint],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stdout.readline().startswith(f"policy service on {endpoint}")
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "tickcall.cli",
                "run",
                "--env",
                "CartPole-v1",
                "--backend",
                "noop",
                "--duration",
                "2",
                "--endpoint",
                endpoint,
                "--report",
                str(tmp_path / "r"),
                "--no-plots",
                "--quiet",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        assert f"waiting for the policy service at {endpoint}" in run.stderr
        rep = json.loads((tmp_path / "r" / "report.json").read_text())
        assert rep["ticks"] > 0 and rep["outcomes"]["ok"] > 0
    finally:
        serve.terminate()
        serve.wait(timeout=30)
