"""Policy service replicas placed by Ray, and the policy that routes many agents over them.

``start_replicas(engine_spec, count)`` starts ``count`` policy service actors (``agent.actor``) and
returns a ``ReplicaSet`` (handles, endpoints, client CURVE keys). ``ReplicaPolicy(endpoints)`` is the
control loop's ``Policy`` over them: one ``PolicyClient`` per replica, agents (the ``stream`` keyword)
sticky to replicas, failover and rebalancing. docs/replicas.md is the user's page.

Placement (Ray decides; nothing here picks nodes by hand):

* resources: ``num_gpus`` per replica (default one GPU each where the cluster has enough, a share of
  one where it has fewer GPUs than replicas, none without GPUs: ``replica_gpus``; a fraction shares a
  GPU between small models), ``config.num_cpus``, and optional Ray resources per
  replica (``resources=[{"replica_node_a": 1}, ...]``); replicas are spread over nodes (``SPREAD``).
* address: replicas bind the kind of address Ray's own nodes have. On a loopback Ray (``init_ray()``
  without an address: every node is 127.0.0.1) they bind a free 127.0.0.1 port and Ray's
  ``node:<driver IP>`` resource keeps them on this machine, on any of its nodes (``agent.actor``).
  On a cluster with real node addresses (``--ray-address``) they are *exposed*: a probe task placed
  by Ray with the replica's resources finds the node and a free port there; the replica binds that
  node's address and is kept on that address across restarts (``node:<IP>``), so its endpoint never
  changes; CURVE is on (keys made here, the server's sent to the actor, see ``actor.PolicyServiceActor``).

Failover (``ReplicaPolicy``), every decide answered exactly once by ``poll``:

* each replica has a heartbeat socket (a ping every ``heartbeat_ms``, answered by the service's I/O
  thread even while its engine decodes) with a ZMQ monitor on it. A replica is *lost* when its TCP
  connection drops (the process died: seen at once) or when it has been silent for ``down_after_ms``
  while another replica answered within that time (a hung process or a cut network), or when its
  pongs carry a new epoch (it restarted between two pings). Ray's own report of a dead actor is not
  waited for: the dropped connection comes first, and a hang is one Ray does not see.
* a lost replica's in-flight decides are answered here at once with ``ErrorReply(code="timeout",
  message="replica_down: ...")`` (``timeout`` is the code the control loop reads as "no decision",
  so the tick falls back), its client is dropped, and its agents go to the least loaded live
  replicas; their next decide goes there.
* when a lost replica answers pings again (Ray restarted it: ``max_restarts``), a fresh client says
  hello and registers every tool set in a background thread (the loop never waits for it), then the
  replica takes agents back until the assignment is balanced again (the fewest moves that balance it,
  its own former agents first).

Times are milliseconds on this process's monotonic clock.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import zmq
from tickcall.agent import protocol as P
from tickcall.agent.actor import (
    driver_ip,
    host_resource,
    launch_policy_service,
    resolve_bind,
    serve_config,
)
from tickcall.agent.client import PolicyClient, PolicyError, PolicyTimeout
from tickcall.agent.client_state import ClientRegistration, now_ms
from tickcall.agent.config import CurveConfig, ServeConfig
from tickcall.agent.messages import CallReply, DecideReply, ErrorReply, Ping
from tickcall.agent.security import is_local_endpoint

__all__ = ["DOWN_CODE", "ReplicaPolicy", "ReplicaRegistration", "ReplicaSet", "start_replicas"]

DOWN_CODE = "timeout"  # the control loop's "no decision" code: a lost replica's ticks fall back
DOWN_PREFIX = "replica_down"  # first word of those replies' message


# ---------------------------------------------------------------------------------------------- start


@dataclass
class ReplicaSet:
    """Started replicas: Ray handles, endpoints (same order), client CURVE keys when CURVE is on.

    ``curve``: ``{"server_public": FILE, "client_secret": FILE}`` for ``ReplicaPolicy``/``PolicyClient``
    (files in a private folder of this machine, removed by ``stop``). ``infos``: each actor's
    ``ready()`` at start (endpoint, epoch, pid, node_id, node_ip).
    """

    handles: list[Any]
    endpoints: list[str]
    curve: dict[str, str] | None = None
    infos: list[dict[str, Any]] = field(default_factory=list)
    key_dir: str | None = None

    def alive(self, timeout_s: float = 2.0) -> list[bool]:
        """Whether each actor answers Ray within ``timeout_s`` (s, all together)."""
        import ray

        refs = [h.ready.remote() for h in self.handles]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        ok = []
        for ref in refs:
            try:
                ok.append(ref in done and bool(ray.get(ref, timeout=0)))
            except Exception:  # RayActorError and kin: dead or restarting
                ok.append(False)
        return ok

    def stop(self) -> None:
        """Kill every replica (no restart) and remove the key folder."""
        import ray

        for handle in self.handles:
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)
        if self.key_dir:
            shutil.rmtree(self.key_dir, ignore_errors=True)
            self.key_dir = None


def _probe_node() -> tuple[str, int]:
    """Ray task body: this node's address and a port free on it (for an exposed replica)."""
    import socket

    import ray

    ip = ray.util.get_node_ip_address()
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return ip, int(s.getsockname()[1])


