"""The transformers backend against the plain transformers model, on a tiny random Qwen2.

Reference = each head decoded alone from the full prompt (prefix + suffix + opening tag) with a
full forward per token and no cache at all. The engine must give the same tokens for every head.
"""

from __future__ import annotations

import pytest
import torch
from tickcall.models.format import IM_END, NULL, Turn, close_tag, open_tag
from tickcall.models.hf_engine import HFEngine, TokenizerFormatError

TURNS = [
    Turn("x=+0.012 v=-0.340 a=+0.021 w=+0.551"),
    Turn("enemy at 3,4; hp=12", ['move(direction="up", speed=0.5)', "fire(target=2)"]),
    Turn("target=7 dist=12.5", environment=["wind=3"]),
    Turn("x=9"),
]


def reference_head(engine: HFEngine, prompt_ids: list[int], head: str, max_new: int) -> list[int]:
    ids = list(prompt_ids) + [engine.token_ids[open_tag(head)]]
    out: list[int] = []
    stops = engine.stop_ids(head)
    with torch.no_grad():
        for _ in range(max_new):
            tok = int(engine.model(torch.tensor([ids])).logits[0, -1].argmax())
            out.append(tok)
            ids.append(tok)
            if tok in stops:
                break
    return out


def full_prompt(engine: HFEngine, reg, turn: Turn) -> list[int]:
    return engine.encode(reg.prefix_text) + engine.encode(reg.template.suffix(turn))


def assert_equivalent(engine: HFEngine, reg, turn: Turn, decision) -> None:
    prompt = full_prompt(engine, reg, turn)
    for head in reg.heads:
        ref = reference_head(engine, prompt, head, engine.max_new_tokens)
        assert decision.head_token_ids[head] == ref, f"head {head} differs for {turn.query!r}"


@pytest.mark.parametrize("template", ["v1", "v2", "compact"])
def test_greedy_equivalence_per_head(tiny_engine, arena_tools, template):
    reg = tiny_engine.register(arena_tools, template=template)
    assert reg.heads == ("function", "arg1", "arg2", "arg3")
    for turn in TURNS:
        d = tiny_engine.decide(reg.handle, turn)
        assert d.cached_tokens == reg.prefix_tokens > 0
        assert d.prompt_tokens == len(tiny_engine.encode(reg.template.suffix(turn)))
        assert_equivalent(tiny_engine, reg, turn, d)


def test_reused_prefix_after_many_ticks_equals_fresh(tiny_engine, arena_tools):
    reg = tiny_engine.register(arena_tools)
    first = {t.query: tiny_engine.decide(reg.handle, t).head_token_ids for t in TURNS}
    for tick in range(60):  # many ticks with varying turns on one registration
        tiny_engine.decide(reg.handle, Turn(f"tick={tick} x={tick * 0.37:.2f}", [f"move(speed={tick})"]))
    fresh = tiny_engine.register(arena_tools)
    for t in TURNS:
        again = tiny_engine.decide(reg.handle, t).head_token_ids
        assert again == first[t.query], "state leaked between ticks"
        assert tiny_engine.decide(fresh.handle, t).head_token_ids == first[t.query]


def test_batch_of_requests_with_different_prefixes_equals_single(tiny_engine, arena_tools):
    small = tiny_engine.register(arena_tools[:1], template="compact")
    big = tiny_engine.register(arena_tools, template="v2")
    singles = [tiny_engine.decide(h, t) for h, t in [(small.handle, TURNS[0]), (big.handle, TURNS[1]),
                                                    (big.handle, TURNS[2])]]
    batch = tiny_engine.decide_batch([(small.handle, TURNS[0]), (big.handle, TURNS[1]), (big.handle, TURNS[2])])
    for s, b in zip(singles, batch, strict=True):
        assert s.head_token_ids == b.head_token_ids


def test_unknown_handle_is_a_clear_error(tiny_engine):
    from tickcall.models.engine import UnknownHandleError

    with pytest.raises(UnknownHandleError, match="register the tools first"):
        tiny_engine.decide("h999", TURNS[0])


@pytest.fixture
def stopping_engine(tiny_model_path, arena_tools):
    """The tiny model with its output rows edited so stop tokens win where a common token would:
    heads then stop at different steps, some on <|null|>, some on their closing tag."""
    engine = HFEngine(tiny_model_path, device="cpu", max_new_tokens=10, constrain=False)
    reg = engine.register(arena_tools)
    d = engine.decide(reg.handle, TURNS[1])
    w = engine.model.lm_head.weight
    with torch.no_grad():
        seen = [ids[2] for ids in d.head_token_ids.values()] + [ids[1] for ids in d.head_token_ids.values()]
        stops = [engine.token_ids[NULL], engine.token_ids[close_tag("arg1")], engine.token_ids[IM_END],
                 engine.token_ids[close_tag("function")]]
        for stop_id, tok in zip(stops, seen, strict=False):
            w[stop_id] = w[tok] * 1.5
    return _rebuild(engine)


