"""Reaper for vLLM's engine-core processes: ends them when the process that owns the engine dies.

vLLM (0.32) starts its engine core (and its worker) as daemon ``multiprocessing`` children; they are
stopped by a ``weakref.finalize`` in the owner. When the owner is SIGKILLed (the kernel's OOM killer,
``kill -9``, a Ray worker killed without Ray's child clean-up) no finalizer runs and the engine core
keeps its memory (measured: ~1.2 GiB for a tiny model with a 1 GiB KV cache, for good).

:func:`start_reaper` starts ``python -m models.vllm_reaper`` with a pipe on its stdin whose write end
only the owner holds. The reaper blocks on that pipe; end of file means the owner has gone (or closed
the engine): it then sends SIGTERM to every watched process that still runs, and SIGKILL after
``grace_s``. Each process is named by pid *and* start time, so a reused pid is never signalled.
Standalone on purpose: it imports only the standard library and psutil.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any


def describe(pids: list[int]) -> list[dict[str, Any]]:
    """``[{"pid", "create_time"}]`` of the running ``pids`` (vanished ones are left out)."""
    import psutil

    out = []
    for pid in pids:
        try:
            out.append({"pid": pid, "create_time": psutil.Process(pid).create_time()})
        except psutil.NoSuchProcess:
            continue
    return out


def start_reaper(pids: list[int], grace_s: float = 2.0) -> subprocess.Popen:
    """Watch ``pids`` (the engine's processes); returns the reaper, whose ``stdin`` the owner keeps open.

    Close ``proc.stdin`` to make the reaper end the watched processes now and exit (``close()``)."""
    watched = describe(pids)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    proc = subprocess.Popen([sys.executable, "-m", "tickcall.models.vllm_reaper", json.dumps(watched), str(grace_s)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            start_new_session=True)  # not in the owner's process group: a group kill spares it
    return proc


def _matching(watched: list[dict[str, Any]]):
    import psutil

    procs = []
    for w in watched:
        try:
            p = psutil.Process(int(w["pid"]))
            if abs(p.create_time() - float(w["create_time"])) < 0.01 and p.status() != psutil.STATUS_ZOMBIE:
                procs.append(p)
        except psutil.NoSuchProcess:
            continue
    return procs


def reap(watched: list[dict[str, Any]], grace_s: float) -> int:
    """SIGTERM the watched processes that still run, SIGKILL the rest after ``grace_s``. Returns how many
    were signalled."""
    import psutil

    procs = _matching(watched)
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=grace_s)
    return len(procs)


def main(argv: list[str]) -> int:
    watched = json.loads(argv[0])
    grace_s = float(argv[1]) if len(argv) > 1 else 2.0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the owner's terminal must not skip the reaping
    while True:  # end of file: the owner closed the pipe or died
        try:
            if not sys.stdin.buffer.read(4096):
                break
        except OSError:
            break
    time.sleep(0.05)
    reap(watched, grace_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
