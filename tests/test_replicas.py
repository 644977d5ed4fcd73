"""Policy service replicas (issue 18): real service actors placed by Ray, real ZMQ sockets, real kills.

* the router over two real policy servers in this process (no Ray, about 2 s): a stopped server is
  lost, new agents go to the live one, with none live every decide is answered at once, and servers
  started again on their endpoints take agents back (their own first).
* two replicas on a local Ray: 16 agents sticky and balanced; one replica killed by Ray mid-run (a
  process death: its connection drops) -> its agents move to the other one, their in-flight decides
  are answered at once, the other serves them; Ray restarts it -> the agents go home. Then the other
  replica is frozen (SIGSTOP: it stays connected but stops answering) -> lost by its silence, its
  agents move, and it takes them back once thawed.
* a real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head and two worker
  nodes with the resources ``replica_node_a``/``replica_node_b``) started under
  ``tickcall.cluster.loopback_node()``, so every node and every socket is on 127.0.0.1. The replicas
  are started the way ``--ray-address`` starts them (``expose=True``: a probe task finds each
  replica's node and a free port there, CURVE on with keys made by ``start_replicas``); the only
  difference from a cluster of machines is the node address. One worker node is removed mid-run ->
  its agents move to the replica on the other node.

Every test checks the accounting: each id ``send_decide`` returned is answered exactly once by
``poll``. Move times (loss -> first call served by the new replica, and each agent's gap without calls)
are measured and printed, never asserted (CI is noisy).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest
from helpers import CART_TOOLS
from polling import wait_for
from tickcall.agent.messages import CallReply, ErrorReply

ray = pytest.importorskip("ray")

AGENTS = [f"npc_{i}" for i in range(16)]
PERIOD_S = 0.05  # 20 Hz ticks


class Driver:
    """Ticks every agent through a ReplicaPolicy and keeps the books: who was sent what, every reply."""

    def __init__(self, policy, agents: list[str] = AGENTS):
        self.policy = policy
        self.agents = list(agents)
        self.tick = 0
        self.sent: dict[int, str] = {}  # id -> agent
        self.replies: dict[int, object] = {}
        self.got_at: dict[int, float] = {}  # id -> monotonic s of its reply
        self.sent_at: dict[int, float] = {}

    def run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.monotonic()
            for agent in self.agents:
                msg_id = self.policy.send_decide(
                    {"query": f"{agent} tick {self.tick}"}, self.tick, 40.0, stream=agent
                )
                assert msg_id not in self.sent, "ids are unique across replicas"
                self.sent[msg_id] = agent
                self.sent_at[msg_id] = t0
            self.tick += 1
            self._collect(t0 + PERIOD_S)

    def _collect(self, until: float) -> None:
        while True:
            left = until - time.monotonic()
            for reply in self.policy.poll(max(left, 0) * 1e3):
                assert reply.id in self.sent, f"reply to an id never sent: {reply.id}"
                assert reply.id not in self.replies, f"id {reply.id} answered twice"
                self.replies[reply.id] = reply
                self.got_at[reply.id] = time.monotonic()
            if left <= 0:
                return

    def drain(self, timeout_s: float = 10.0) -> None:
        end = time.monotonic() + timeout_s
        while len(self.replies) < len(self.sent) and time.monotonic() < end:
            self._collect(time.monotonic() + 0.05)
        missing = sorted(set(self.sent) - set(self.replies))
        assert not missing, f"{len(missing)} decides never answered"

    def failover(self, agents: set[str], t: float, old: str, new: str, lost_ms: float, what: str) -> None:
        """Check that the replica of epoch ``new`` answered every one of ``agents`` a call sent after ``t``
        (s) and print the times: ``t`` -> the policy lost the old replica (``lost_ms``, monotonic ms),
        the loss -> each agent's first call from the new one, and each agent's gap between its last call
        from the old replica and its first from the new one (the time it went without calls)."""
        last_old: dict[str, float] = {}
        first_new: dict[str, float] = {}
        for msg_id in sorted(self.replies):
            agent, reply = self.sent[msg_id], self.replies[msg_id]
            if agent not in agents or not isinstance(reply, CallReply):
                continue
            if reply.epoch == old:
                last_old[agent] = self.got_at[msg_id]
            elif reply.epoch == new and self.sent_at[msg_id] >= t and agent not in first_new:
                first_new[agent] = self.got_at[msg_id]
        assert set(first_new) == agents, "the other replica served every moved agent"
        lost = lost_ms / 1e3
        served = max(first_new.values()) - lost
        gap = max(first_new[a] - last_old.get(a, t) for a in agents)
        print(
            f"\n{what}: lost after {(lost - t) * 1e3:.0f} ms, loss -> all {len(agents)} agents served by "
            f"the other replica {served * 1e3:.0f} ms, longest gap without calls {gap * 1e3:.0f} ms"
        )


def _loads(assign: dict[str, int], n: int) -> list[int]:
    counts = Counter(assign.values())
    return [counts.get(i, 0) for i in range(n)]


def test_default_gpus_per_replica_fit_the_cluster():
    """One GPU each where there are enough; else replicas share GPUs in fractions Ray can place (a
    fraction never spans two GPUs: 3 replicas on 2 GPUs get 0.5 each); none without GPUs."""
    from tickcall.agent.replicas import replica_gpus

    cases = {(2, 0): 0, (2, 2): 1, (1, 8): 1, (2, 1): 0.5, (3, 2): 0.5, (4, 1): 0.25, (3, 1): 0.3333}
    for (count, gpus), want in cases.items():
        got = replica_gpus(count, gpus)
        assert got == want, (count, gpus, got)
        if gpus:  # what Ray would do: whole replicas per GPU, every replica placed
            assert (1 // got if got < 1 else 1) * gpus >= count


def _server(bind: str = "tcp://127.0.0.1:0"):
    from tickcall.agent.config import ServeConfig
    from tickcall.agent.server import PolicyServer
    from tickcall.models.stand_ins import NoOpEngine

    server = PolicyServer(NoOpEngine(), ServeConfig(bind=bind))
    return server, server.start()


def test_router_moves_and_rebalances_over_real_servers_without_ray():
    """The routing rules over two real policy servers in this process (no Ray: fast): a stopped server
    (its socket closes) is lost, a new agent goes to the live one, with every replica lost decides are
    answered at once, and servers started again on the same endpoints get their agents back."""
    from tickcall.agent.replicas import ReplicaPolicy

    (s0, ep0), (s1, ep1) = _server(), _server()
    policy = ReplicaPolicy([ep0, ep1], timeout_ms=2000, heartbeat_ms=20, down_after_ms=200)
    servers = [s0, s1]
    try:
        policy.hello()
        policy.register(CART_TOOLS)
        drive = Driver(policy, AGENTS[:6])
        drive.run(0.1)
        home = policy.assignments()
        assert _loads(home, 2) == [3, 3]
        s0.stop()
        assert wait_for(lambda: (drive.run(0.02), policy.stats()["lost"] == 1)[1], 5)
        assert _loads(policy.assignments(), 2) == [0, 6]
        drive.agents = AGENTS[:7]  # a new agent while replica 0 is lost goes to replica 1
        drive.run(0.05)
        assert policy.assignments()["npc_6"] == 1
        s1.stop()
        assert wait_for(lambda: (drive.run(0.02), policy.stats()["lost"] == 2)[1], 5)
        before = policy.stats()["down_replies"]
        drive.run(0.05)  # no live replica: every decide is answered at once, "replica_down"
        assert policy.stats()["down_replies"] >= before + 7
        servers[0], _ = _server(ep0)  # the same endpoint again: a new epoch
        assert wait_for(lambda: (drive.run(0.02), policy.stats()["back"] == 1)[1], 5)
        assert _loads(policy.assignments(), 2) == [7, 0]
        servers[1], _ = _server(ep1)
        assert wait_for(lambda: (drive.run(0.02), policy.stats()["back"] == 2)[1], 5)
        final = policy.assignments()
        assert sorted(_loads(final, 2)) == [3, 4]
        # the 3 moved back are agents whose first replica was 1 (home first): of npc_1/3/5 and npc_6
        assert {a for a, i in final.items() if i == 1} < {a for a, i in home.items() if i == 1} | {"npc_6"}
        drive.run(0.1)
        drive.drain()
        calls = [r for r in drive.replies.values() if isinstance(r, CallReply)]
        assert {r.epoch for r in calls} >= {servers[0].epoch, servers[1].epoch}  # both new servers served
    finally:
        policy.close()
        for server in servers:
            server.stop()


@pytest.fixture
def local_ray():
    from tickcall.cluster import ray_session

    with ray_session(num_cpus=2, logging_level="ERROR"):
        yield


@pytest.mark.slow
def test_replica_killed_and_frozen_agents_move_and_come_back(local_ray):
    from tickcall.agent.replicas import ReplicaPolicy, start_replicas

    # replicas no node could hold are refused in one line, before anything starts (Ray would wait forever)
    with pytest.raises(ValueError, match="need 2 GPUs, the Ray cluster has 0"):
        start_replicas({"backend": "noop"}, 2, num_gpus=1)
    with pytest.raises(ValueError, match="asks for 'replica_node_a'"):
        start_replicas({"backend": "noop"}, 2, resources=[{"replica_node_a": 1}, {}])
    with pytest.raises(ValueError, match="integer >= 1"):
        start_replicas({"backend": "noop"}, 0)
    replicas = start_replicas({"backend": "random", "seed": 1}, 2, config={"num_cpus": 0})
    policy = ReplicaPolicy(replicas.endpoints, timeout_ms=2000, name="test-crowd")
    try:
        assert replicas.curve is None  # a loopback Ray: loopback binds, no CURVE
        assert all(ep.startswith("tcp://127.0.0.1:") for ep in replicas.endpoints)
        assert policy.hello().epoch
        reg = policy.register(CART_TOOLS)
        assert reg.heads == ["function", "arg1"] and set(reg.per_replica) == {0, 1}
        drive = Driver(policy)
        drive.run(0.3)
        home = policy.assignments()
        assert set(home) == set(AGENTS) and _loads(home, 2) == [8, 8]  # balanced
        drive.run(0.2)
        assert policy.assignments() == home  # sticky
        assert policy.stats()["moves"] == 0

        # 1. a process death: Ray kills replica 0 (and restarts it)
        victims = {a for a, i in home.items() if i == 0}
        killed_at = time.monotonic()
        ray.kill(replicas.handles[0], no_restart=False)
        assert wait_for(lambda: (drive.run(PERIOD_S), policy.stats()["lost"] == 1)[1], 10)
        moved = policy.assignments()
        assert all(moved[a] == 1 for a in AGENTS)  # every agent on the live replica
        drive.run(0.3)
        epochs = [info["epoch"] for info in replicas.infos]
        lost_ms = policy.stats()["events"][0]["at_ms"]
        drive.failover(victims, killed_at, epochs[0], epochs[1], lost_ms, "ray.kill of replica 0")
        # Ray restarts it (a new epoch): the client registers again and the agents go home
        assert wait_for(lambda: (drive.run(PERIOD_S), policy.stats()["back"] == 1)[1], 30)
        assert policy.assignments() == home
        stats = policy.stats()
        assert stats["moves"] == 16 and stats["lost"] == 1  # 8 out, the same 8 back
        restarted = ray.get(replicas.handles[0].ready.remote())
        assert (
            restarted["pid"] != replicas.infos[0]["pid"] and restarted["epoch"] != replicas.infos[0]["epoch"]
        )

        # 2. a hung process: replica 1 stops answering (still connected) -> lost by silence
        victims = {a for a, i in home.items() if i == 1}
        pid = replicas.infos[1]["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            frozen_at = time.monotonic()
            assert wait_for(lambda: (drive.run(PERIOD_S), policy.stats()["lost"] == 2)[1], 10)
            assert all(i == 0 for i in policy.assignments().values())
            drive.run(0.3)
            lost_ms = policy.stats()["events"][-1]["at_ms"]
            drive.failover(victims, frozen_at, epochs[1], restarted["epoch"], lost_ms, "SIGSTOP of replica 1")
        finally:
            os.kill(pid, signal.SIGCONT)
        assert wait_for(lambda: (drive.run(PERIOD_S), policy.stats()["back"] == 2)[1], 10)
        assert policy.assignments() == home
        drive.drain()
        codes = Counter(r.code if isinstance(r, ErrorReply) else "call" for r in drive.replies.values())
        down = [
            r for r in drive.replies.values() if isinstance(r, ErrorReply) and "replica_down" in r.message
        ]
        assert len(down) == policy.stats()["down_replies"]
        assert all(r.code == "timeout" for r in down)  # the loop reads it as "no decision": it falls back
        print(f"{len(drive.sent)} decides, replies {dict(codes)}, stats moves {policy.stats()['moves']}")
        assert set(codes) <= {"call", "timeout", "expired", "superseded"}  # no decision, never an error
    finally:
        policy.close()
        replicas.stop()


@pytest.mark.slow
def test_multi_node_cluster_replicas_on_two_nodes_node_removed():
    from ray.cluster_utils import Cluster
    from tickcall.agent.client import PolicyClient, PolicyTimeout
    from tickcall.agent.replicas import ReplicaPolicy, start_replicas

    from tickcall.cluster import init_ray, loopback_node

    assert not ray.is_initialized()
    with loopback_node():
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        node_a = cluster.add_node(num_cpus=1, resources={"replica_node_a": 1})
        node_b = cluster.add_node(num_cpus=1, resources={"replica_node_b": 1})
    policy = replicas = None
    try:
        assert init_ray(address=cluster.address, logging_level="ERROR")  # a loopback address: joins as such
        replicas = start_replicas(
            {"backend": "noop"},
            2,
            config={"num_cpus": 0},
            resources=[{"replica_node_a": 1}, {"replica_node_b": 1}],
            expose=True,
        )
        nodes = [info["node_id"] for info in replicas.infos]
        assert nodes == [node_a.node_id, node_b.node_id]  # one replica on each worker node
        assert replicas.curve is not None  # exposed: CURVE on, keys made here
        # CURVE is really on: a client without the server's key gets nothing back
        stranger = PolicyClient(replicas.endpoints[0], timeout_ms=300)
        with pytest.raises(PolicyTimeout):
            stranger.hello()
        stranger.close()

        policy = ReplicaPolicy(replicas.endpoints, timeout_ms=2000, curve=replicas.curve)
        policy.hello()
        policy.register(CART_TOOLS)
        drive = Driver(policy)
        drive.run(0.3)
        home = policy.assignments()
        assert _loads(home, 2) == [8, 8]
        victims = {a for a, i in home.items() if i == 0}
        removed_at = time.monotonic()
        cluster.remove_node(node_a, allow_graceful=False)
        assert wait_for(lambda: (drive.run(PERIOD_S), policy.stats()["lost"] == 1)[1], 15)
        assert all(i == 1 for i in policy.assignments().values())
        drive.run(0.3)
        epochs = [info["epoch"] for info in replicas.infos]
        lost_ms = policy.stats()["events"][0]["at_ms"]
        drive.failover(victims, removed_at, epochs[0], epochs[1], lost_ms, "node a removed")
        drive.drain()
        assert replicas.alive(timeout_s=1.0) == [False, True]  # its node is gone: Ray cannot restart it
        assert policy.stats()["back"] == 0
    finally:
        if policy is not None:
            policy.close()
        if replicas is not None:
            replicas.stop()
        ray.shutdown()
        cluster.shutdown()
