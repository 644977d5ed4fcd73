"""Turn-prefix caching (models.turn_cache, ``HFEngine(turn_cache=N)``): the same decisions and head
token ids with the cache on and off, over turns that share a first line, share nothing, repeat, and
come batched from several clients on two registrations; the LRU bound; entries dropped with their
registration. Tiny random Qwen2 and Llama models in float32; no timings."""

from __future__ import annotations

import pytest
import torch
from tickcall.models.engine import EngineError
from tickcall.models.format import Turn
from tickcall.models.hf_engine import HFEngine
from tickcall.models.turn_cache import TurnCache, common_prefix

from tests.test_lm_fast_path import make_tiny_llama, reference_heads
from tickcall.bench.lm import rollout_turns

GOAL_ENV = "tickcall/GoalArena-v0"


@pytest.fixture(scope="module")
def llama_path(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("llama-tc") / "model")


@pytest.fixture(scope="module")
def goal_turns():
    """(tools, turns of two episodes with different goals, each turn = goal line + state line)."""
    tools, a = rollout_turns(GOAL_ENV, 5, seed=0)
    _, b = rollout_turns(GOAL_ENV, 5, seed=3)
    assert a[0].query.split("\n")[0] != b[0].query.split("\n")[0], "the two seeds must differ in goal"
    return tools, a, b


def sequence(a: list[Turn], b: list[Turn]) -> list[Turn]:
    """Shared first lines (one episode's ticks), a turn sharing nothing, an identical repeat, the
    other episode, then back to the first."""
    return [a[0], a[1], a[2], Turn("x=+0.012 v=-0.340"), a[2], a[2], b[0], b[1], a[3], b[2], a[4]]


def engines(path, turn_cache: int = 8, **kw) -> tuple[HFEngine, HFEngine]:
    on = HFEngine(path, device="cpu", threads=1, max_new_tokens=8, turn_cache=turn_cache, **kw)
    off = HFEngine(path, device="cpu", threads=1, max_new_tokens=8, turn_cache=0, **kw)
    return on, off


def same(a, b) -> tuple:
    return (a.call, a.legal, a.reason, a.heads, a.head_token_ids), (
        b.call,
        b.legal,
        b.reason,
        b.heads,
        b.head_token_ids,
    )


@pytest.mark.parametrize("constrain", [True, False])
@pytest.mark.parametrize("model", ["qwen2", "llama"])
def test_same_decisions_with_the_cache_on_and_off(tiny_model_path, llama_path, goal_turns, model, constrain):
    tools, a, b = goal_turns
    path = tiny_model_path if model == "qwen2" else llama_path
    on, off = engines(path, constrain=constrain)
    ra, rb = on.register(tools), off.register(tools)
    reused = []
    for turn in sequence(a, b):
        x, y = on.decide(ra.handle, turn), off.decide(rb.handle, turn)
        got, want = same(x, y)
        assert got == want, turn.query
        assert x.prompt_tokens + x.cached_tokens == y.prompt_tokens + y.cached_tokens
        reused.append(x.cached_tokens - ra.prefix_tokens)
    # the second tick reuses the goal line, the unrelated turn only the template's turn header (the
    # same for every turn), a repeat all but one token
    header = common_prefix(
        on.encode(ra.template.suffix(a[0])), on.encode(ra.template.suffix(sequence(a, b)[3]))
    )
    assert reused[0] == 0 and reused[1] > header and reused[3] == (header if header >= 8 else 0)
    full = on.suffix_tokens(ra.handle, a[2])
    assert reused[5] == full - 1  # identical turn: all but the last token
    info = on.info()["turn_cache"]
    assert info["reused_tokens"] == sum(reused) and info["hits"] == sum(r > 0 for r in reused)
    assert off.info()["turn_cache"]["reused_tokens"] == 0


def test_batched_clients_on_two_registrations(tiny_model_path, goal_turns):
    """Several clients in one decide_batch: two on each registration, goals mixed, so one prefill
    group holds requests with different reused lengths (and none) side by side."""
    tools, a, b = goal_turns
    on, off = engines(tiny_model_path)
    regs_on = [on.register(tools), on.register(tools, system="Two.")]
    regs_off = [off.register(tools), off.register(tools, system="Two.")]
    ticks = [
        [(0, a[0]), (0, b[0]), (1, a[0]), (1, a[1])],
        [(0, a[1]), (0, b[1]), (1, b[0]), (1, a[2])],
        [(0, a[2]), (0, Turn("nothing shared")), (1, b[1]), (1, a[2])],
        [(0, a[3]), (0, a[3]), (1, b[2]), (1, a[4])],
    ]
    for tick in ticks:
        got = on.decide_batch([(regs_on[r].handle, t) for r, t in tick])
        want = off.decide_batch([(regs_off[r].handle, t) for r, t in tick])
        for x, y, (_, t) in zip(got, want, tick, strict=True):
            g, w = same(x, y)
            assert g == w, t.query
    info = on.info()["turn_cache"]
    assert info["hits"] >= 8 and info["reused_tokens"] > 0


