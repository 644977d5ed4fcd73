"""``tickcall bench service-cost`` end to end (real service and echo subprocesses, real ZMQ sockets),
and the observation text the service renders from the wire.

No timing thresholds: the figures depend on the machine and its load. What must hold everywhere: every
decide sent on every path got exactly one reply, a legal call; batch 1 is decoded one by one and batch 64
in batches of more than one; the service's CPU was measured (its process and its I/O and engine threads);
the JSON holds the keys the benchmarks page reads. ``--baseline-src`` is pointed at this checkout, so
the source-tree layout path runs too.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tickcall.agent import protocol as P
from tickcall.models.prompt_text import render_observation

from tickcall.bench import service_cost

ROOT = Path(__file__).resolve().parent.parent
ROUNDS_1, ROUNDS_64 = 30, 3


def _bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tickcall.cli", "bench", "service-cost", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_service_cost_bench_accounts_for_every_decide(tmp_path):
    out = tmp_path / "cost.json"
    prof = tmp_path / "prof"
    r = _bench(
        "--rounds", str(ROUNDS_1), "--rounds-64", str(ROUNDS_64), "--block", "10",
        "--baseline-src", str(ROOT), "--profile", str(prof), "--json", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    for key in ("machine", "cpu_model", "nproc", "engine", "rounds", "loadavg_before", "loadavg_after",
                "payload_bytes", "rows", "profiles"):  # fmt: skip
        assert key in data, key
    assert data["cpu_model"] and data["nproc"] >= 1 and data["engine"] == "instant"
    paths = ["echo", "service (bare DEALER)", "service (PolicyClient)", "baseline service (bare DEALER)",
             "baseline service (PolicyClient)"]  # fmt: skip
    rows = {(row["path"], row["batch"]): row for row in data["rows"]}
    assert set(rows) == {(p, b) for p in paths for b in (1, 64)}
    for (path, batch), row in rows.items():
        rounds = ROUNDS_1 if batch == 1 else ROUNDS_64
        assert row["rounds"] == rounds and row["decides"] == rounds * batch, row
        assert row["replies"] == row["decides"] == row["calls"] and row["errors"] == 0, row
        assert row["round_ms"]["n"] == rounds and row["round_ms"]["p90"] >= row["round_ms"]["p50"] > 0
        assert row["service_cpu_ms"] > 0 and row["io_cpu_ms"] > 0 and row["client_cpu_ms"] >= 0
        assert row["service_cpu_ms"] >= row["io_cpu_ms"] + (row["engine_cpu_ms"] or 0.0) * 0.999
        assert math.isfinite(row["cpu_ratio_vs_echo"]) and math.isfinite(row["wall_ratio_vs_echo"])
        if path == "echo":
            assert row["engine_cpu_ms"] is None and row["mean_batch"] is None
            assert row["cpu_ratio_vs_echo"] == pytest.approx(1.0)
        else:  # the service's replies say how many decides their batch held
            assert row["engine_cpu_ms"] > 0
            if batch == 1:
                assert row["mean_batch"] == 1.0
            else:
                assert 1.0 < row["mean_batch"] <= 64.0, row
    for batch in ("1", "64"):  # the profiles show the service's own functions
        text = Path(data["profiles"][batch]).read_text()
        assert "server.py" in text and "_drain" in text
        assert Path(data["profiles"][batch]).with_suffix(".prof").is_file()
    assert "batch 64: CPU per decide" in r.stdout and "load average" in r.stdout


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--baseline-src", "/nonexistent/tree"], "is not a folder"),
        (["--baseline-src", "{tmp}"], "not a tickcall source tree"),
        (["--rounds", "0"], "must be 1 or more"),
    ],
)
def test_bad_input_is_one_line(tmp_path, argv, words):
    """Refused before any subprocess starts, with one line (the CLI prints a SystemExit's text)."""
    parser = argparse.ArgumentParser()
    service_cost.add_arguments(parser)
    args = parser.parse_args([a.replace("{tmp}", str(tmp_path)) for a in argv])
    with pytest.raises(SystemExit) as exc:
        service_cost.run(args)
    message = str(exc.value.code)
    assert message.startswith("tickcall bench service-cost: ") and words in message
    assert "\n" not in message


OBS_VALUES = [
    0, 1, -1, 7, 2**63 - 1, -(2**63), 10**30, True, False, None, "", "N", "a b", "x=y",
    0.0, -0.0, 0.25, -0.25, 1e-05, -1e-05, -0.0004, 0.0005, -0.0005, 12.3456, -3.0, 1e300, -1e300,
    5e-324, 123456789.987654321,
    np.float32(0.5), np.float64(-2.25), np.int64(3), np.bool_(True),  # only a WireTurn built by hand
]  # fmt: skip


@pytest.mark.parametrize("value", OBS_VALUES, ids=repr)
def test_wire_observation_text_is_prompt_texts(value):
    """The service renders wire observations by exact type; the text is render_observation's."""
    obs = {"k": value, "z": -1.5}
    assert P.format_observation(obs) == render_observation(obs)
    assert P.to_turn(P.WireTurn(observation=obs)).query == render_observation(obs)


def test_wire_observation_text_keeps_the_senders_order():
    obs = {"z": 1, "a": 2.5, "m": "x", "b": None, "c": False}
    assert P.format_observation(obs) == "z=1 a=+2.500 m=x b=null c=false" == render_observation(obs)
    assert P.format_observation({}) == render_observation({}) == ""
