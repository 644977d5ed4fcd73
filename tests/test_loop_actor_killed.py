"""Nothing finished is lost: the loop actor killed (SIGKILL) mid-run still leaves a report.

A real ``tickcall run`` (Ray, the policy service, the shipped model) in a subprocess; the test kills
the loop actor's process once the driver's journal holds ticks. The driver writes ``report.json``
(marked ``loop_died``) and ``ticks.jsonl`` from its copy, says so in one line, and exits 2.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.polling import wait_for

ROOT = Path(__file__).resolve().parents[1]


def _loop_actors(after: float) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["name", "cmdline", "create_time"]):
        text = (p.info["name"] or "") + " " + " ".join(p.info["cmdline"] or [])
        if "ray::LoopActor" in text and (p.info["create_time"] or 0) >= after:
            out.append(p)
    return out


def test_killed_loop_actor_leaves_a_marked_report(tmp_path):
    out = tmp_path / "report"
    t0 = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tickcall.cli", "run", "--duration", "60", "--report", str(out), "--quiet",
         "--no-plots"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ticks = out / "ticks.jsonl"
        assert wait_for(lambda: ticks.exists() and len(ticks.read_text().splitlines()) >= 16, 120), \
            "the driver's journal never held 16 ticks"
        actors = _loop_actors(t0)
        assert len(actors) == 1, actors
        os.kill(actors[0].pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err[-2000:]
    assert "Traceback" not in err
    assert "the control loop actor died" in err and "marked loop_died" in err
    report = json.loads((out / "report.json").read_text())
    assert report["loop_died"].startswith("the control loop actor died")
    lines = (out / "ticks.jsonl").read_text().splitlines()
    assert report["ticks"] == len(lines) >= 16
    assert sum(report["outcomes"].values()) == report["ticks"]
    assert [json.loads(line)["tick"] for line in lines] == list(range(len(lines)))  # none missing
