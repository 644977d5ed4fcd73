"""AsyncFC with a CPU-heavy planner in a child process and a call that waits for another's result.

    .venv/bin/python examples/asyncfc_pipeline.py [--ticks 30] [--rate 10] [--grid 140]

A scripted agent ticks at ``--rate`` Hz (``tickcall.timing.RateKeeper``) and, like a model would,
decides one call per tick without ever waiting for an actuator:

* tick 0: ``plan(goal=[G, G])``: a breadth-first path search over a ``--grid`` square grid, pure
  Python (tens of ms of CPU). Its lane uses ``executor="process"``: in a thread it would hold the
  GIL and delay the loop (and, in ``tickcall run``, the decoding); in a child process it cannot.
* tick 0 too: ``follow(path="@f1")``: names the plan's future. It waits (``waiting @f1``) until the plan
  is done, then runs with the plan's result substituted; had the plan failed it would be rejected
  without running.
* every tick: ``move(x=...)`` set-points in a ``latest`` lane whose device takes 30 ms; newer
  set-points replace queued ones.

Each tick prints the history lines the next turn would show the model. The last line is a JSON
summary; the exit status is 0 when the follow call ran on the planned path and every call is
accounted for (``ledger.accepted == finished + in_flight``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from tickcall.control_loop.futures import AsyncFC, CallState, Lane
from tickcall.models.calls import Call

from tickcall.timing import RateKeeper


def plan_path(call: Call) -> list[list[int]]:
    """Shortest 4-connected path from (0, 0) to ``goal`` on a ``size`` grid with a wall at x = size/2
    (open at the top row). Runs in the planner's child process."""
    size = int(call.arguments.get("size", 140))
    goal = tuple(call.arguments["goal"])
    wall = size // 2
    prev: dict[tuple[int, int], tuple[int, int] | None] = {(0, 0): None}
    todo = deque([(0, 0)])
    while todo:
        cell = todo.popleft()
        if cell == goal:
            break
        x, y = cell
        for nxt in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
            if 0 <= nxt[0] < size and 0 <= nxt[1] < size and nxt not in prev and (nxt[0] != wall or nxt[1] == 0):
                prev[nxt] = cell
                todo.append(nxt)
    if goal not in prev:
        raise ValueError(f"no path to {list(goal)}")
    path: list[list[int]] = []
    node: tuple[int, int] | None = goal
    while node is not None:
        path.append(list(node))
        node = prev[node]
    return path[::-1]


def follow(call: Call) -> dict[str, Any]:
    """The robot takes the path (the planner's result, substituted for ``"@f1"``)."""
    path = call.arguments["path"]
    return {"waypoints": len(path), "end": path[-1]}


def move(call: Call) -> dict[str, Any]:
    """A slow set-point device: 30 ms to apply."""
    time.sleep(0.03)
    return {"x": call.arguments["x"]}


def run(ticks: int, rate: float, grid: int, out=sys.stdout) -> dict[str, Any]:
    """Run the scripted agent; returns the summary (also printed as the last line)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the planner's child imports this file
    module = Path(__file__).stem
    lanes = [Lane("plan", policy="fifo", k=2, queue=2, executor="process", timeout_complete_s=20.0),
             Lane("follow", policy="fifo"), Lane("move", policy="latest")]
    actuators = {"plan": f"{module}:plan_path", "follow": follow, "move": move}
    goal = [grid - 1, grid - 1]
    keeper = RateKeeper(rate)
    worst_tick_ms = 0.0
    with AsyncFC(lanes, actuators) as fc:
        plan = follow_fut = None
        keeper.start()
        for _ in range(ticks):
            slot = keeper.wait()
            t = time.perf_counter()
            if plan is None:  # the plan and the call that uses it go out together; neither blocks
                plan = fc.dispatch(Call("plan", {"goal": goal, "size": grid}), seq=slot.index)
                follow_fut = fc.dispatch(Call("follow", {"path": f"@{plan.id}"}), seq=slot.index)
            fc.dispatch(Call("move", {"x": slot.index}), seq=slot.index)
            fc.poll()
            worst_tick_ms = max(worst_tick_ms, (time.perf_counter() - t) * 1e3)
            print(f"tick {slot.index:3d}: " + " | ".join(fc.history_lines(limit=4)), file=out)
        if follow_fut is not None:
            follow_fut.wait(20.0)
        summary = {
            "ticks": ticks, "skipped_periods": keeper.skipped_total, "worst_tick_ms": round(worst_tick_ms, 3),
            "plan": plan.state.value if plan else None,
            "follow": follow_fut.state.value if follow_fut else None,
            "follow_result": follow_fut.result if follow_fut else None,
            "states": fc.metrics()["states"], "balanced": fc.ledger.balanced(),
        }
    ok = (follow_fut is not None and follow_fut.state is CallState.DONE and summary["balanced"]
          and follow_fut.result["end"] == goal)
    summary["ok"] = bool(ok)
    print(json.dumps(summary), file=out)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ticks", type=int, default=30, help="ticks to run (default 30)")
    ap.add_argument("--rate", type=float, default=10.0, help="ticks per second (default 10)")
    ap.add_argument("--grid", type=int, default=140, help="planner grid side, cells (default 140)")
    args = ap.parse_args(argv)
    return 0 if run(args.ticks, args.rate, args.grid)["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
