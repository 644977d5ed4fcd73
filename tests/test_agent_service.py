"""The policy service as a real Ray actor over real ZMQ sockets: tiny-model round trip and several
clients decoded in one batch, thousands of Hypothesis-generated bad messages, and a Ray restart of the
actor that the client survives without a restart of its own.

The tiny model is a randomly initialised Qwen2 built locally (tests/conftest.py): its calls are
rarely legal, so these tests check the plumbing and accounting, not the answers.
"""

from __future__ import annotations

import os
import time

import msgpack
import pytest
from helpers import CART_TOOLS, injected
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tickcall.agent import protocol as P
from tickcall.agent.client import PolicyClient
from tickcall.agent.messages import ErrorReply

ray = pytest.importorskip("ray")

TOOLS = CART_TOOLS


@pytest.fixture(scope="module")
def noop_service(ray_session):
    from tickcall.agent.actor import start_policy_service

    handle, endpoint = start_policy_service({"backend": "noop"}, max_message_bytes=4096)
    yield handle, endpoint
    ray.kill(handle, no_restart=True)


def test_tiny_model_round_trip_and_clients_batched(ray_session, tiny_model_path):
    from tickcall.agent.actor import start_policy_service

    handle, endpoint = start_policy_service(
        {"backend": "transformers", "model": str(tiny_model_path), "max_new_tokens": 6}
    )
    try:
        c = PolicyClient(endpoint, timeout_ms=60_000)
        welcome = c.hello()
        assert welcome.engine["backend"] == "transformers" and welcome.engine["params"] > 0
        reg = c.register(TOOLS)
        assert reg.heads == ["function", "arg1"] and reg.prefix_tokens > 0
        r = c.decide({"query": "lean right", "observation": {"x": 0.1, "v": -0.3}}, tick_id=5)
        assert r.type == "call", r
        assert r.tick == 5 and set(r.heads) == {"function", "arg1"}
        assert r.tokens.prompt > 0 and r.tokens.cached == reg.prefix_tokens
        assert all(1 <= n <= 6 for n in r.tokens.generated.values())
        assert r.legal or r.reason  # an illegal call always says why
        # several clients at once: their decides are decoded together
        clients = [c] + [PolicyClient(endpoint, timeout_ms=60_000) for _ in range(3)]
        for other in clients[1:]:
            assert other.register(TOOLS).handle == reg.handle  # one cached prefix for the tool set
        batches = []
        for rnd in range(3):
            ids = {cl.send_decide(f"round {rnd}", tick_id=rnd) for cl in clients}
            got = [x for cl in clients for x in cl.poll(timeout_ms=60_000)]
            assert {x.id for x in got} == ids and all(x.type == "call" for x in got)
            batches += [x.batch for x in got]
        assert max(batches) > 1
        stats = ray.get(handle.stats.remote())
        assert stats["decided"] == 13 and stats["reply_call"] == 13 and stats["registrations"] == 1
        for cl in clients:
            cl.close()
    finally:
        ray.kill(handle, no_restart=True)


# --------------------------------------------------------------------------- fuzzing

_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
_value = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _valid(mtype: str, msg_id: int) -> dict:
    base = {"v": 1, "type": mtype, "id": msg_id}
    if mtype == "register":
        base["tools"] = TOOLS
    if mtype == "decide":
        base.update(handle="nope", tick=1, turn={"query": "x", "history": ["a"]}, deadline_ms=50.0)
    return base


@st.composite
def bad_message(draw) -> tuple[list[bytes], str | None]:
    """(frames, the error code it must get, or None when any single reply is acceptable)."""
    kind = draw(
        st.sampled_from(["random", "truncated", "version", "oversized", "fields", "frames", "bytes", "type"])
    )
    mtype = draw(st.sampled_from(P.REQUEST_TYPES))
    msg = _valid(mtype, draw(st.integers(0, 2**32)))
    if kind == "random":
        return [msgpack.packb(draw(_value), use_bin_type=True)], None
    if kind == "truncated":
        payload = msgpack.packb(msg)
        return [payload[: draw(st.integers(0, len(payload) - 1))]], "malformed"
    if kind == "version":
        msg["v"] = draw(st.integers(-(2**31), 2**31).filter(lambda v: v != 1))
        return [msgpack.packb(msg)], "version_mismatch"
    if kind == "oversized":
        msg["pad"] = "x" * draw(st.integers(4097, 12000))
        return [msgpack.packb(msg)], "oversized"
    if kind == "fields":  # a known field replaced by a random value
        key = draw(st.sampled_from(sorted(set(msg) - {"v", "type"})))
        msg[key] = draw(_value)
        return [msgpack.packb(msg, use_bin_type=True)], None
    if kind == "frames":
        return [msgpack.packb(msg)] * draw(st.integers(2, 4)), "malformed"
    if kind == "type":
        msg["type"] = draw(st.text(max_size=12).filter(lambda t: t not in P.REQUEST_TYPES))
        return [msgpack.packb(msg)], "unknown_type"
    return [draw(st.binary(min_size=0, max_size=64))], None


