"""``tickcall bench asyncfc`` runs from the CLI and writes the documented keys (no timing asserted)."""

from __future__ import annotations

import json

from tickcall.bench.asyncfc import measure
from tickcall.cli import main


def test_bench_cli_writes_the_documented_keys(tmp_path, capsys):
    out = tmp_path / "asyncfc.json"
    rc = main(["bench", "asyncfc", "--seconds", "0.4", "--actuator-ms", "30", "--work-ms", "1",
               "--modes", "sync,async", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    for mode in ("sync", "async"):
        r = data[mode]
        assert {"achieved_hz", "misses", "ticks", "work_ms", "dispatch_us", "calls"} <= set(r)
        assert r["ticks"] == 6 and r["ledger_balanced"] is True
        # every tick's call is accounted for: applied, superseded, or cancelled at shutdown
        assert sum(r["calls"].values()) + r["in_flight_at_end"] == r["ticks"]
    assert data["sync"]["calls"]["done"] == 6  # sync waits for each call
    assert "achieved Hz" in capsys.readouterr().out


def test_measure_process_mode_runs_the_actuator_in_a_child():
    r = measure("async_cpu_process", hz=16, seconds=0.3, actuator_ms=20, work_ms=1)
    assert r["ticks"] == 5 and r["ledger_balanced"]
    assert r["calls"]["done"] >= 1
