"""Issue 19 items that had no test of their own (found by the s18 audit, /tmp/s18/audit.md).

* Wrong-but-accepted schemas with the *model* engine: tests/test_tool_schemas.py checks the service's
  answer with the model-free NoOpEngine only, and the issue saw the model engine answer some of them
  ``engine_failure``. Here a real policy service (ZMQ) on the transformers engine of the tiny model,
  constrained heads on (the shipped default: register compiles the schemas' grammars), answers every
  one ``illegal_tools`` and goes on serving.
* ``reason`` is ``""`` on a legal call on the wire (docs/protocol.md), where engines say ``"ok"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ARENA_LIKE_TOOLS
from test_tool_schemas import BAD  # the wrong-but-accepted schemas, one table
from tickcall.agent import protocol as P
from tickcall.agent.client import PolicyClient
from tickcall.agent.config import ServeConfig
from tickcall.agent.engines import build_engine
from tickcall.agent.messages import CallReply
from tickcall.agent.server import PolicyServer

TURN = {"query": "move up", "history": [], "environment": ["x=1"]}


class Service:
    """A real policy service on a free loopback port and one ZMQ client of it."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.engine = build_engine(spec)
        self.server = PolicyServer(self.engine, ServeConfig(bind="tcp://127.0.0.1:0"))
        self.client = PolicyClient(self.server.start(), timeout_ms=60_000)

    def close(self) -> None:
        self.client.close()
        self.server.stop()
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()


@pytest.fixture(scope="module")
def model_service(tiny_model_path) -> Iterator[Service]:
    svc = Service({"backend": "transformers", "model": str(tiny_model_path), "max_new_tokens": 8})
    yield svc
    svc.close()


def test_the_model_engine_answers_bad_schemas_illegal_tools(model_service):
    assert model_service.engine.info()["backend"] == "transformers"
    codes = {}
    for case_id, tool, _phrases in BAD:
        with pytest.raises(P.PolicyError) as exc:
            model_service.client.register([tool])
        codes[case_id] = exc.value.code
    assert set(codes.values()) == {"illegal_tools"}, codes
    # and the service still serves: a sound tool set registers and decides
    model_service.client.register(ARENA_LIKE_TOOLS)
    reply = model_service.client.decide(TURN, tick_id=1)
    assert isinstance(reply, CallReply), reply


@pytest.mark.parametrize("spec", [{"backend": "random", "seed": 0}, "model"], ids=["random", "model"])
def test_a_legal_call_has_an_empty_reason_on_the_wire(spec, model_service):
    """Every legal call a decide returns over ZMQ carries ``reason == ""``; an illegal one says why."""
    svc = model_service if spec == "model" else Service(spec)
    try:
        svc.client.register(ARENA_LIKE_TOOLS)
        replies = [svc.client.decide(TURN, tick_id=i) for i in range(1, 9)]
    finally:
        if svc is not model_service:
            svc.close()
    assert all(isinstance(r, CallReply) for r in replies), replies
    legal = [r for r in replies if r.legal and r.call is not None]
    assert legal, [r.reason for r in replies]  # random and constrained heads give legal calls
    assert {r.reason for r in legal} == {""}, [r.reason for r in legal]
    assert all(r.reason for r in replies if not r.legal)
