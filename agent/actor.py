"""The policy service as a Ray actor: Ray places it (on a GPU when the cluster has one), restarts it
when it dies, and scales replicas; per-tick traffic goes over its ZMQ socket, never through Ray calls.

``start_policy_service(engine_spec, bind)`` returns ``(actor_handle, endpoint)``. The endpoint stays
the same across Ray restarts of the actor (a tcp port 0 is resolved once, before the actor starts), so
clients reconnect to it; each restart is a new server epoch, and clients register again.
"""

from __future__ import annotations

import socket
from typing import Any

from tickcall.agent.config import ServeConfig
from tickcall.agent.security import is_local_endpoint


class PolicyServiceActor:
    """Ray actor body: builds the engine, binds, and serves in a background thread."""

    def __init__(self, config: dict[str, Any]) -> None:
        from tickcall.agent.engines import build_engine
        from tickcall.agent.server import PolicyServer

        self.config = ServeConfig.from_dict(config)
        self.engine = build_engine(self.config.engine)
        self.server = PolicyServer(self.engine, self.config)
        self.endpoint = self.server.start()

    def ready(self) -> dict[str, Any]:
        """Endpoint, epoch and engine info once serving (call it to wait for the actor)."""
        import os

        return {"endpoint": self.endpoint, "epoch": self.server.epoch, "engine": self.engine.info(),
                "pid": os.getpid()}

    def stats(self) -> dict[str, Any]:
        return self.server.stats()

    def stop(self) -> bool:
        self.server.stop()
        self.engine.close()
        return True


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def resolve_bind(bind: str) -> str:
    """Replace a tcp port 0 by a concrete free port so that restarts bind the same endpoint.

    Only for loopback binds (the actor is then pinned to this node); an exposed bind needs a real port.
    """
    if not bind.startswith("tcp://"):
        return bind
    host, _, port = bind[len("tcp://"):].rpartition(":")
    if port not in ("0", "*"):
        return bind
    if not is_local_endpoint(bind):
        raise ValueError(f"{bind}: give an explicit port for a non-loopback bind (restarts must reuse it)")
    bare = host.strip("[]")
    return f"tcp://{host}:{_free_port('127.0.0.1' if bare == 'localhost' else bare)}"


def start_policy_service(engine_spec: dict[str, Any] | None = None, bind: str | None = None, *,
                         config: ServeConfig | dict[str, Any] | None = None, name: str | None = None,
                         timeout_s: float = 300.0, **config_overrides: Any) -> tuple[Any, str]:
    """Start the policy service actor on the running Ray (``tickcall.cluster.init_ray()`` starts one).

    ``engine_spec``: ``{"backend": "noop"}``, ``{"backend": "transformers", "model": PATH}``, ...
    ``bind``: default ``tcp://127.0.0.1:0`` (a free loopback port) unless ``config`` gives one.
    ``config``: a full ServeConfig (its ``engine``/``bind`` are replaced by the arguments when given).
    Returns ``(actor_handle, endpoint)`` after the actor serves. GPU: ``num_gpus=1`` when the cluster
    has a GPU (override with ``config.num_gpus``). Restarts: ``config.max_restarts`` (default forever).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if isinstance(config, ServeConfig):
        cfg = config.to_dict()
    else:
        cfg = dict(config or {})
    if engine_spec is not None:
        cfg["engine"] = dict(engine_spec)
    if bind is not None:
        cfg["bind"] = bind
    elif config is None:
        cfg["bind"] = "tcp://127.0.0.1:0"
    cfg.update(config_overrides)
    serve = ServeConfig.from_dict(cfg)  # validates before anything starts
    serve.bind = resolve_bind(serve.bind)
    if not ray.is_initialized():
        raise RuntimeError("the policy service actor needs Ray: call tickcall.cluster.init_ray() first")
    num_gpus = serve.num_gpus
    if num_gpus is None:
        num_gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    options: dict[str, Any] = {"num_gpus": num_gpus, "num_cpus": serve.num_cpus, "max_restarts": serve.max_restarts,
                               "max_task_retries": 0}
    if name:
        options["name"] = name
    if is_local_endpoint(serve.bind):  # clients on this node must reach it: keep it here
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
            node_id=ray.get_runtime_context().get_node_id(), soft=False)
    actor_cls = ray.remote(PolicyServiceActor)
    handle = actor_cls.options(**options).remote(serve.to_dict())
    info = ray.get(handle.ready.remote(), timeout=timeout_s)
    return handle, info["endpoint"]
