"""The one place tickcall starts (or joins) Ray.

Ray places, starts and restarts the actors (the policy service, the loop); per-tick traffic never goes
through it. Everything that needs Ray calls ``init_ray()`` first; the actor modules of the rooms
(``tickcall.agent.actor``, ``tickcall.control_loop.actor``) expect it started and say so when it is not.

Security: a Ray started here starts no dashboard, and Ray 2.60 turns its token authentication on
by itself. A *local* Ray (no ``address``, no ``RAY_ADDRESS``) is also loopback-only: every Ray process
of it (gcs_server, raylet, workers, the driver) listens on 127.0.0.1, like the policy service's ZMQ
socket (``tickcall.agent.security``). Ray resolves a loopback node address back to the machine's
reachable one (``ray.init(_node_ip_address="127.0.0.1")`` changes nothing, measured) unless its
"no cluster" mode is on: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's own switch, default off on
macOS/Windows: the node address is then the loopback one, and Ray's servers bind the node address).
``init_ray`` sets it for the start only; the processes it starts keep it. Joining a cluster
(``address``) leaves it alone: there, Ray's ports face the cluster network, and its token
authentication is what guards them (docs/architecture.md, "What a run exposes"); except a cluster
whose address is itself loopback (``127.0.0.1:PORT``: nodes started on this machine under
``loopback_node()``, as the multi-node tests do), which this driver can only join as a loopback node.

Policy replicas (``tickcall.agent.replicas``) follow the address Ray's nodes have: on a loopback Ray
they bind 127.0.0.1; on a cluster with real node addresses (``--ray-address``) they bind their node's
address with CURVE on (docs/replicas.md).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any


def init_ray(
    address: str | None = None, *, log_to_driver: bool = False, logging_level: str = "WARNING", **kwargs: Any
) -> bool:
    """Start a local Ray, or join the cluster at ``address``; returns True when this call started it.

    A Ray that is already initialized is left as it is (returns False). ``kwargs`` go to ``ray.init``
    (e.g. ``num_cpus``). ``address``: ``HOST:PORT`` of a running cluster's head (``ray start --head``
    prints it); a loopback ``HOST`` joins as a loopback node (module docstring).
    """
    import ray

    if ray.is_initialized():
        return False
    options: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": log_to_driver,
        "logging_level": logging_level,
        **kwargs,
    }
    target = address or os.environ.get("RAY_ADDRESS")
    if target is None or _is_loopback_address(target):
        with loopback_node():
            ray.init(address=address, **options)
    else:
        ray.init(address=address, **options)
    return True


NO_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # Ray's switch; "0": the node address is loopback


def _is_loopback_address(address: str) -> bool:
    """True for ``127.x.y.z:PORT``, ``localhost:PORT``, ``[::1]:PORT`` (a Ray head on loopback)."""
    import ipaddress

    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def loopback_node() -> Iterator[None]:
    """Ray's "no cluster" mode while a local Ray starts or joins (see module docstring).

    Also for Ray nodes started by hand on this machine, e.g. a ``ray.cluster_utils.Cluster`` created
    inside this block has every node on 127.0.0.1.

    The environment variable reaches the processes Ray starts (they read it when they import ray);
    this process read it when it imported ray, so its module constant is set too. Both are put back
    afterwards: a later ``ray.init(address=...)`` in this process must resolve its real address.
    """
    from ray._private import ray_constants

    saved_env = os.environ.get(NO_CLUSTER_ENV)
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[NO_CLUSTER_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(NO_CLUSTER_ENV, None)
        else:
            os.environ[NO_CLUSTER_ENV] = saved_env


@contextlib.contextmanager
def ray_session(address: str | None = None, **kwargs: Any) -> Iterator[None]:
    """``init_ray`` for a ``with`` block; shuts Ray down afterwards only if the block started it."""
    import ray

    started = init_ray(address, **kwargs)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
