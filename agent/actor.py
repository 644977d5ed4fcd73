"""The policy service as a Ray actor: Ray places it (on a GPU when the cluster has one) and restarts it
when it dies; per-tick traffic goes over its ZMQ socket, never through Ray calls. Several replicas of
it are started by ``tickcall.agent.replicas.start_replicas`` (built on ``launch_policy_service``).

``start_policy_service(engine_spec, bind)`` returns ``(actor_handle, endpoint)``. The endpoint stays
the same across Ray restarts of the actor (a tcp port 0 is resolved once, before the actor starts), so
clients reconnect to it; each restart is a new server epoch, and clients register again.

Placement of a loopback bind: a ``tcp://127.0.0.1:PORT`` endpoint is reachable from the driver only if
the actor runs on the driver's *machine*, not necessarily on the driver's Ray node: several Ray nodes
can share one machine (``ray.cluster_utils.Cluster``, ``ray start`` twice). Ray gives every node the
resource ``node:<its IP>``; asking for a sliver of the driver's (``host_resource``) keeps the actor on
a node with the driver's address, i.e. on this machine, wherever Ray puts it among those nodes, and
keeps it there across restarts (same port, same machine: same endpoint).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from tickcall.agent.config import CurveConfig, ServeConfig
from tickcall.agent.security import is_local_endpoint

HOST_SLIVER = 0.001  # the amount of Ray's ``node:<IP>`` resource that pins an actor to that address


class PolicyServiceActor:
    """Ray actor body: builds the engine, binds, and serves in a background thread.

    ``curve_files``: ``{"server_secret": TEXT, "client_keys": {NAME.key: TEXT}}`` — the CURVE
    certificate files made by the driver (``agent.replicas``), written here to a private folder of the
    actor's own node (its machine may not share the driver's file system) and used as the config's
    ``curve``; the folder is removed once the server has read them (it reads keys when it binds). The
    same text comes with every Ray restart, so the server keeps its public key.
    """

    def __init__(self, config: dict[str, Any], curve_files: dict[str, Any] | None = None) -> None:
        from tickcall.agent.engines import build_engine
        from tickcall.agent.server import PolicyServer

        self.config = ServeConfig.from_dict(config)
        key_dir = None
        if curve_files:
            self.config.curve = write_curve_files(curve_files)
            key_dir = Path(self.config.curve.server_secret or "").parent
        try:
            self.engine = build_engine(self.config.engine)
            self.server = PolicyServer(self.engine, self.config)
            self.endpoint = self.server.start()
            self.serving_since = time.time()  # wall clock s: when this actor's socket began to serve
        finally:
            if key_dir is not None:  # the keys live in the server's memory from here on
                shutil.rmtree(key_dir, ignore_errors=True)

    def ready(self) -> dict[str, Any]:
        """Endpoint, epoch, engine info, pid and Ray node once serving (call it to wait for the actor);
        ``serving_since``: the wall-clock time (s) its socket began to serve."""
        import ray

        return {
            "serving_since": self.serving_since,
            "endpoint": self.endpoint,
            "epoch": self.server.epoch,
            "engine": self.engine.info(),
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
        }

    def stats(self) -> dict[str, Any]:
        return self.server.stats()

    def swap(
        self, model_path: str | None = None, *, spec: dict[str, Any] | None = None, name: str | None = None
    ) -> dict[str, Any]:
        """Hot swap: serve the weights of ``model_path`` (this service's engine spec with that model;
        or a whole ``spec``) behind the same endpoint, epoch and handles, without dropping a decide
        (``PolicyServer.swap``). Returns ``SwapResult.to_dict()``: ``ok``, ``weights``, ``warm_ms``...;
        a folder that does not load gives ``ok`` False and a one-line ``error``, the old weights serving.

        Why a Ray method and not a wire message: a swap is rare control-plane work that makes the
        service read a folder of its own machine; the wire is open to every client that can reach the
        socket (decides from a game engine), and the engine spec comes from trusted config, never from
        the wire (``agent.engines``). Whoever holds the actor handle (the run's driver, ``tickcall
        serve --ray --swap-file``) started the service and may choose its weights. A Ray restart of the
        actor rebuilds it from its original config (the first weights), as a new epoch.
        """
        if spec is None:
            if not model_path:
                return {"ok": False, "error": "swap: give model_path or spec", "weights": self.server.weights}
            spec = {**dict(self.config.engine), "model": str(model_path)}
        result = self.server.swap(spec, name=name)
        if result.ok:
            self.engine = self.server.engine
        return result.to_dict()

    def stop(self) -> bool:
        self.server.stop()
        self.engine.close()
        return True


def write_curve_files(curve_files: dict[str, Any]) -> CurveConfig:
    """Write the driver's CURVE certificates to a fresh 0700 folder; the server side ``CurveConfig``."""
    folder = Path(tempfile.mkdtemp(prefix="tickcall-curve-"))  # mkdtemp: mode 0700, only this user
    secret = folder / "server.key_secret"
    _write_private(secret, curve_files["server_secret"])
    client_keys = None
    if curve_files.get("client_keys"):
        keys = folder / "clients"
        keys.mkdir(mode=0o700)
        for name, text in curve_files["client_keys"].items():
            _write_private(keys / Path(name).name, text)
        client_keys = str(keys)
    return CurveConfig(server_secret=str(secret), client_keys=client_keys)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def resolve_bind(bind: str) -> str:
    """Replace a tcp port 0 by a concrete free port so that restarts bind the same endpoint.

    Only for loopback binds (the actor then stays on this machine); an exposed bind needs a real port,
    chosen on the node that binds it (``agent.replicas`` asks that node for one).
    """
    if not bind.startswith("tcp://"):
        return bind
    host, _, port = bind[len("tcp://") :].rpartition(":")
    if port not in ("0", "*"):
        return bind
    if not is_local_endpoint(bind):
        raise ValueError(f"{bind}: give an explicit port for a non-loopback bind (restarts must reuse it)")
    bare = host.strip("[]")
    return f"tcp://{host}:{_free_port('127.0.0.1' if bare == 'localhost' else bare)}"


