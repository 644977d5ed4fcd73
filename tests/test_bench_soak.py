"""``tickcall bench soak`` runs end to end (a real ``tickcall serve`` in its own process, real ZMQ
clients sending mixed hostile traffic) and writes its figures; the server survives. Memory goals
are for the 10-minute run recorded in docs/benchmarks.md, not asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_soak_bench_writes_its_figures_and_the_server_survives(tmp_path):
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, "-m", "tickcall.cli", "bench", "soak", "--minutes", "0.15",
                           "--sample-s", "1", "--clients", "2", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["server_alive"] and len(data["rss_mb"]) >= 5
    assert all(data["messages"][k] > 0 for k in ("decide", "garbage", "too_long", "register"))