def _rebuild(engine: HFEngine) -> HFEngine:
    from tickcall.models.lean import LeanLM

    engine.lm = LeanLM(engine.model)
    engine._registrations.clear()
    return engine


def test_no_head_emits_after_its_stop_token(stopping_engine, arena_tools):
    eng = stopping_engine
    reg = eng.register(arena_tools)
    stopped_early = 0
    for turn in TURNS:
        d = eng.decide(reg.handle, turn)
        assert_equivalent(eng, reg, turn, d)
        for head, ids in d.head_token_ids.items():
            stops = set(eng.stop_ids(head))
            positions = [i for i, t in enumerate(ids) if t in stops]
            assert positions in ([], [len(ids) - 1]), f"{head} continued after a stop token: {ids}"
            if positions:
                stopped_early += 1
                if ids[-1] == eng.token_ids[NULL]:
                    assert d.heads[head] == NULL
                else:
                    assert close_tag(head) not in d.heads[head]
    assert stopped_early >= 3, "the edited model should stop several heads early (test is not vacuous)"


def test_forced_lengths_decode_exactly(tiny_engine, arena_tools):
    reg = tiny_engine.register(arena_tools)
    tiny_engine.forced_lengths = {"function": 2, "arg1": 5, "arg2": 1, "arg3": 3}
    try:
        d = tiny_engine.decide(reg.handle, TURNS[0])
    finally:
        tiny_engine.forced_lengths = None
    assert {h: len(v) for h, v in d.head_token_ids.items()} == {"function": 2, "arg1": 5, "arg2": 1, "arg3": 3}


def test_tokenizer_without_simpletool_tokens_is_refused(tmp_path):
    from tickcall.models.tiny import build_tokenizer

    tok = build_tokenizer(["hello world"], vocab_size=300)
    from tickcall.models.hf_engine import check_special_tokens

    check_special_tokens(tok)  # ours holds them
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    plain = Tokenizer(models.BPE())
    plain.pre_tokenizer = pre_tokenizers.ByteLevel()
    from tokenizers import trainers

    plain.train_from_iterator(["<function> hello"], trainers.BpeTrainer(vocab_size=280, show_progress=False,
                                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    with pytest.raises(TokenizerFormatError, match="single tokens"):
        check_special_tokens(PreTrainedTokenizerFast(tokenizer_object=plain))


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_other_architectures_match_transformers(tiny_model_path, tmp_path, arena_tools, arch):
    """The lean loop reads Qwen3 (q/k norms, no qkv bias) and Llama (GQA, no bias) weights correctly."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
                  tie_word_embeddings=False, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
    torch.manual_seed(1)
    if arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=16, **common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    engine = HFEngine(tmp_path, device="cpu", max_new_tokens=6, constrain=False)
    assert engine.model.config.model_type == arch
    reg = engine.register(arena_tools)
    for turn in TURNS[:2]:
        assert_equivalent(engine, reg, turn, engine.decide(reg.handle, turn))


def test_many_requests_on_one_prefix_batch_like_singles(tiny_engine, arena_tools):
    """Several clients on one registration: suffixes of different lengths prefill as one padded batch."""
    reg = tiny_engine.register(arena_tools)
    turns = TURNS + [Turn("a much longer observation: x=1.25 y=-3.5 hp=77 enemies=[3, 4, 9] ammo=12")]
    singles = [tiny_engine.decide(reg.handle, t).head_token_ids for t in turns]
    batch = tiny_engine.decide_batch([(reg.handle, t) for t in turns])
    assert [b.head_token_ids for b in batch] == singles
    assert all(b.prompt_tokens == len(tiny_engine.encode(reg.template.suffix(t))) for b, t in zip(batch, turns, strict=True))


def test_a_turn_counted_before_its_decide_is_encoded_once(tiny_engine, arena_tools, monkeypatch):
    """The service counts a queued turn (suffix_tokens) before the decide: one tokenizer pass, not two;
    the memo hands out copies and forgets everything past ENCODE_MEMO texts."""
    from tickcall.models import hf_engine

    reg = tiny_engine.register(arena_tools)
    real = tiny_engine._fast
    assert real is not None, "the tiny tokenizer is a fast one"
    calls = []

    class Spy:  # the Rust tokenizer, counting encodes
        def encode(self, text, **kw):
            calls.append(text)
            return real.encode(text, **kw)

        def decode(self, ids, **kw):
            return real.decode(ids, **kw)

    monkeypatch.setattr(tiny_engine, "_fast", Spy())
    turn = Turn("tick=12345 x=1.5", [])
    n = tiny_engine.suffix_tokens(reg.handle, turn)
    decision = tiny_engine.decide(reg.handle, turn)
    assert len(calls) == 1 and n > 0 and decision.head_token_ids
    ids = tiny_engine.encode("x=1")
    ids.append(-1)  # a caller's copy: the memo keeps its own
    assert tiny_engine.encode("x=1") == ids[:-1]
    monkeypatch.setattr(hf_engine, "ENCODE_MEMO", 2)
    tiny_engine.encode("a"), tiny_engine.encode("b"), tiny_engine.encode("c")
    assert len(tiny_engine._encoded) <= 2
