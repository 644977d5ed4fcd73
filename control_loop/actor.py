"""The control loop as a Ray actor.

Ray places, starts and stops the loop; per-tick traffic goes over the policy service's ZMQ socket
(``agent.client.PolicyClient``), never through Ray calls. The actor process holds the loop thread,
the env's physics thread and the actuator lanes; decoding happens in the policy service's own process
(FIELD-NOTES: a decode thread sharing the GIL with physics or actuators gets delayed).

    actor = start_loop_actor(settings, world_factory("tickcall/Arena-v0"), endpoint)  # tickcall.world
    ref = actor.run.remote(duration_s=10)      # returns when the run ends
    ray.get(actor.status.remote())             # live snapshot while it runs (second thread)
    result = ray.get(ref)                      # {"records": [...], "elapsed_s", "episodes", ...}

``run`` returns plain JSON-able data (records as dicts), so the driver can build the report without
importing anything of the actor's. The world comes as a zero-argument factory, called in the actor's
process: this room never builds one (the composition root does, ``tickcall.world``).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict
from typing import Any

from tickcall.control_loop.loop import ControlLoop, LoopSettings
from tickcall.control_loop.world import World, WorldFactory


class LoopSetupError(RuntimeError):
    """The loop actor could not build its world or register its tools; the message is one line."""


def run_result(result: Any, world: Any, world_desc: dict[str, Any], settings: LoopSettings,
               **extra: Any) -> dict[str, Any]:
    """What a loop actor's ``run`` returns (plain JSON-able data): the loop's ``LoopResult`` as dicts,
    the world's episodes and its description ``world_desc``, the settings, and ``extra`` keys."""
    return {
        "records": [r.to_dict() for r in result.records],
        "t0": result.t0,
        "elapsed_s": result.elapsed_s,
        "stray_replies": result.stray_replies,
        "warnings": result.warnings,
        "stopped": result.stopped,
        "priority": result.priority,
        "episodes": world.episodes(),
        "current_episode": world.current_episode(),
        "world": world_desc,
        **extra,
        "settings": asdict(settings),
    }


