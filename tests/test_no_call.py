"""The explicit no-call: a registration may allow "no call this tick" (a null function head).

Engine, grammar, service (in-process client over the real protocol core) and the loop's verdict.
The stand-in engine below answers a null function head every tick: a model's choice, scripted.
"""

from __future__ import annotations

from tickcall.agent.inproc import InProcPolicy
from tickcall.control_loop.replies import judge
from tickcall.models.engine import NO_CALL, RawHeads, Registration
from tickcall.models.format import NULL, Turn
from tickcall.models.stand_ins import NoOpEngine

TOOLS = [{"name": "push", "description": "p", "parameters": {
    "type": "object", "properties": {"direction": {"type": "string", "enum": ["left", "right"]}},
    "required": ["direction"]}}]


class NullHeads(NoOpEngine):
    """Every head ``<|null|>``: what a model writes when it means "nothing to do"."""

    def _decode(self, items: list[tuple[Registration, Turn]]) -> list[RawHeads]:
        out = super()._decode(items)
        for (reg, _), raw in zip(items, out, strict=True):
            raw.texts = {h: NULL for h in reg.heads}
        return out


def test_null_function_head_is_legal_only_where_the_registration_allows_it():
    engine = NullHeads()
    allowed = engine.register(TOOLS, allow_no_call=True)
    strict = engine.register(TOOLS)
    d = engine.decide(allowed.handle, Turn("x=1"))
    assert (d.call, d.legal, d.reason) == (None, True, NO_CALL)
    d = engine.decide(strict.handle, Turn("x=1"))
    assert d.call is None and not d.legal and "no function" in d.reason


def test_service_answers_a_legal_no_call_and_the_loop_counts_it_ok():
    client = InProcPolicy(NullHeads())
    client.hello()
    client.register(TOOLS, allow_no_call=True)
    reply = client.decide({"query": "x=1"}, tick_id=1)
    assert reply.call is None and reply.legal and reply.reason == NO_CALL
    verdict = judge(reply)
    assert verdict.outcome == "ok" and verdict.call is None
    client.register(TOOLS)  # the same tools without the allowance: a separate registration
    reply = client.decide({"query": "x=1"}, tick_id=2)
    assert not reply.legal and judge(reply).outcome == "error"


def test_constrained_function_head_may_choose_no_call(tmp_path):
    """With the allowance the function grammar holds the empty text, so ``<|null|>`` is a stop token
    from the first step; without it the head must name a tool."""
    from tickcall.models.hf_engine import HFEngine
    from tickcall.models.tiny import make_tiny_model

    path = make_tiny_model(tmp_path / "m", hidden=32, heads=2, kv_heads=1, intermediate=64, seed=5)
    engine = HFEngine(path, device="cpu", max_new_tokens=8)
    with_nc, without = engine.register(TOOLS, allow_no_call=True), engine.register(TOOLS)
    null_id = engine.token_ids[NULL]
    assert null_id in engine.constrainer.stop_ids("function", with_nc.grammars.start["function"].nullable)
    assert null_id not in engine.constrainer.stop_ids("function", without.grammars.start["function"].nullable)
    for reg in (with_nc, without):
        d = engine.decide(reg.handle, Turn("x=1"))
        assert d.legal
