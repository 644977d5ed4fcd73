"""Resource control of the policy service: token budgets (``too_long``), per-client queue quotas
(``over_quota``), per-client registration quotas, and serve-setting validation."""

from __future__ import annotations

import time
from typing import Any

import pytest
from helpers import CART_TOOLS, Raw, injected
from tickcall.agent import protocol as P
from tickcall.agent.config import ServeConfig
from tickcall.agent.core import Job, PolicyCore
from tickcall.agent.engines import build_engine
from tickcall.agent.messages import Decide, ErrorReply
from tickcall.agent.quotas import ClientQueues, TokenBudget, budget_for
from tickcall.agent.server import PolicyServer
from tickcall.models.format import Turn
from tickcall.models.stand_ins import NoOpEngine


class CountingEngine(NoOpEngine):
    """A NoOpEngine that records how often the model work (prefix prefill, decode) is reached."""

    def __init__(self) -> None:
        super().__init__()
        self.prefills = 0
        self.decodes = 0

    def _build_prefix(self, reg: Any) -> None:
        self.prefills += 1
        super()._build_prefix(reg)

    def _decode(self, items: list[Any]) -> list[Any]:
        self.decodes += 1
        return super()._decode(items)


@pytest.fixture
def serve():
    servers: list[PolicyServer] = []

    def _start(engine: Any = None, **cfg: Any) -> PolicyServer:
        cfg.setdefault("bind", "tcp://127.0.0.1:0")
        if engine is None or isinstance(engine, dict):
            engine = build_engine(engine or {"backend": "noop"})
        srv = PolicyServer(engine, ServeConfig(**cfg))
        srv.start()
        servers.append(srv)
        return srv

    yield _start
    for s in servers:
        s.stop()


def _tools(i: int) -> list[dict]:
    """A distinct tool set per ``i`` (one more description word makes another prefix)."""
    tools = [dict(t, function=dict(t["function"])) for t in CART_TOOLS]
    tools[1]["function"]["description"] = f"Do nothing, variant {i}."
    return tools


def _wait_busy(raw: Raw) -> None:
    for _ in range(500):
        raw.request("ping")
        pong = raw.recv()
        if pong["busy_ms"] > 0:
            return
    raise AssertionError("engine never became busy")


# --------------------------------------------------------------------------- token budgets


def test_over_long_turn_is_refused_without_the_engine(serve):
    engine = CountingEngine()
    srv = serve(engine, max_turn_tokens=40)
    raw = Raw(srv.endpoint)
    handle = raw.register(CART_TOOLS)["handle"]
    raw.request("decide", handle=handle, tick=1, turn={"query": "word " * 200})
    r = raw.recv()
    assert r["type"] == "error" and r["code"] == "too_long" and r["tick"] == 1
    assert "limit is 40" in r["message"] and "max_turn_tokens" in r["message"]
    assert engine.decodes == 0  # no forward pass for the refused turn
    raw.request("decide", handle=handle, tick=2, turn={"query": "x=1"})
    assert raw.recv()["type"] == "call" and engine.decodes == 1
    assert srv.stats()["error_too_long"] == 1
    raw.close()


def test_over_long_tool_description_is_refused_at_register(serve):
    engine = CountingEngine()
    srv = serve(engine, max_prefix_tokens=200)
    raw = Raw(srv.endpoint)
    tools = _tools(0)
    tools[0]["function"]["description"] = "push " * 400
    r = raw.register(tools)
    assert r["code"] == "too_long" and "limit is 200" in r["message"] and engine.prefills == 0
    assert raw.register(CART_TOOLS)["type"] == "registered" and engine.prefills == 1
    raw.close()


def test_turn_budget_counts_the_real_tokenizer_and_the_context(tiny_engine):
    budget = budget_for(tiny_engine, max_turn_tokens=10_000, max_prefix_tokens=10_000)
    assert budget.context == tiny_engine.model.config.max_position_embeddings
    assert budget.prefix_limit() < budget.context  # the context caps the configured budget
    core = PolicyCore(tiny_engine, "e" * 32, 8, max_turn_tokens=16)
    reg = core.register("c", P.decode_request(P.encode(_register(CART_TOOLS)), 1 << 20))
    query = "x=+0.012 v=-0.340 " * 40
    n = tiny_engine.suffix_tokens(core._regs[reg.handle].engine_handle, Turn(query))
    job = Job(owner="c", req=Decide(id=2, handle=reg.handle, tick=7, turn={"query": query}),
              turn=Turn(query), recv_t=time.perf_counter())
    (reply,) = core.decide([job])
    assert isinstance(reply, ErrorReply) and reply.code == "too_long"
    assert f"has {n} tokens" in reply.message and "limit is 16" in reply.message


def _register(tools: list[dict]) -> Any:
    from tickcall.agent.messages import Register

    return Register(id=1, tools=tools)


def test_token_budget_is_capped_by_context():
    b = TokenBudget(max_turn_tokens=512, max_prefix_tokens=4096, context=1024, max_new_tokens=32)
    assert b.prefix_limit() == 1024 - 32 - 1
    assert b.turn_limit(900) == 1024 - 900 - 32
    assert TokenBudget(max_turn_tokens=512).turn_limit(10_000) == 512  # unknown context: config only


