"""An env without a shipped model: ``tickcall run``/``tickcall eval`` stop with one line naming the choices,
the model-free backends run it, and a run without legal calls says so in its report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tickcall.control_loop.records import TickRecord
from tickcall.control_loop.stats import call_counts, summarize

from tickcall.cli import main
from tickcall.job import summary_lines

ROOT = Path(__file__).resolve().parent.parent
CHOICES = ("--backend random", "--model PATH", "tickcall train --env LunarLanderContinuous-v3")


def _one_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_run_without_a_shipped_model_names_the_choices(capsys):
    import ray

    err = _one_line(capsys, ["run", "--env", "LunarLanderContinuous-v3", "--duration", "1"])
    assert err.startswith("tickcall run: no model ships for LunarLanderContinuous-v3") and all(c in err for c in CHOICES)
    assert not ray.is_initialized()  # refused before Ray, the service or the loop started


def test_eval_model_without_a_shipped_model_names_the_choices(capsys):
    err = _one_line(capsys, ["eval", "--env", "LunarLanderContinuous-v3", "--policy", "model", "--episodes", "1"])
    assert err.startswith("tickcall eval: no model ships for LunarLanderContinuous-v3") and all(c in err for c in CHOICES)


@pytest.mark.parametrize("backend", ["random", "noop"])
def test_decide_runs_the_model_free_backends_without_a_model(capsys, backend):
    assert main(["decide", "theta=+0.10", "--env", "Pendulum-v1", "--backend", backend]) == 0
    out = capsys.readouterr().out
    assert f"model     - ({backend}," in out and "call      torque(" in out and "legal     True (ok)" in out


def test_eval_puts_the_random_backend_beside_the_other_policies(capsys, tmp_path):
    out = tmp_path / "eval.json"
    policies = "random,random-calls,model"
    argv = ["eval", "--env", "Acrobot-v1", "--policy", policies, "--backend", "noop", "--episodes", "1"]
    argv += ["--json", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "random-calls" in table and "model:noop" in table
    runs = {r["policy"]: r for r in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"random", "random-calls", "model:noop"}
    assert all(r["legal_rate"] == 1.0 and r["rejected"] == 0 for r in runs.values())


def _records(outcomes: list[tuple[str, str, dict | None]]) -> list[TickRecord]:
    recs = []
    for i, (outcome, reason, call) in enumerate(outcomes):
        recs.append(
            TickRecord(
                tick=i,
                scheduled_ms=62.5 * i,
                lateness_ms=0.1,
                sent=True,
                rtt_ms=4.0 + i,
                latency_ms=5.0 if outcome == "ok" else None,
                outcome=outcome,
                reason=reason,
                call=call,
            )
        )
    return recs


def test_the_report_warns_when_most_ticks_had_no_legal_call():
    bad_call = {"name": "push", "arguments": {}}
    recs = _records(
        [("error", "illegal call: push: required argument 'direction' is missing", bad_call)] * 5
        + [("error", "illegal call: no function was chosen (<function> head is null)", None)] * 4
        + [("error", "service error engine_failure: boom", None)]
        + [("ok", "", {"name": "push", "arguments": {"direction": "left"}})] * 2
    )
    assert call_counts(recs) == {"legal": 2, "illegal": 5, "no_call": 5}
    rep = {**summarize(recs, 16.0, 0.75), "episodes": []}
    assert rep["calls"] == {"legal": 2, "illegal": 5, "no_call": 5}
    assert rep["call_warning"].startswith("10 of 12 ticks (83%) had no legal call")
    assert rep["deadline_misses"] == 0  # an answer that is not a call is no miss: hence the warning
    lines = summary_lines(rep)
    assert any(line.startswith("warning: 10 of 12 ticks") for line in lines)
    # latency is still reported: the round trip of every reply beside the tick latency of ok ticks
    assert any(line.startswith("round trip ms (all 12 replies)") for line in lines)
    assert any(line.startswith("tick latency ms") for line in lines)


def test_no_warning_when_most_ticks_were_legal():
    recs = _records(
        [("ok", "", {"name": "wait", "arguments": {}})] * 3
        + [("late", "", None)] * 3
        + [("error", "illegal call: no call", None)]
    )
    rep = {**summarize(recs, 16.0, 0.5), "episodes": []}
    assert rep["call_warning"] is None and rep["calls"] == {"legal": 3, "illegal": 0, "no_call": 1}
    assert not any(line.startswith(("warning", "round trip")) for line in summary_lines(rep))


@pytest.mark.slow
def test_run_with_the_random_backend_answers_only_legal_calls(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tickcall.cli",
            "run",
            "--env",
            "Pendulum-v1",
            "--backend",
            "random",
            "--duration",
            "3",
            "--report",
            str(out),
            "--quiet",
            "--no-plots",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["backend"] == "random" and rep["ticks"] == 48
    # every answer was a legal call (a tick may still be late on a busy machine: that is timing, not legality)
    assert rep["outcomes"]["error"] == 0 and rep["calls"]["illegal"] == rep["calls"]["no_call"] == 0
    assert rep["calls"]["legal"] == rep["outcomes"]["ok"] > 0 and rep["call_warning"] is None