def driver_ip() -> str:
    """The address of the driver's Ray node (``127.0.0.1`` for a local Ray started by ``init_ray``)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            return str(node["NodeManagerAddress"])
    return ray.util.get_node_ip_address()


def host_resource(ip: str) -> dict[str, float]:
    """Ray resources that keep an actor on a node whose address is ``ip`` (see module docstring)."""
    return {f"node:{ip}": HOST_SLIVER}


def serve_config(
    engine_spec: dict[str, Any] | None,
    bind: str | None,
    config: ServeConfig | dict[str, Any] | None,
    **overrides: Any,
) -> ServeConfig:
    """The checked ServeConfig of a service: ``config`` with ``engine``/``bind``/overrides applied."""
    cfg = config.to_dict() if isinstance(config, ServeConfig) else dict(config or {})
    if engine_spec is not None:
        cfg["engine"] = dict(engine_spec)
    if bind is not None:
        cfg["bind"] = bind
    elif config is None:
        cfg["bind"] = "tcp://127.0.0.1:0"
    cfg.update(overrides)
    return ServeConfig.from_dict(cfg)  # validates before anything starts


def default_gpus(serve: ServeConfig) -> float:
    """``serve.num_gpus``, else 1 when the cluster has a GPU, else 0."""
    import ray

    if serve.num_gpus is not None:
        return serve.num_gpus
    return 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0


def launch_policy_service(
    serve: ServeConfig,
    *,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    scheduling_strategy: Any = None,
    name: str | None = None,
    curve_files: dict[str, Any] | None = None,
) -> Any:
    """Create the service actor for a config whose bind is final (no port 0); returns the handle at once.

    A loopback bind keeps the actor on this machine (``host_resource`` of the driver's address, module
    docstring); ``resources`` are added to that (e.g. ``{"replica_node_a": 1}``). Call
    ``handle.ready.remote()`` to wait for it.
    """
    import ray

    if not ray.is_initialized():
        raise RuntimeError("the policy service actor needs Ray: call tickcall.cluster.init_ray() first")
    res = dict(resources or {})
    if is_local_endpoint(serve.bind):  # clients on this machine must reach it: keep it here
        res.update(host_resource(driver_ip()))
    options: dict[str, Any] = {
        "num_gpus": default_gpus(serve) if num_gpus is None else num_gpus,
        "num_cpus": serve.num_cpus,
        "max_restarts": serve.max_restarts,
        "max_task_retries": 0,
        "resources": res,
    }
    if scheduling_strategy is not None:
        options["scheduling_strategy"] = scheduling_strategy
    if name:
        options["name"] = name
    return ray.remote(PolicyServiceActor).options(**options).remote(serve.to_dict(), curve_files)


def start_policy_service(
    engine_spec: dict[str, Any] | None = None,
    bind: str | None = None,
    *,
    config: ServeConfig | dict[str, Any] | None = None,
    name: str | None = None,
    timeout_s: float = 300.0,
    **config_overrides: Any,
) -> tuple[Any, str]:
    """Start the policy service actor on the running Ray (``tickcall.cluster.init_ray()`` starts one).

    ``engine_spec``: ``{"backend": "noop"}``, ``{"backend": "transformers", "model": PATH}``, ...
    ``bind``: default ``tcp://127.0.0.1:0`` (a free loopback port) unless ``config`` gives one.
    ``config``: a full ServeConfig (its ``engine``/``bind`` are replaced by the arguments when given).
    Returns ``(actor_handle, endpoint)`` after the actor serves. GPU: ``num_gpus=1`` when the cluster
    has a GPU (override with ``config.num_gpus``). Restarts: ``config.max_restarts`` (default forever).
    A loopback bind keeps the actor on this machine (module docstring).
    """
    import ray

    serve = serve_config(engine_spec, bind, config, **config_overrides)
    serve.bind = resolve_bind(serve.bind)
    if not ray.is_initialized():
        raise RuntimeError("the policy service actor needs Ray: call tickcall.cluster.init_ray() first")
    handle = launch_policy_service(serve, name=name)
    info = ray.get(handle.ready.remote(), timeout=timeout_s)
    return handle, info["endpoint"]


def swap_policy_service(
    handle: Any, model_path: str, *, name: str | None = None, timeout_s: float = 900.0
) -> dict[str, Any]:
    """Hot-swap the weights of a running service actor (``PolicyServiceActor.swap``) and wait for it:
    ``{"ok", "weights", "previous", "warm_ms", "switch_ms", "registrations", "error"...}``; a folder
    that does not load gives ``ok`` False and the old weights keep serving."""
    import ray

    return ray.get(handle.swap.remote(model_path, name=name), timeout=timeout_s)
