"""The one place tickcall starts (or joins) Ray.

Ray places, starts and restarts the actors (the policy service, the loop); per-tick traffic never goes
through it. Everything that needs Ray calls ``init_ray()`` first; the actor modules of the rooms
(``tickcall.agent.actor``, ``tickcall.control_loop.actor``) expect it started and say so when it is not.

Security: a Ray started here starts no dashboard, and Ray 2.60 turns its token authentication on
by itself. Ray resolves a loopback node address to the machine's reachable one (``ray.init`` with
``_node_ip_address="127.0.0.1"`` changes nothing, measured), so its own ports are not loopback-only; the
policy service's ZMQ socket, which carries the ticks, is (``tickcall.agent.security``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def init_ray(address: str | None = None, *, log_to_driver: bool = False, logging_level: str = "WARNING",
             **kwargs: Any) -> bool:
    """Start a local Ray, or join the cluster at ``address``; returns True when this call started it.

    A Ray that is already initialized is left as it is (returns False). ``kwargs`` go to ``ray.init``
    (e.g. ``num_cpus``).
    """
    import ray

    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": log_to_driver,
                               "logging_level": logging_level, **kwargs}
    ray.init(address=address, **options)
    return True


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