# --------------------------------------------------------------------------- queue quotas


def test_streams_beyond_the_quota_are_refused_at_once(serve):
    srv = serve(injected(batch_delay_ms=400), max_streams_per_client=2)
    raw, other = Raw(srv.endpoint), Raw(srv.endpoint)
    handle = raw.register(CART_TOOLS)["handle"]
    raw.request("decide", handle=handle, tick=0, turn={"query": "a"}, stream="blocker")
    _wait_busy(raw)  # the blocker is being decoded: whatever follows stays queued
    ok = [raw.request("decide", handle=handle, tick=t, turn={"query": "b"}, stream=f"s{t}") for t in (1, 2)]
    t0 = time.perf_counter()
    refused = raw.request("decide", handle=handle, tick=3, turn={"query": "c"}, stream="s3")
    first = raw.recv()
    assert first["id"] == refused and first["code"] == "over_quota" and first["tick"] == 3
    assert (time.perf_counter() - t0) < 0.3 and "limit is 2" in first["message"]
    other.request("decide", handle=handle, tick=9, turn={"query": "d"}, stream="s9")  # another client
    replies = {r["id"]: r for r in (raw.recv(), raw.recv(), raw.recv())}
    assert replies[ok[0]]["type"] == "call" and replies[ok[1]]["type"] == "call"
    assert other.recv()["type"] == "call"
    assert raw.recv(200) is None
    # the quota counts what is queued: once answered, new streams are accepted again
    raw.request("decide", handle=handle, tick=4, turn={"query": "e"}, stream="s4")
    assert raw.recv()["type"] == "call"
    raw.close()
    other.close()


def test_queued_bytes_beyond_the_quota_are_refused(serve):
    srv = serve(injected(batch_delay_ms=400), max_queued_bytes_per_client=4000)
    raw = Raw(srv.endpoint)
    handle = raw.register(CART_TOOLS)["handle"]
    raw.request("decide", handle=handle, tick=0, turn={"query": "a"}, stream="blocker")
    _wait_busy(raw)
    big = "y" * 2500
    first = raw.request("decide", handle=handle, tick=1, turn={"query": big}, stream="a")
    refused = raw.request("decide", handle=handle, tick=2, turn={"query": big}, stream="b")
    r = raw.recv()
    assert r["id"] == refused and r["code"] == "over_quota" and "queued bytes" in r["message"]
    # replacing a queued decide on the same stream frees its bytes: latest-wins still works
    newest = raw.request("decide", handle=handle, tick=3, turn={"query": big}, stream="a")
    replies = {r["id"]: r for r in (raw.recv(), raw.recv(), raw.recv())}
    assert replies[first]["code"] == "superseded" and replies[newest]["type"] == "call"
    raw.close()


def test_client_queues_accounting():
    q = ClientQueues(max_streams=2, max_bytes=100)
    assert q.refusal("a", 60, None) is None
    q.add("a", 60)
    assert q.refusal("a", 60, None) is not None  # 120 bytes
    assert q.refusal("a", 60, 60) is None  # replaces the queued one
    q.add("a", 10)
    assert "streams" in q.refusal("a", 1, None)
    assert q.refusal("b", 100, None) is None  # another client has its own quota
    q.remove("a", 60)
    q.remove("a", 10)
    assert q.streams == {} and q.nbytes == {}


# --------------------------------------------------------------------------- registrations


def test_one_client_cannot_evict_another_clients_registration(serve):
    srv = serve(max_registrations=8, max_registrations_per_client=2)
    a, b = Raw(srv.endpoint), Raw(srv.endpoint)
    kept = b.register(_tools(100))["handle"]
    handles = [a.register(_tools(i))["handle"] for i in range(20)]
    assert len(set(handles)) == 20
    b.request("decide", handle=kept, tick=1, turn={"query": "x"})
    assert b.recv()["type"] == "call"  # b's set survived 20 registrations by a
    a.request("decide", handle=handles[0], tick=1, turn={"query": "x"})
    assert a.recv()["code"] == "unknown_handle"  # a released its own oldest
    a.request("decide", handle=handles[-1], tick=2, turn={"query": "x"})
    assert a.recv()["type"] == "call"
    assert srv.stats()["registrations"] == 3  # a's 2 + b's 1
    a.close()
    b.close()


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "key,value",
    [
        ("poll_ms", 0),
        ("poll_ms", -5),
        ("max_turn_tokens", 0),
        ("max_prefix_tokens", -1),
        ("max_streams_per_client", 0),
        ("max_queued_bytes_per_client", 0),
        ("max_registrations_per_client", 0),
        ("max_batch", 0),
        ("poll_ms", 1.5),
    ],
)
def test_bad_serve_settings_are_refused(key, value):
    with pytest.raises(ValueError, match=key):
        ServeConfig.from_dict({key: value})


def test_serve_yaml_defaults_match_the_dataclass():
    cfg = ServeConfig.from_yaml("configs/serve.yaml")
    d = ServeConfig()
    for key in ("max_turn_tokens", "max_prefix_tokens", "max_streams_per_client",
                "max_queued_bytes_per_client", "max_registrations_per_client", "poll_ms"):
        assert getattr(cfg, key) == getattr(d, key)
