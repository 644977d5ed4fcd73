"""``tickcall bench fairness`` end to end on the shipped arena model (real service, real ZMQ clients).

No timing thresholds: the figures depend on the machine. What must hold everywhere: both phases ran,
the longest legal turn was found against the service's ``too_long``, every oversized turn was refused
with ``too_long``, and the JSON holds the ratio and the misses the issue asks for.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_fairness_bench_writes_its_figures(tmp_path):
    out = tmp_path / "fairness.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tickcall.cli",
            "bench",
            "fairness",
            "--seconds",
            "1",
            "--oversized-every",
            "2",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["longest_legal_turn_words"] > 10
    assert data["victim_alone"]["decides"] > 0 and data["victim_attacked"]["decides"] > 0
    assert data["p99_ratio"] is not None and data["victim_attacked"]["misses"] >= 0
    assert data["goal"] == {"p99_ratio_max": 1.5, "victim_misses": 0}
    assert data["oversized"]["sent"] > 0 and data["oversized"]["all_too_long"], data["oversized"]
    assert "victim p99 attacked / alone" in r.stdout
    # the service ran with its scheduling defaults: the attacker's maximal turns were prefilled in
    # chunks (the legal ones; every oversized one was refused before any forward pass)
    assert data["prefill_chunk_tokens"] == 32 and data["step_tokens"] == 4096
    assert data["server"]["prefill_chunks"] > 0 and data["server"]["prefill_chunk_failures"] == 0
    assert data["victim_attacked"]["server_ms"]["queue"]["n"] > 0