def _curve_keys() -> tuple[str, dict[str, Any], dict[str, str]]:
    """A private folder with server and client certificates: (folder, files for the actor, client keys)."""
    from tickcall.agent.security import generate_keys

    folder = tempfile.mkdtemp(prefix="tickcall-replica-keys-")
    generate_keys(folder, ("server", "client"))
    root = Path(folder)
    actor_files = {
        "server_secret": (root / "server.key_secret").read_text(encoding="utf-8"),
        "client_keys": {"client.key": (root / "client.key").read_text(encoding="utf-8")},
    }
    client = {"server_public": str(root / "server.key"), "client_secret": str(root / "client.key_secret")}
    return folder, actor_files, client


def replica_gpus(count: int, cluster_gpus: float) -> float:
    """The default GPUs per replica: 1 when the cluster has at least ``count`` GPUs; with fewer (but
    some), the share ``1/k`` where k = replicas per GPU (``ceil(count / GPUs)``: a fraction never spans
    two GPUs in Ray, so 3 replicas on 2 GPUs get 0.5 each, not 0.67); 0 without GPUs."""
    whole = int(cluster_gpus + 1e-9)
    if whole <= 0:
        return 0.0
    if whole >= count:
        return 1.0
    per_gpu = math.ceil(count / whole)
    return math.floor(1e4 / per_gpu) / 1e4  # Ray takes 4 decimals; never round up past the GPU


def _check_feasible(
    count: int, gpus: float, per_replica: list[dict[str, float]], cluster: dict[str, float]
) -> None:
    """ValueError (one line) for replicas no cluster node could ever hold: Ray would wait forever."""
    if gpus > 0 and count * gpus > cluster.get("GPU", 0) + 1e-9:
        raise ValueError(
            f"{count} replicas with num_gpus {gpus:g} need {count * gpus:g} GPUs, the Ray cluster has "
            f"{cluster.get('GPU', 0):g}: use fewer replicas, a fractional num_gpus (e.g. 0.5), or num_gpus 0"
        )
    for i, res in enumerate(per_replica):
        for key, amount in res.items():
            if not isinstance(amount, int | float) or amount <= 0:
                raise ValueError(f"resources[{i}][{key!r}] must be a positive number, got {amount!r}")
            if cluster.get(key, 0) < amount:
                raise ValueError(
                    f"resources[{i}] asks for {key!r}: {amount:g}, the Ray cluster has {cluster.get(key, 0):g} "
                    f"(start a node with --resources '{{\"{key}\": {amount:g}}}')"
                )


