"""A local Ray started by ``tickcall.cluster.init_ray`` listens on loopback only (issue 19).

A fresh Python process starts Ray the way ``tickcall run`` does and runs one actor; every TCP socket
that any process of that Ray (driver, gcs_server, raylet, workers, agents) listens on must be a
loopback address, and the switch that makes it so is put back in the driver afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import json, os, psutil, ray
from tickcall.cluster import NO_CLUSTER_ENV, init_ray
from ray._private import ray_constants

assert init_ray()

@ray.remote
class A:
    def pid(self):
        return os.getpid()

ray.get(A.remote().pid.remote())
me = psutil.Process()
listening = set()
for proc in [me, *me.children(recursive=True)]:
    try:
        for c in proc.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                listening.add((c.laddr.ip, c.laddr.port, proc.name()))
    except psutil.Error:
        pass
print(json.dumps({"listening": sorted(listening), "node_ip": ray.util.get_node_ip_address(),
                  "env_restored": NO_CLUSTER_ENV not in os.environ,
                  "flag_restored": ray_constants.ENABLE_RAY_CLUSTER}))
ray.shutdown()
"""


def _is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1", "::ffff:127.0.0.1")


@pytest.mark.slow
def test_a_local_ray_listens_on_loopback_only():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray, not a cluster
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    names = {name for _ip, _port, name in report["listening"]}
    assert {"gcs_server", "raylet"} <= names, report  # Ray's own servers were seen
    exposed = [row for row in report["listening"] if not _is_loopback(row[0])]
    assert not exposed, exposed
    assert report["node_ip"] == "127.0.0.1"
    assert report["env_restored"] and report["flag_restored"]