class LoopActor:
    """Ray actor body (use ``start_loop_actor``). ``max_concurrency=2``: ``status``/``stop`` are served
    while ``run`` is running."""

    def __init__(self, settings: dict[str, Any], make_world: WorldFactory, endpoint: str,
                 client_timeout_ms: float = 5000.0, register_timeout_ms: float = 120000.0,
                 curve: dict[str, Any] | None = None) -> None:
        import sys

        from tickcall.agent.client import PolicyClient

        # A thread woken by its deadline waits for the GIL at most this long (default 5 ms): the physics
        # thread and the actuator lanes share this process with the loop.
        sys.setswitchinterval(0.001)
        self.settings = LoopSettings(**settings)
        self.endpoint = endpoint
        self.loop: ControlLoop | None = None
        self._ran = False
        self.world: World | None = None
        self.client: PolicyClient | None = None
        # A setup failure (no engine, an engine refused, the service silent) is kept as one line for
        # info(), not raised: an actor that dies in __init__ has Ray print its whole traceback.
        self.setup_error: str | None = None
        try:
            self.world = make_world()
            self.client = PolicyClient(endpoint, timeout_ms=client_timeout_ms, curve=curve, name="tickcall-loop")
            self.welcome = self.client.hello(timeout_ms=register_timeout_ms)
            self.registration = self.client.register(self.world.tools, timeout_ms=register_timeout_ms)
        except Exception as exc:
            text = " ".join(str(exc).split()) or repr(exc)
            self.setup_error = text if isinstance(exc, ValueError) else f"{type(exc).__name__}: {text}"

    def info(self) -> dict[str, Any]:
        """Endpoint, server epoch and engine, registered heads, world description, pid; only
        ``{"setup_error": LINE}`` when the world or the registration failed."""
        if self.setup_error is not None:
            return {"setup_error": self.setup_error}
        reg = self.registration
        return {"endpoint": self.endpoint, "epoch": self.client.epoch,
                "engine": dict(self.welcome.engine) if self.welcome else {},
                "handle": reg.handle, "heads": list(reg.heads), "prefix_tokens": reg.prefix_tokens,
                "world": self.world.describe(), "pid": os.getpid()}

    def run(self, max_ticks: int | None = None, duration_s: float | None = None,
            episodes: int | None = None) -> dict[str, Any]:
        """Run the loop once (an actor runs one loop); returns records and what the report needs."""
        if self._ran:
            raise RuntimeError("this loop actor already ran; start a new one")
        self._ran = True
        self.loop = ControlLoop(self.settings, self.client, self.world, self.world.hands)
        self.world.start()
        try:
            result = self.loop.run(max_ticks=max_ticks, duration_s=duration_s, episodes=episodes)
        finally:
            self.world.stop()
        world = self.world.describe()
        if self.world.hands is not None:
            self.world.hands.settle(timeout_s=1.0)
            world = self.world.describe()
        return run_result(result, self.world, world, self.settings, client=dict(self.client.stats),
                          renewals=self.registration.renewals)

    def status(self) -> dict[str, Any]:
        """The loop's live snapshot, plus ``notices``: lines the world has for a person watching (an
        engine connected, was lost...; worlds with a ``notices()`` method), each returned once."""
        out = {"running": False, "ticks": 0, "outcomes": {}} if self.loop is None else self.loop.status()
        notices = getattr(self.world, "notices", None)
        if notices is not None:
            out["notices"] = list(notices())
        return out

    def snapshot(self, since: int = 0) -> tuple[list[dict[str, Any]], int]:
        """``ControlLoop.snapshot``: the records so far (for a driver that must outlive this actor)."""
        return ([], since) if self.loop is None else self.loop.snapshot(since)

    def stop(self) -> bool:
        if self.loop is not None:
            self.loop.stop()
        return True

    def close(self) -> bool:
        try:
            if self.client is not None:
                self.client.close()
        finally:
            if self.world is not None:
                self.world.close()
        return True


def start_loop_actor(settings: LoopSettings, make_world: WorldFactory, endpoint: str | list[str], *,
                     client_timeout_ms: float = 5000.0, register_timeout_ms: float = 120000.0,
                     curve: dict[str, Any] | None = None, num_cpus: float = 0,
                     same_node: bool = True, actor_cls: type | None = None,
                     extra_args: tuple[Any, ...] = ()) -> Any:
    """Start a ``LoopActor`` on the running Ray (``tickcall.cluster.init_ray()`` starts one). Returns the
    handle once the actor has built its world (``make_world()``, called in the actor's process) and registered the tools with the service.

    ``num_cpus=0``: the loop is light; on a small machine the policy service gets the CPUs.
    ``same_node``: pin the actor to this node (a loopback endpoint is only reachable here).
    ``actor_cls`` / ``extra_args``: a ``LoopActor`` subclass and the constructor arguments it takes after
    ``LoopActor``'s own (``control_loop.cascade.CascadeLoopActor``: the big model's endpoint and settings).
    ``endpoint``: a list for an actor that talks to several services (``control_loop.crowd.CrowdLoopActor``:
    policy replicas).
    """
    import ray

    if not ray.is_initialized():
        raise RuntimeError("the loop actor needs Ray: call tickcall.cluster.init_ray() first")
    options: dict[str, Any] = {"num_cpus": num_cpus, "max_concurrency": 2, "max_restarts": 0}
    if same_node:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
            node_id=ray.get_runtime_context().get_node_id(), soft=False)
    handle = ray.remote(actor_cls or LoopActor).options(**options).remote(
        asdict(settings), make_world, endpoint, client_timeout_ms, register_timeout_ms, curve, *extra_args)
    info = ray.get(handle.info.remote(), timeout=register_timeout_ms / 1e3 + 60)
    if "setup_error" in info:
        with contextlib.suppress(Exception):
            ray.get(handle.close.remote(), timeout=10)
        ray.kill(handle)
        raise LoopSetupError(info["setup_error"])
    return handle