def start_replicas(
    engine_spec: dict[str, Any],
    count: int,
    *,
    config: ServeConfig | dict[str, Any] | None = None,
    num_gpus: float | None = None,
    timeout_s: float = 300.0,
    resources: list[dict[str, float]] | None = None,
    expose: bool | None = None,
    curve: bool | None = None,
) -> ReplicaSet:
    """Start ``count`` policy service actors on the running Ray; returns once every one serves.

    ``config``: the ServeConfig every replica shares (its ``engine`` replaced by ``engine_spec``; its
    bind's port is not used: each replica gets its own free port). ``num_gpus``: per replica (default
    ``config.num_gpus``, else ``replica_gpus``: one GPU each where the cluster has enough, a share of
    one where it has fewer GPUs than replicas, 0 without GPUs; e.g. 0.25 for four small models per
    GPU). ``resources``: one dict of Ray resources per replica (e.g. node resources of a cluster).
    ``expose``: bind an address other nodes reach (default: when Ray's nodes have non-loopback
    addresses). ``curve``: CURVE on the replicas (default: when exposed, unless ``allow_insecure`` or a
    CURVE config of your own). Raises ValueError for bad arguments, TimeoutError when they do not serve.
    """
    import ray

    if not isinstance(count, int) or count < 1:
        raise ValueError(f"replicas must be an integer >= 1, got {count!r}")
    if resources is not None and len(resources) != count:
        raise ValueError(f"resources: give one dict per replica ({count}), got {len(resources)}")
    if not ray.is_initialized():
        raise RuntimeError("policy replicas need Ray: call tickcall.cluster.init_ray() first")
    serve = serve_config(engine_spec, "tcp://127.0.0.1:0", config)
    if num_gpus is not None:
        gpus = float(num_gpus)
    elif serve.num_gpus is not None:
        gpus = float(serve.num_gpus)
    else:
        gpus = replica_gpus(count, ray.cluster_resources().get("GPU", 0))
    if gpus < 0:
        raise ValueError(f"num_gpus must be >= 0, got {gpus}")
    per_replica = [dict(r) for r in resources] if resources else [{} for _ in range(count)]
    _check_feasible(count, gpus, per_replica, ray.cluster_resources())
    exposed = (not is_local_endpoint(f"tcp://{driver_ip()}:1")) if expose is None else bool(expose)
    own_curve = serve.curve is not None and bool(serve.curve.server_secret)
    use_curve = (exposed and not serve.allow_insecure) if curve is None else bool(curve)
    key_dir, actor_files, client_curve = None, None, None
    if use_curve and not own_curve:
        key_dir, actor_files, client_curve = _curve_keys()
    binds: list[str] = []
    hosts: list[dict[str, float]] = []
    if exposed:
        probe = ray.remote(_probe_node)
        refs = [
            probe.options(
                num_cpus=serve.num_cpus,
                num_gpus=gpus,
                resources=per_replica[i] or None,
                scheduling_strategy="SPREAD",
            ).remote()
            for i in range(count)
        ]
        for ip, port in ray.get(refs, timeout=timeout_s):
            binds.append(f"tcp://[{ip}]:{port}" if ":" in ip else f"tcp://{ip}:{port}")
            hosts.append(host_resource(ip))
    else:
        binds = [resolve_bind("tcp://127.0.0.1:0") for _ in range(count)]
        hosts = [{} for _ in range(count)]  # launch_policy_service keeps loopback binds on this machine
    handles: list[Any] = []
    try:
        for i in range(count):
            cfg = ServeConfig.from_dict({**serve.to_dict(), "bind": binds[i]})
            handles.append(
                launch_policy_service(
                    cfg,
                    num_gpus=gpus,
                    resources={**per_replica[i], **hosts[i]},
                    scheduling_strategy="SPREAD",
                    curve_files=actor_files,
                )
            )
        infos = ray.get([h.ready.remote() for h in handles], timeout=timeout_s)
    except BaseException as exc:
        for handle in handles:
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)
        if key_dir:
            shutil.rmtree(key_dir, ignore_errors=True)
        if isinstance(exc, ray.exceptions.GetTimeoutError):
            raise TimeoutError(
                f"{count} policy replicas did not serve within {timeout_s:.0f} s (are there "
                f"resources for {gpus} GPU and {serve.num_cpus} CPU each?)"
            ) from None
        raise
    return ReplicaSet(
        handles=handles,
        endpoints=[info["endpoint"] for info in infos],
        curve=client_curve,
        infos=list(infos),
        key_dir=key_dir,
    )


# ---------------------------------------------------------------------------------------------- route


@dataclass
class ReplicaRegistration:
    """A tool set registered on every live replica (and again on each one that comes back).

    ``handle``/``heads``/``prefix_tokens``/``tool_names`` are the first replica's (every replica runs
    the same engine, so they agree); ``per_replica`` maps replica index -> its client's registration.
    """

    tools: list[Any]
    system: str | None
    template: str | None
    allow_no_call: bool
    handle: str | None = None
    heads: list[str] = field(default_factory=list)
    prefix_tokens: int = 0
    tool_names: list[str] = field(default_factory=list)
    per_replica: dict[int, ClientRegistration] = field(default_factory=dict)


