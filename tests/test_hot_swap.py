"""Hot swap of a policy service's weights behind the same registrations (agent/server.py ``swap``,
``PolicyServiceActor.swap``), on a real Ray actor, a real ZMQ socket and real transformers engines.

The weights are two tiny randomly initialised Qwen2 folders (``models.tiny.make_tiny_model``, seeds 0
and 1): what they decide does not matter, only which of them answered (``CallReply.weights``, the
model folder's name). A broken folder is a folder with a config that is not JSON. Assertions are on
accounting (every decide answered, once, by exactly one set of weights) and order, never on speed.
"""

from __future__ import annotations

import contextlib
import time

import pytest
from helpers import CART_TOOLS
from tickcall.agent.messages import CallReply

ray = pytest.importorskip("ray")

RATE_HZ = 20.0


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Two tiny model folders, ``old`` and ``new`` (different random weights, same tokenizer)."""
    from tickcall.models.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("swap")
    old = make_tiny_model(root / "old", seed=0, init_std=0.2, tie_embeddings=False)
    new = make_tiny_model(root / "new", seed=1, init_std=0.2, tie_embeddings=False)
    broken = root / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    return str(old), str(new), str(broken)


@pytest.fixture(scope="module")
def service(ray_session, weights):
    from tickcall.agent.actor import start_policy_service

    old, _, _ = weights
    actor, endpoint = start_policy_service(
        {"backend": "transformers", "model": old, "device": "cpu", "max_new_tokens": 8},
        "tcp://127.0.0.1:0",
        max_restarts=0,
        num_cpus=0,
    )
    yield actor, endpoint
    with contextlib.suppress(Exception):
        ray.get(actor.stop.remote(), timeout=10)
    with contextlib.suppress(Exception):
        ray.kill(actor, no_restart=True)


def _decide_while(client, ref, after_s: float) -> list:
    """Decide at RATE_HZ (blocking decides, one per period) until ``ref`` is done and ``after_s`` more."""
    replies, tick, done_at = [], 0, None
    period = 1.0 / RATE_HZ
    next_t = time.monotonic()
    while done_at is None or time.monotonic() < done_at + after_s:
        replies.append(
            client.decide({"query": f"tick {tick}"}, tick_id=tick, deadline_ms=5000, timeout_ms=10000)
        )
        tick += 1
        if done_at is None and ray.wait([ref], timeout=0)[0]:
            done_at = time.monotonic()
        next_t += period
        time.sleep(max(0.0, next_t - time.monotonic()))
    return replies


def test_a_hot_swap_under_load_answers_every_decide_old_weights_then_new(service, weights):
    from tickcall.agent.client import PolicyClient

    actor, endpoint = service
    _, new, _ = weights
    client = PolicyClient(endpoint, timeout_ms=10000, name="swap-test")
    try:
        reg = client.register(CART_TOOLS)
        handle, epoch = reg.handle, client.epoch
        before = [client.decide({"query": "warm"}, tick_id=-1, deadline_ms=5000) for _ in range(3)]
        assert {r.weights for r in before} == {"old"}
        ref = actor.swap.remote(new)
        replies = _decide_while(client, ref, after_s=0.5)
        result = ray.get(ref)
    finally:
        client.close()
    assert result["ok"], result
    assert result["weights"] == "new" and result["previous"] == "old" and result["registrations"] >= 1
    assert result["warm_ms"] > 0 and not result["dropped"]
    print(
        f"swap: {len(replies)} decides, warm {result['warm_ms']:.0f} ms, pause {result['switch_ms']:.2f} ms"
    )
    # every decide answered with a call (no error, no timeout), by exactly one set of weights, in order
    assert all(isinstance(r, CallReply) for r in replies), [getattr(r, "code", None) for r in replies]
    assert [r.tick for r in replies] == list(range(len(replies)))
    names = [r.weights for r in replies]
    switch = names.index("new")
    assert switch >= 1  # the swap happened mid-stream: the old weights answered first (loading takes ms)
    assert set(names[:switch]) <= {"old"} and set(names[switch:]) == {"new"}
    # the same registration throughout: same handle, same epoch, never registered again
    assert {r.handle for r in replies} == {handle} and client.epoch == epoch
    assert client.stats["renewals"] == 0 and client.stats["resent"] == 0 and client.stats["timeouts"] == 0
    stats = ray.get(actor.stats.remote())
    assert stats["swaps"] >= 1  # (the client said bye: its registration is gone now)
    assert ray.get(actor.ready.remote())["engine"]["model"].endswith("new")  # welcome/info follow the swap


def test_a_swap_to_a_broken_folder_leaves_the_old_weights_serving(service, weights):
    from tickcall.agent.actor import swap_policy_service
    from tickcall.agent.client import PolicyClient

    actor, endpoint = service
    _, _, broken = weights
    serving = ray.get(actor.stats.remote())  # whatever the other test left serving
    client = PolicyClient(endpoint, timeout_ms=10000, name="swap-broken")
    try:
        client.register(CART_TOOLS)
        first = client.decide({"query": "a"}, tick_id=0, deadline_ms=5000)
        for bad in (broken, broken + "-missing"):
            result = swap_policy_service(actor, bad)
            assert not result["ok"] and result["weights"] == first.weights
            assert bad in result["error"] and "\n" not in result["error"]
        after = client.decide({"query": "b"}, tick_id=1, deadline_ms=5000)
    finally:
        client.close()
    assert isinstance(after, CallReply) and after.weights == first.weights
    stats = ray.get(actor.stats.remote())
    assert stats["swap_failures"] == serving.get("swap_failures", 0) + 2
    assert stats["swaps"] == serving.get("swaps", 0)


def test_tickcall_serve_swaps_when_its_swap_file_names_new_weights(weights, tmp_path):
    """``tickcall serve --swap-file F`` (in its own process, no Ray): writing a model folder into F swaps
    it in behind the same handle; a broken folder is one line on stderr, the weights serving stay."""
    import os
    import subprocess
    import sys
    import threading

    from tickcall.agent.client import PolicyClient

    old, new, broken = weights
    swap_file = tmp_path / "swap.txt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tickcall.cli", "serve", "--backend", "transformers", "--model", old,
         "--bind", "tcp://127.0.0.1:0", "--swap-file", str(swap_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    lines: dict[str, list[str]] = {"out": [], "err": []}
    for name, pipe in (("out", proc.stdout), ("err", proc.stderr)):
        threading.Thread(target=lambda n=name, p=pipe: [lines[n].append(x) for x in p], daemon=True).start()

    def wait_line(stream: str, text: str) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            for line in lines[stream]:
                if text in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} from tickcall serve: {lines}")

    client = None
    try:
        endpoint = wait_line("out", "policy service on ").split()[3]
        client = PolicyClient(endpoint, timeout_ms=10000)
        reg = client.register(CART_TOOLS)
        assert client.decide({"query": "x"}, tick_id=0, deadline_ms=5000).weights == "old"
        swap_file.write_text(new + "\n")
        wait_line("out", "swap: old -> new")
        after = client.decide({"query": "x"}, tick_id=1, deadline_ms=5000)
        assert isinstance(after, CallReply) and after.weights == "new" and after.handle == reg.handle
        swap_file.write_text(broken + "\n")
        line = wait_line("err", f"swap to {broken}")
        assert line.startswith(f"swap to {broken} failed, new still serving: ")
        still = client.decide({"query": "x"}, tick_id=2, deadline_ms=5000)
        assert isinstance(still, CallReply) and still.weights == "new"
        assert client.stats["renewals"] == 0
    finally:
        if client is not None:
            client.close()
        proc.terminate()
        proc.wait(timeout=30)


class _GatedNoOp:
    """A no-op engine (models.stand_ins, no weights) whose first ``register`` waits for ``gate``: the
    test registers another tool set on the old weights while the new ones are warming."""

    def __init__(self, gate, entered) -> None:
        from tickcall.models.stand_ins import NoOpEngine

        self.inner, self.gate, self.entered = NoOpEngine(), gate, entered

    def register(self, *args, **kwargs):
        if not self.entered.is_set():
            self.entered.set()
            assert self.gate.wait(30)
        return self.inner.register(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_tool_set_registered_while_the_new_weights_warm_is_served_by_them():
    """In process (a real PolicyServer and ZMQ socket, no-op engines): a registration that arrives
    after the swap took its copy of the registrations is made on the new engine at the switch, so its
    handle keeps working (and no client registers again)."""
    import threading

    from tickcall.agent.client import PolicyClient
    from tickcall.agent.config import ServeConfig
    from tickcall.agent.server import PolicyServer
    from tickcall.models.stand_ins import NoOpEngine

    server = PolicyServer(NoOpEngine(), ServeConfig(bind="tcp://127.0.0.1:0"))
    endpoint = server.start()
    a, b = PolicyClient(endpoint, timeout_ms=5000), PolicyClient(endpoint, timeout_ms=5000)
    gate, entered = threading.Event(), threading.Event()
    try:
        a.register(CART_TOOLS)
        result: dict = {}
        t = threading.Thread(target=lambda: result.update(r=server.swap_engine(_GatedNoOp(gate, entered))))
        t.start()
        assert entered.wait(30)  # the new engine is warming a's tool set
        late = b.register(CART_TOOLS[:1])  # a new tool set, on the old weights, mid-warm
        before = b.decide({"query": "x"}, tick_id=0, deadline_ms=5000)
        gate.set()
        t.join(30)
        r = result["r"]
        assert r.ok and r.previous == "noop" and r.weights == "noop#1" and r.registrations == 1
        after_b = b.decide({"query": "y"}, tick_id=1, deadline_ms=5000)
        after_a = a.decide({"query": "z"}, tick_id=2, deadline_ms=5000)
    finally:
        a.close()
        b.close()
        server.stop()
    assert isinstance(before, CallReply) and before.weights == "noop"
    assert isinstance(after_b, CallReply) and after_b.weights == "noop#1" and after_b.handle == late.handle
    assert isinstance(after_a, CallReply) and after_a.weights == "noop#1"
    assert b.stats["renewals"] == 0 and a.stats["renewals"] == 0
