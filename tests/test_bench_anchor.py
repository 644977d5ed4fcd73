"""``tickcall bench anchor``: the run without the anchor (tickcall alone), and with a stand-in for
SimpleTool's ``rt_server.py`` (a small FastAPI app of ours on its fixed port 8899), so the process
handling and the ratio keys are exercised without vLLM or SimpleTool's repository."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SMALL = ["--requests", "3", "--warmup", "1", "--clients", "2", "--per-client", "2"]

STAND_IN = textwrap.dedent(
    """
    # A stand-in for SimpleTool's rt_server.py (tests only): the same two endpoints on port 8899.
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok", "loaded": True, "model": "stand-in"}

    @app.post("/v1/function_call")
    def function_call(body: dict):
        return {"success": True, "function": "move", "args": {"direction": "up"}, "heads": {},
                "content": None, "latency_ms": 0.1, "error": None}

    uvicorn.run(app, host="127.0.0.1", port=8899, log_level="warning")
    """
)


def _bench(tmp_path: Path, *extra: str) -> tuple[str, dict]:
    out = tmp_path / "anchor.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tickcall.cli", "bench", "anchor", *SMALL, "--json", str(out), *extra],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_tickcall_alone(tmp_path):
    stdout, data = _bench(tmp_path)
    assert (
        "no --simpletool DIR" in stdout and "git clone https://github.com/HaxxorCialtion/SimpleTool" in stdout
    )
    assert (
        data["anchor"] is False and data["request"]["heads"] == 2 and data["request"]["tokens_per_head"] == 32
    )
    for key in ("p50_ms.transformers.zmq", "p90_ms.transformers.http", "throughput_rps.transformers.http_2"):
        assert data[key] > 0
    assert not [k for k in data if k.startswith(("ratio_p50", "throughput_ratio"))]


def test_with_a_stand_in_anchor(tmp_path):
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 8899)) == 0:
            pytest.skip("port 8899 (rt_server.py's own) is in use")
    folder = tmp_path / "simpletool"
    folder.mkdir()
    (folder / "rt_server.py").write_text(STAND_IN)
    stdout, data = _bench(tmp_path, "--simpletool", str(folder))
    assert (
        data["anchor"] is True and data["p50_ms.simpletool"] > 0 and data["throughput_rps.simpletool_2"] > 0
    )
    assert data["ratio_p50.transformers"] == data["p50_ms.transformers.zmq"] / data["p50_ms.simpletool"]
    assert data["ratio_p50_http.transformers"] > 0 and data["throughput_ratio.transformers"] > 0
    assert "ratio_p50.transformers = " in stdout
    with socket.socket() as s:  # the stand-in's process group was ended
        assert s.connect_ex(("127.0.0.1", 8899)) != 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--vllm-option", "enforce_eager=false"], "--vllm-option applies to the vllm backend"),
        (["--backends", "vllm", "--vllm-option", "enforce_eager"], "is not KEY=VALUE"),
    ],
)
def test_vllm_options_are_checked_before_any_work(extra, message):
    """``--vllm-option KEY=VALUE`` reaches tickcall's vLLM engine only; a misplaced or malformed one is one
    line and exit 2 before a model is built or a server started."""
    proc = subprocess.run(
        [sys.executable, "-m", "tickcall.cli", "bench", "anchor", *extra],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr
    assert "work folder" not in proc.stdout