@dataclass
class _Pending:
    gid: int
    stream: str
    tick: int


class _Heartbeat:
    """A DEALER that pings one replica, with a ZMQ monitor that reports its connection dropping."""

    def __init__(self, ctx: zmq.Context, endpoint: str, curve: CurveConfig | None) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 4)  # pings queued while it is down: a few are enough
        self.sock.setsockopt(zmq.RECONNECT_IVL, 50)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 250)
        if curve is not None:
            from tickcall.agent.security import setup_client_curve

            setup_client_curve(self.sock, curve)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.sock.connect(endpoint)
        self._ids = itertools.count(1)
        self.sent_ms = -1e18
        self.unanswered_ms: float | None = None  # send time of the oldest ping not answered since

    def ping(self, now: float) -> None:
        with contextlib.suppress(zmq.Again):
            self.sock.send(P.encode(Ping(id=next(self._ids), sent_ms=now)), zmq.NOBLOCK)
        self.sent_ms = now
        if self.unanswered_ms is None:
            self.unanswered_ms = now

    def silent_ms(self, now: float) -> float:
        """How long a ping has gone unanswered (0 when every ping sent was answered)."""
        return 0.0 if self.unanswered_ms is None else now - self.unanswered_ms

    def epochs(self) -> list[str]:
        """Epochs of the replies received since the last call (pongs); any reply answers the pings."""
        out = []
        while self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                out.append(P.decode_reply(self.sock.recv()).epoch)
            except P.ProtocolError:
                continue
        if out:
            self.unanswered_ms = None
        return out

    def dropped(self) -> bool:
        """True when the connection dropped since the last call."""
        from zmq.utils.monitor import recv_monitor_message

        seen = False
        while self.monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            event = recv_monitor_message(self.monitor)
            seen = seen or event["event"] == zmq.EVENT_DISCONNECTED
        return seen

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)


@dataclass
class _Replica:
    index: int
    endpoint: str
    beat: _Heartbeat
    client: PolicyClient | None
    up: bool = True
    heard_ms: float = 0.0  # last pong from it
    down_ms: float | None = None  # when it was lost
    epoch: str | None = None
    outs: dict[int, _Pending] = field(default_factory=dict)  # its client's message id -> decide
    rejoin: Future | None = None  # the background hello + register of a replica that came back
    rejoin_ms: float = 0.0  # when that started
    sent: int = 0
    answered: int = 0
    lost: int = 0
    back: int = 0


def _join(
    endpoint: str, timeout_ms: float, curve: CurveConfig | None, name: str, regs: list[ReplicaRegistration]
) -> tuple[PolicyClient, list[ClientRegistration]]:
    """A fresh client of a replica that came back, with every tool set registered (background thread)."""
    client = PolicyClient(endpoint, timeout_ms, curve, name=name)
    try:
        client.hello(timeout_ms)
        per = [client.register(r.tools, r.system, r.template, timeout_ms, r.allow_no_call) for r in regs]
    except BaseException:
        client.close()
        raise
    return client, per


def _close_joined(future: Future) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result()[0].close()