def test_reuse_is_token_for_token_with_transformers(llama_path, goal_turns):
    """float32: a decide that reuses the goal line's K/V decodes what a full forward per token does."""
    tools, a, _ = goal_turns
    engine = HFEngine(llama_path, device="cpu", threads=1, max_new_tokens=6, constrain=False, turn_cache=4)
    reg = engine.register(tools)
    for turn in a[:3]:
        d = engine.decide(reg.handle, turn)
        assert d.head_token_ids == reference_heads(engine, engine.model, reg, turn)
    assert engine.info()["turn_cache"]["hits"] == 2


def test_lru_bound_and_registration_drop(tiny_model_path, goal_turns):
    tools, a, b = goal_turns
    engine = HFEngine(
        tiny_model_path, device="cpu", threads=1, max_new_tokens=2, constrain=False, turn_cache=2
    )
    reg, other = engine.register(tools), engine.register(tools, system="Other.")
    goals = [Turn(f"Goal number {i} is a different sentence.\nred=NE 4.7") for i in range(5)]
    for turn in goals:
        engine.decide(reg.handle, turn)
        assert len(engine._turn_caches[reg.handle].entries) <= 2
    engine.decide(other.handle, a[0])
    assert engine.info()["turn_cache"]["entries"] == 3
    assert engine.info()["turn_cache"]["held_tokens"] <= 3 * max(
        engine.suffix_tokens(reg.handle, t) for t in [*goals, a[0]]
    )
    engine.unregister(reg.handle)
    assert reg.handle not in engine._turn_caches
    assert engine.info()["turn_cache"]["entries"] == 1


def test_turn_cache_unit():
    k = [torch.zeros(1, 10, 2)]
    cache = TurnCache(capacity=2, min_reuse=3)
    assert cache.lookup([1, 2, 3, 4]) == (None, 0)
    cache.store([1, 2, 3, 4, 5], k, k)
    assert cache.lookup([1, 2, 9]) == (None, 0)  # 2 shared < min_reuse
    assert cache.lookup([1, 2, 3, 4, 5]) == (0, 4)  # identical: all but the last token
    assert cache.lookup([1, 2, 3, 4, 5, 6]) == (0, 5)
    cache.store([1, 2, 3, 7], k, k)
    assert cache.lookup([1, 2, 3, 7, 8]) == (1, 4)  # the longest common prefix wins
    cache.store([5, 5, 5], k, k)  # evicts the least recent
    assert [e.ids for e in cache.entries.values()] == [(1, 2, 3, 7), (5, 5, 5)]
    cache.store([1, 2, 3, 7], k, k)  # same ids: refreshed, not duplicated
    assert [e.ids for e in cache.entries.values()] == [(5, 5, 5), (1, 2, 3, 7)]
    assert cache.held_tokens() == 7 and common_prefix([1, 2], [1, 2, 3]) == 2
    assert cache.stats.hits == 3 and cache.stats.reused_tokens == 13


def test_default_rule_and_bad_value(tiny_model_path, monkeypatch):
    import tickcall.models.hf_engine as hf

    assert HFEngine(tiny_model_path, device="cpu", threads=1).turn_cache == 0  # tiny student: off
    monkeypatch.setattr(hf, "SMALL_MODEL_PARAMS", 0)  # the tiny model stands in for a 50M+ one
    assert HFEngine(tiny_model_path, device="cpu", threads=1).turn_cache == hf.TURN_CACHE_ENTRIES
    with pytest.raises(EngineError, match="turn_cache -1: give a number of entries >= 0"):
        HFEngine(tiny_model_path, device="cpu", threads=1, turn_cache=-1)


def test_bench_lm_turn_cache_compare(llama_path, tmp_path, capsys):
    import json

    from tickcall.cli import main

    out = tmp_path / "lm.json"
    args = ["bench", "lm", "--model", str(llama_path), "--turns", "3", "--warmup", "1", "--fast", "bf16"]
    rc = main([*args, "--env", GOAL_ENV, "--threads", "1", "--turn-cache", "4", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["off"]["turn_cache"] == 0 and data["on"]["turn_cache"] == 4
    assert data["off"]["p50_ms"] > 0 and data["on"]["p50_ms"] > 0 and data["speedup_p50"] > 0
    tc = data["turn_cache"]
    assert tc["reused_tokens_mean"] > 0 and tc["counters"]["hits"] >= 3
    assert tc["prefilled_tokens_mean"]["on"] < tc["prefilled_tokens_mean"]["off"]
    assert 0 <= data["agreement"]["identical_calls"] <= 1
    assert "suffix tokens reused per decide" in capsys.readouterr().out
    assert main([*args, "--turn-cache", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--turn-cache 0" in err and len(err.splitlines()) == 1