def test_fuzzed_messages_all_answered_and_service_survives(noop_service):
    """Thousands of malformed, truncated, oversized, wrong-version, wrong-type messages: each gets one
    reply (an error whenever the message is certainly bad); then a good request is still served."""
    import zmq

    _, endpoint = noop_service
    ctx = zmq.Context.instance()
    sent = {"n": 0, "errors": 0}

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(bad_message(), min_size=10, max_size=40))
    def run(batch):
        sock = ctx.socket(zmq.DEALER)  # a fresh peer per example: a failing one cannot leak replies
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        try:
            for frames, code in batch:  # one at a time: each reply belongs to the message just sent
                sock.send_multipart(frames)
                assert sock.poll(10_000), f"no reply to {frames[0][:60]!r}"
                reply = msgpack.unpackb(sock.recv(), raw=False)
                assert reply["v"] == 1 and isinstance(reply["epoch"], str)
                assert reply["type"] in P.REPLY_TYPES
                if reply["type"] == "error":
                    assert reply["code"] in P.ERROR_CODES and reply["message"]
                    sent["errors"] += 1
                if code is not None:
                    assert (reply["type"], reply["code"]) == ("error", code), (frames[0][:80], reply)
            assert sock.poll(0) == 0  # nothing extra was sent back
            sent["n"] += len(batch)
        finally:
            sock.close(0)

    run()
    assert sent["n"] >= 4000 and sent["errors"] >= 0.9 * sent["n"]
    c = PolicyClient(endpoint, timeout_ms=10_000)
    c.register(TOOLS)
    assert c.decide("still there?", tick_id=1).type == "call"
    c.close()


# --------------------------------------------------------------------------- restart


def _wait_dead(pid: int, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":  # a zombie is dead, just not reaped
                    return
        except (ProcessLookupError, FileNotFoundError):
            return
        time.sleep(0.02)
    raise AssertionError(f"actor process {pid} still alive")


def test_actor_killed_and_restarted_client_recovers(ray_session):
    from tickcall.agent.actor import start_policy_service

    # load_delay_ms: a model that takes 2.5 s to load (stand-in), so the restart leaves a gap
    handle, endpoint = start_policy_service(injected(load_delay_ms=2500), max_restarts=-1)
    try:
        first = ray.get(handle.ready.remote())
        c = PolicyClient(endpoint, timeout_ms=400)
        reg = c.register(TOOLS)
        assert c.decide("x", tick_id=1).type == "call"
        ray.kill(handle, no_restart=False)  # Ray restarts it: same endpoint, new process, new epoch
        _wait_dead(first["pid"])
        outcomes = []
        t_end = time.monotonic() + 120
        tick = 2
        while time.monotonic() < t_end:
            r = c.decide("x", tick_id=tick)
            outcomes.append(r.code if isinstance(r, ErrorReply) else r.type)
            if r.type == "call":
                break
            assert r.code == "timeout", r  # a clean, accounted timeout; nothing raised, nothing hung
            tick += 1
        assert outcomes[-1] == "call" and "timeout" in outcomes, outcomes
        second = ray.get(handle.ready.remote())
        assert second["pid"] != first["pid"] and second["epoch"] != first["epoch"]
        assert c.epoch == second["epoch"] and reg.epoch == second["epoch"], (c.stats, reg)
        assert reg.renewals >= 1, (c.stats, reg)
        assert c.decide("y", tick_id=tick + 1).type == "call"
        c.close()
    finally:
        ray.kill(handle, no_restart=True)