class ReplicaPolicy:
    """The control loop's ``Policy`` over several policy service replicas (module docstring).

    Agents are the ``stream`` of ``send_decide``: each is assigned to one replica on its first decide
    (the least loaded) and stays there until that replica is lost or the set is rebalanced. Ids are
    this object's own (unique across replicas); every id is answered exactly once by ``poll``.
    ``timeout_ms``: a decide's client-side timeout; ``heartbeat_ms``: ping period; ``down_after_ms``:
    silence after which a replica is lost while another answers. Not thread-safe: one per loop.
    """

    def __init__(
        self,
        endpoints: list[str],
        *,
        timeout_ms: float = 5000.0,
        curve: dict | None = None,
        name: str = "tickcall-crowd",
        heartbeat_ms: float = 100.0,
        down_after_ms: float = 500.0,
    ) -> None:
        if not endpoints:
            raise ValueError("ReplicaPolicy needs at least one endpoint")
        self.timeout_ms = float(timeout_ms)
        self.heartbeat_ms = float(heartbeat_ms)
        self.down_after_ms = float(down_after_ms)
        self.curve = CurveConfig(**curve) if isinstance(curve, dict) else curve
        self.name = name
        ctx = zmq.Context.instance()
        self.replicas = [
            _Replica(i, ep, _Heartbeat(ctx, ep, self.curve), self._client(i, ep))
            for i, ep in enumerate(endpoints)
        ]
        self._pool = ThreadPoolExecutor(max_workers=len(endpoints), thread_name_prefix="replica-rejoin")
        self._assign: dict[str, int] = {}
        self._home: dict[str, int] = {}  # agent -> the replica it was first assigned to
        self._regs: list[ReplicaRegistration] = []
        self._ids = itertools.count(1)
        self._ready: list[DecideReply] = []
        self._poller = zmq.Poller()
        self._polled: tuple[zmq.Socket, ...] = ()
        self._moved_at: dict[str, float] = {}  # agent -> when it was moved off a lost replica
        self._stats: dict[str, Any] = {
            "moves": 0,
            "lost": 0,
            "back": 0,
            "down_replies": 0,
            "late_dropped": 0,
            "move_ms": [],
            "events": [],
        }

    def _client(self, i: int, endpoint: str) -> PolicyClient:
        return PolicyClient(endpoint, self.timeout_ms, self.curve, name=f"{self.name}/{i}")

    # ------------------------------------------------------------------ setup
    def hello(self, timeout_ms: float | None = None) -> Any:
        """Handshake with every replica; the first one's ``Welcome``. Replicas that do not answer are
        lost (their agents go elsewhere); raises the last error when none answers."""
        first, error = None, None
        for rep in self.replicas:
            if rep.client is None:
                continue
            try:
                welcome = rep.client.hello(timeout_ms)
            except (PolicyTimeout, PolicyError) as exc:
                error = exc
                self._lose(rep, f"hello failed: {exc}")
                continue
            rep.epoch = welcome.epoch
            first = first or welcome
        if first is None:
            raise error or PolicyTimeout("no replica answered hello")
        return first

    def register(
        self,
        tools: list[dict],
        timeout_ms: float | None = None,
        *,
        system: str | None = None,
        template: str | None = None,
        allow_no_call: bool = False,
    ) -> ReplicaRegistration:
        """Register a tool set on every live replica (kept, and registered on each replica that comes
        back). The last registration is the one ``send_decide`` uses. Raises ``PolicyError`` when the
        tool set is refused (e.g. ``illegal_tools``), ``PolicyTimeout`` when no replica answers."""
        reg = ReplicaRegistration(
            tools=list(tools), system=system, template=template, allow_no_call=allow_no_call
        )
        error: Exception | None = None
        for rep in self.replicas:
            if rep.client is None:
                continue
            try:
                creg = rep.client.register(tools, system, template, timeout_ms, allow_no_call)
            except PolicyTimeout as exc:
                error = exc
                self._lose(rep, f"register timed out: {exc}")
                continue
            except PolicyError as exc:
                raise exc  # the tool set itself is refused: every replica would say the same
            reg.per_replica[rep.index] = creg
            if reg.handle is None:
                reg.handle, reg.heads, reg.prefix_tokens = creg.handle, list(creg.heads), creg.prefix_tokens
                reg.tool_names = list(creg.tool_names)
        if not reg.per_replica:
            raise error or PolicyTimeout("no live replica to register with")
        self._regs.append(reg)
        return reg

    # ------------------------------------------------------------------ decisions
    def send_decide(self, turn: Any, tick_id: int, deadline_ms: float | None = None, *, stream: str) -> int:
        """Send one agent's decide to its replica; returns an id unique across replicas at once."""
        if not self._regs:
            raise RuntimeError("register tools before send_decide")
        if not isinstance(stream, str) or not stream:
            raise ValueError(f"send_decide needs the agent as stream=NAME (a non-empty str), got {stream!r}")
        gid = next(self._ids)
        pending = _Pending(gid, str(stream), int(tick_id))
        rep = self.replicas[self._route(pending.stream)]
        creg = self._regs[-1].per_replica.get(rep.index)
        if rep.client is None or creg is None:  # every replica is lost: fall back at once
            self._answer_down(pending, rep, "no live replica")
            return gid
        local = rep.client.send_decide(turn, tick_id, deadline_ms, reg=creg, stream=pending.stream)
        rep.outs[local] = pending
        rep.sent += 1
        return gid

    def poll(self, timeout_ms: float = 0) -> list[DecideReply]:
        """Replies that are ready (ids as ``send_decide`` returned), waiting up to ``timeout_ms``."""
        end = now_ms() + max(0.0, float(timeout_ms))
        while True:
            self._service()
            now = now_ms()
            if self._ready or now >= end:
                break
            self._wait(min(end - now, self.heartbeat_ms))
        out, self._ready = self._ready, []
        return out

    def _wait(self, wait_ms: float) -> None:
        """Wait up to ``wait_ms`` for any replica's reply, pong or connection event."""
        socks = tuple(
            sock
            for r in self.replicas
            for sock in (r.beat.sock, r.beat.monitor, r.client.socket if r.client is not None else None)
            if sock is not None
        )
        if socks != self._polled:  # a Poller is kept while the sockets stay (a client reset changes one)
            self._poller = zmq.Poller()
            for sock in socks:
                self._poller.register(sock, zmq.POLLIN)
            self._polled = socks
        self._poller.poll(max(1, int(wait_ms)))

    # ------------------------------------------------------------------ routing
    def _route(self, stream: str) -> int:
        index = self._assign.get(stream)
        if index is None:
            index = self._least_loaded(self._live() or list(range(len(self.replicas))))
            self._assign[stream] = self._home[stream] = index
        return index

    def _live(self) -> list[int]:
        return [r.index for r in self.replicas if r.up]

    def _loads(self) -> dict[int, int]:
        loads = {r.index: 0 for r in self.replicas}
        for index in self._assign.values():
            loads[index] += 1
        return loads

    def _least_loaded(self, candidates: list[int]) -> int:
        loads = self._loads()
        return min(candidates, key=lambda i: (loads[i], i))

    def _move(self, agent: str, to: int, lost: bool) -> None:
        self._assign[agent] = to
        self._stats["moves"] += 1
        if lost:
            self._moved_at[agent] = now_ms()

    def _rebalance(self) -> None:
        """Agents of lost replicas to the least loaded live ones, then the fewest moves that balance."""
        live = self._live()
        if not live:
            return
        for agent in sorted(a for a, i in self._assign.items() if i not in live):
            self._move(agent, self._least_loaded(live), lost=True)
        while True:
            loads = {i: n for i, n in self._loads().items() if i in live}
            hi = max(live, key=lambda i: (loads[i], -i))
            lo = min(live, key=lambda i: (loads[i], i))
            if loads[hi] - loads[lo] <= 1:
                return
            # an agent whose first replica is ``lo`` goes home first (its per-agent caches live there)
            agent = max(
                (a for a, i in self._assign.items() if i == hi), key=lambda a: (self._home[a] == lo, a)
            )
            self._move(agent, lo, lost=False)

    # ------------------------------------------------------------------ health
    def _service(self) -> None:
        """Read heartbeats and monitors, collect replies, lose silent replicas, take back returning ones."""
        now = now_ms()
        for rep in self.replicas:
            if rep.beat.dropped():
                if rep.up:
                    self._lose(rep, "its connection dropped")
                else:
                    rep.down_ms = now  # it must answer after this drop to count as back
            epochs = rep.beat.epochs()
            if epochs:
                rep.heard_ms = now
                if rep.up and rep.epoch is not None and epochs[-1] != rep.epoch:
                    self._lose(rep, "it restarted (new epoch)")
                if rep.up:
                    rep.epoch = epochs[-1]
            if now - rep.beat.sent_ms >= self.heartbeat_ms:
                rep.beat.ping(now)
            if rep.client is not None:
                self._collect(rep, now)
        # silence counts from an unanswered ping, so a loop that did not poll for a while (no pings
        # sent) loses nobody; and only while another replica answers (else moving helps no one)
        silent = {r.index: r.beat.silent_ms(now) for r in self.replicas if r.up}
        if any(ms <= self.down_after_ms for ms in silent.values()):
            for rep in self.replicas:
                if rep.up and silent[rep.index] > self.down_after_ms:
                    self._lose(rep, f"no pong for {silent[rep.index]:.0f} ms while others answer")
        for rep in self.replicas:
            if not rep.up:
                self._try_rejoin(rep)

    def _collect(self, rep: _Replica, now: float) -> None:
        assert rep.client is not None
        replies = rep.client.poll(0)
        for reply in replies:
            pending = rep.outs.pop(reply.id, None) if isinstance(reply.id, int) else None
            if pending is None:
                self._stats["late_dropped"] += 1
                continue
            rep.answered += 1
            moved = self._moved_at.pop(pending.stream, None) if isinstance(reply, CallReply) else None
            if moved is not None:
                self._stats["move_ms"].append(round(now - moved, 3))
            self._ready.append(msgspec.structs.replace(reply, id=pending.gid))

    def _answer_down(self, pending: _Pending, rep: _Replica, why: str) -> None:
        self._stats["down_replies"] += 1
        self._ready.append(
            ErrorReply(
                id=pending.gid,
                epoch=rep.epoch or "",
                code=DOWN_CODE,
                message=f"{DOWN_PREFIX}: replica {rep.index} ({why})",
                tick=pending.tick,
            )
        )

    def _lose(self, rep: _Replica, why: str) -> None:
        """Answer its in-flight decides, drop its client, move its agents to live replicas."""
        if not rep.up:
            return
        rep.up, rep.down_ms, rep.lost = False, now_ms(), rep.lost + 1
        self._stats["lost"] += 1
        self._stats["events"].append(
            {
                "replica": rep.index,
                "lost": why,
                "agents": self._loads()[rep.index],
                "at_ms": round(rep.down_ms, 3),
            }
        )
        for pending in rep.outs.values():
            self._answer_down(pending, rep, why)
        rep.outs.clear()
        if rep.client is not None:
            rep.client.close()
            rep.client = None
        self._rebalance()

    def _try_rejoin(self, rep: _Replica) -> None:
        """A lost replica that answers pings again gets a fresh, registered client (in the background)."""
        if rep.rejoin is None:
            if rep.down_ms is not None and rep.heard_ms > rep.down_ms:
                rep.rejoin_ms = now_ms()
                rep.rejoin = self._pool.submit(
                    _join,
                    rep.endpoint,
                    self.timeout_ms,
                    self.curve,
                    f"{self.name}/{rep.index}",
                    list(self._regs),
                )
            return
        if not rep.rejoin.done():
            return
        future, rep.rejoin = rep.rejoin, None
        try:
            client, per = future.result()
        except Exception:
            rep.down_ms = now_ms()  # try again on its next pong
            return
        if (
            len(per) != len(self._regs) or (rep.down_ms or 0) > rep.rejoin_ms
        ):  # new tool set, or dropped again
            client.close()
            return
        for reg, creg in zip(self._regs, per, strict=True):
            reg.per_replica[rep.index] = creg
        rep.client, rep.up, rep.epoch, rep.back = client, True, client.epoch, rep.back + 1
        rep.heard_ms = now_ms()
        self._stats["back"] += 1
        self._stats["events"].append({"replica": rep.index, "back": True, "at_ms": round(rep.heard_ms, 3)})
        self._rebalance()

    # ------------------------------------------------------------------ introspection
    @property
    def epoch(self) -> str | None:
        """The epoch of the first live replica (each replica has its own; ``stats`` lists them)."""
        return next((r.epoch for r in self.replicas if r.up and r.epoch), None)

    def assignments(self) -> dict[str, int]:
        """Agent (stream) -> replica index."""
        return dict(self._assign)

    def stats(self) -> dict[str, Any]:
        """Moves, replicas lost/back, per-replica counts, and ``move_ms``: for each agent moved off a lost
        replica, the time (ms) from the loss to its first call served by its new replica."""
        loads = self._loads()
        return {
            **{k: (list(v) if isinstance(v, list) else v) for k, v in self._stats.items()},
            "replicas": [
                {
                    "endpoint": r.endpoint,
                    "up": r.up,
                    "agents": loads[r.index],
                    "sent": r.sent,
                    "answered": r.answered,
                    "in_flight": len(r.outs),
                    "lost": r.lost,
                    "back": r.back,
                    "epoch": r.epoch,
                    "client": dict(r.client.stats) if r.client is not None else {},
                }
                for r in self.replicas
            ],
        }

    def close(self) -> None:
        """Close every client and heartbeat; decides still in flight are not answered."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        for rep in self.replicas:
            if rep.rejoin is not None:  # a client being joined in the background is closed when it is done
                rep.rejoin.add_done_callback(_close_joined)
            if rep.client is not None:
                rep.client.close()
                rep.client = None
            rep.beat.close()

    def __enter__(self) -> ReplicaPolicy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
