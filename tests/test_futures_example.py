"""The shipped AsyncFC example (``examples/asyncfc_pipeline.py``) runs: a planner in a child process
(``executor="process"``) and a call that names the plan's future (``"@f1"``) and runs on its result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "asyncfc_pipeline.py"


def test_asyncfc_pipeline_example_plans_in_a_child_and_follows_the_plan():
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--ticks", "12", "--rate", "10", "--grid", "160"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert 'follow(path="@f1")@f2 waiting @f1' in lines[0]   # dispatched with the plan, waits for it
    summary = json.loads(lines[-1])
    assert summary["ok"] and summary["balanced"] and summary["ticks"] == 12
    assert (summary["plan"], summary["follow"]) == ("done", "done")
    assert summary["follow_result"] == {"waypoints": 2 * 159 + 1, "end": [159, 159]}
    assert summary["states"]["rejected"] == 0 and summary["states"]["failed"] == 0
