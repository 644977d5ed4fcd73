"""Schema-constrained heads (models.grammars, models.constrain) on the transformers backend.

Real parts: xgrammar masks, the shipped students, a tiny random Qwen2 (an untrained model is the
hardest case for legality: it prefers nothing), real gymnasium envs for tool sets and observations.
The vLLM backend's agreement with this one is in tests/test_vllm_engine.py.
"""

from __future__ import annotations

import pytest
from tickcall.models.format import NULL, Turn
from tickcall.models.hf_engine import HFEngine
from tickcall.models.tools import normalize_tools

from tests.conftest import ARENA_LIKE_TOOLS

SHIPPED = "models/shipped"

TRICKY_TOOLS = [
    {"name": "set_mode", "description": "m", "parameters": {"type": "object", "properties": {
        "mode": {"type": "string", "enum": ["left", "leftmost", "up"]},
        "level": {"type": "integer", "minimum": -3, "maximum": 12, "multipleOf": 3}},
        "required": ["mode", "level"]}},
    {"name": "act", "description": "a", "parameters": {"type": "object", "properties": {
        "a": {"type": "array", "items": {"type": "number", "minimum": -1, "maximum": 1},
              "minItems": 2, "maxItems": 2},
        "tag": {"type": "string", "pattern": "^[a-z]{2,4}$"},
        "flag": {"type": "boolean"}}, "required": ["a"]}},
    {"name": "say", "description": "s", "parameters": {"type": "object", "properties": {
        "text": {"type": "string", "maxLength": 5},
        "where": {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0}},
                  "required": ["x"]}}, "required": ["text"]}},
    {"name": "wait", "description": "w", "parameters": {"type": "object", "properties": {}}},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tickcall.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("constrain") / "model", hidden=64, heads=2, kv_heads=1,
                           intermediate=128, seed=3, init_std=0.2, tie_embeddings=False)


def engines(path, budget: int = 16):
    return (HFEngine(path, device="cpu", max_new_tokens=budget),
            HFEngine(path, device="cpu", max_new_tokens=budget, constrain=False))


def turns(n: int) -> list[Turn]:
    return [Turn(query=f"tick {i}: x={i * 0.37 - 2:.2f} v={(-1) ** i * 0.1 * i:.2f} enemy {i % 4}")
            for i in range(n)]


def test_untrained_model_is_always_legal_only_with_constraints(tiny):
    con, free = engines(tiny)
    rc, rf = con.register(TRICKY_TOOLS), free.register(TRICKY_TOOLS)
    legal_free = 0
    chosen = set()
    for turn in turns(40):
        d = con.decide(rc.handle, turn)
        assert d.legal, (d.heads, d.reason)
        assert not set(d.heads.values()) & {"<|endoftext|>", "<|im_start|>"}
        chosen.add(d.call.name)
        legal_free += free.decide(rf.handle, turn).legal
    assert legal_free < 20, "the unconstrained random model should be mostly illegal (else this test proves nothing)"
    assert len(chosen) >= 2


def test_heads_cut_at_the_budget_are_closed_by_the_grammar(tiny):
    con, _ = engines(tiny, budget=2)
    reg = con.register(TRICKY_TOOLS)
    closed = 0
    for turn in turns(20):
        d = con.decide(reg.handle, turn)
        assert d.legal, (d.heads, d.reason)
        closed += len(d.grammar_closed)
    assert closed > 0


def test_argument_heads_are_redecoded_for_the_chosen_tool(tiny):
    con, _ = engines(tiny)
    reg = con.register(TRICKY_TOOLS)
    redecoded = 0
    for turn in turns(40):
        d = con.decide(reg.handle, turn)
        assert d.legal, (d.heads, d.reason)
        redecoded += len(d.redecoded)
        if d.call.name == "wait":  # a tool without parameters: every argument head omitted
            assert all(d.heads[h] in ("", NULL) for h in d.heads if h != "function")
    assert redecoded > 0, "40 ticks of a random model should need the chosen tool's grammar at least once"


@pytest.mark.parametrize("model,tools", [("tickcall-arena", None), ("tickcall-cartpole", None),
                                         ("tickcall-arena", ARENA_LIKE_TOOLS)])
def test_greedy_output_that_is_legal_is_unchanged(model, tools):
    """Where the unconstrained output is already legal the constrained one is identical, token for token.

    "Legal" here also means no special token inside a head's text (the arena student writes
    ``</arg1>`` into a free-text ``note`` under foreign tools; assembly would take it as text, the
    constrained decode never emits it)."""

    from tickcall.envs.binding import make_binding
    from tickcall.envs.policies import turn_for
    from tickcall.models.loading import read_model_meta

    path = f"{SHIPPED}/{model}"
    env_id = read_model_meta(path)["envs"][0]
    binding = make_binding(env_id)
    con, free = engines(path, budget=32)
    tool_set = tools or binding.tools
    rc, rf = con.register(tool_set), free.register(tool_set)
    env = binding.env
    obs, _ = env.reset(seed=0)
    compared = 0
    space = env.action_space
    space.seed(0)
    for _ in range(60):
        turn = turn_for(binding, obs)
        dc, df = con.decide(rc.handle, turn), free.decide(rf.handle, turn)
        assert dc.legal
        special = set(con.constrainer.special_ids)
        if df.legal and not any(special & set(ids[:-1]) for ids in df.head_token_ids.values()):
            assert dc.head_token_ids == df.head_token_ids
            compared += 1
        obs, _, term, trunc, _ = env.step(space.sample())
        if term or trunc:
            obs, _ = env.reset()
    assert compared >= (30 if tools is None else 3)  # on foreign tools the student is mostly illegal


@pytest.mark.parametrize("env_id", ["Acrobot-v1", "MountainCar-v0", "Pendulum-v1", "FrozenLake-v1",
                                    "Blackjack-v1", "LunarLander-v3", "MountainCarContinuous-v0"])
def test_foreign_model_on_gymnasium_tools_is_legal(env_id, tiny):
    """The shipped CartPole student and a random model, on tools they never saw: every call legal."""
    from tickcall.envs.binding import make_binding
    from tickcall.envs.policies import turn_for

    binding = make_binding(env_id)
    env = binding.env
    obs, _ = env.reset(seed=1)
    env.action_space.seed(1)
    for path in (f"{SHIPPED}/tickcall-cartpole", tiny):
        con = HFEngine(path, device="cpu", max_new_tokens=16)
        reg = con.register(binding.tools)
        for _ in range(12):
            d = con.decide(reg.handle, turn_for(binding, obs))
            assert d.legal, (env_id, d.heads, d.reason)
            binding.call_to_action(d.call)  # the env accepts it as an action
            obs, _, term, trunc, _ = env.step(env.action_space.sample())
            if term or trunc:
                obs, _ = env.reset()


def test_grammars_are_compiled_once_per_registration_and_shared(tiny):
    con, _ = engines(tiny)
    a = con.register(TRICKY_TOOLS)
    b = con.register(list(reversed(TRICKY_TOOLS)))
    assert a.grammars.chosen[("act", "arg1")].compiled is b.grammars.chosen[("act", "arg1")].compiled
    cached = len(con.constrainer._cache)
    for turn in turns(3):
        con.decide(a.handle, turn)
    assert len(con.constrainer._cache) == cached  # nothing compiled per tick


def test_rules_follow_the_schema():
    from tickcall.models.grammars import build_head_grammars

    specs = normalize_tools(TRICKY_TOOLS)
    g = build_head_grammars(specs, ("function", "arg1", "arg2", "arg3"))
    assert not g.start["function"].nullable
    assert not g.chosen[("set_mode", "arg1")].nullable  # required
    assert g.chosen[("act", "arg2")].nullable  # optional
    assert g.chosen[("wait", "arg1")].nullable  # beyond its arity: only omitted
    assert str(g.chosen[("wait", "arg1")].grammar).strip() == 'root ::= ("")'
    assert build_head_grammars(specs, ("function",), allow_no_call=True).start["function"].nullable
    assert g.weaker == []


@pytest.mark.parametrize("category", ["live_multiple", "simple_java", "simple_javascript", "parallel_multiple"])
def test_bfcl_tool_sets_are_legal_for_a_random_model(category, tiny):
    """A sample of BFCL tool sets (every 25th the engine accepts), one decide each on the question's
    text: all legal. The full sweep is `tickcall bench legality` (docs/benchmarks.md)."""
    bfcl = pytest.importorskip("bfcl_eval", reason="bfcl-eval data not installed (scripts/setup.sh --dev)")
    import json
    from pathlib import Path

    from tickcall.models.tools import ToolSchemaError

    path = Path(bfcl.__file__).parent / "data" / f"BFCL_v4_{category}.json"
    questions = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][::25]
    con = HFEngine(tiny, device="cpu", max_new_tokens=16)
    checked = 0
    for q in questions:
        try:
            reg = con.register(q["function"])
        except ToolSchemaError:
            continue
        text = next((m["content"] for m in q["question"][0] if m.get("role") == "user"), "")
        d = con.decide(reg.handle, Turn(query=text[:500]))
        con.unregister(reg.handle)
        assert d.legal, (q["id"], d.heads, d.reason)
        checked += 1
    assert checked >= 2


def test_confidence_is_the_smallest_chosen_token_probability(tiny):
    """Per head the smallest probability (after the mask) of a token the model chose: in (0, 1]; an
    untrained model is far less sure than the shipped student on its own env."""
    from tickcall.agent.inproc import InProcPolicy

    con, _ = engines(tiny)
    reg = con.register(TRICKY_TOOLS)
    low = [con.decide(reg.handle, t).min_confidence for t in turns(8)]
    assert all(0 < c <= 1 for c in low)
    student = HFEngine(f"{SHIPPED}/tickcall-arena", device="cpu")
    client = InProcPolicy(student)
    client.hello()
    from tickcall.envs.binding import make_binding

    client.register(make_binding("tickcall/Arena-v0").tools)
    reply = client.decide({"query": "tick 1: you at 3,4 hp 10; enemy 1 at 5,4 hp 3"}, tick_id=1)
    assert reply.confidence is not None and 0 < reply.confidence <= 1
    assert min(low) < 0.9


def test_compiled_grammar_cache_is_bounded(tiny, monkeypatch):
    """A service fed endless distinct tool sets must not grow: the cache is an LRU (tickcall bench soak
    found the unbounded one growing ~20 MB/s under register spam)."""
    import tickcall.models.constrain as constrain

    monkeypatch.setattr(constrain, "CACHE_ENTRIES", 8)
    con, _ = engines(tiny)
    for i in range(30):
        tools = [{"name": f"act_{i}", "description": "d", "parameters": {"type": "object", "properties": {
            "x": {"type": "integer", "minimum": 0, "maximum": i + 1}}, "required": ["x"]}}]
        reg = con.register(tools)
        assert con.decide(reg.handle, Turn("x")).legal
        con.unregister(reg.handle)
    assert len(con.constrainer._cache) <= 8


# ---------------------------------------------------------------------- rule 5: canonical literals
PREFIX_TOOLS = [
    {"name": "pick", "description": "p", "parameters": {"type": "object", "properties": {
        "item": {"type": "string", "enum": ["m", "move", "wait", "w"]},
        "n": {"type": "number", "minimum": 0, "maximum": 3}}, "required": ["item"]}},
    {"name": "move", "description": "m", "parameters": {"type": "object", "properties": {
        "item": {"type": "string", "enum": ["move", "m"]}}, "required": ["item"]}},
]


def test_literal_rules_know_their_texts():
    from tickcall.envs.arena import ARENA_TOOLS
    from tickcall.models.grammars import build_head_grammars

    g = build_head_grammars(normalize_tools(ARENA_TOOLS), ("function", "arg1", "arg2"))
    directions = {"N", "NE", "E", "SE", "S", "SW", "W", "NW"}
    assert g.start["function"].texts == {"wait", "move", "aim", "fire", "dash"}
    assert g.start["arg1"].texts == directions  # the tools without a direction omit the head
    assert g.chosen[("move", "arg2")].texts == {"walk", "run"}
    assert g.start["arg2"].texts is None  # dash's distance is a number: not a finite set
    tricky = build_head_grammars(normalize_tools(TRICKY_TOOLS), ("function", "arg1", "arg2"))
    assert tricky.chosen[("act", "arg2")].texts is None  # a pattern string


def test_canonical_literals_spell_texts_as_the_tokenizer_does(tiny):
    eng = HFEngine(tiny, device="cpu", canonical_literals=True)
    reg = eng.register(PREFIX_TOOLS)
    c = eng.constrainer
    canon = c.canonical_texts("arg1", reg.grammars.start["arg1"])
    spell = {t: tuple(eng.encode(f"<arg1>{t}</arg1>")[1:-1]) for t in ("m", "move", "wait", "w")}
    assert spell["move"][: len(spell["m"])] != spell["m"], "precondition: 'm' must not spell the start of 'move'"
    stops = set(c.stop_ids("arg1", True))
    allowed = lambda prefix: {  # noqa: E731
        i for i in range(c.vocab_size) if (int(canon.bits(prefix)[i >> 5]) >> (i & 31)) & 1
    }
    assert allowed(spell["m"]) == stops  # 'm' is complete: only a stop may follow
    assert allowed(()) == {s[0] for s in spell.values()} | stops
    assert c.canonical_texts("arg2", reg.grammars.start["arg2"]) is None  # a number among its values
    assert HFEngine(tiny, device="cpu").constrainer.canonical_texts("arg1", reg.grammars.start["arg1"]) is None


def test_canonical_literals_change_only_spellings_the_tokenizer_never_writes(tiny, monkeypatch):
    """Greedy decoding restricted to the tokenizer's spellings keeps every call whose unrestricted
    tokens already were those spellings, writes only spellings otherwise, and saves forwards."""
    import tickcall.models.lean as lean

    forwards = {"on": 0, "off": 0}
    side = {"now": "off"}
    real = lean.LeanLM.step

    def counting(self, rb, tokens):
        forwards[side["now"]] += 1
        return real(self, rb, tokens)

    monkeypatch.setattr(lean.LeanLM, "step", counting)
    on = HFEngine(tiny, device="cpu", max_new_tokens=8, canonical_literals=True, jump_forward=True)
    off = HFEngine(tiny, device="cpu", max_new_tokens=8, jump_forward=True)
    assert on.info()["canonical_literals"] and not off.info()["canonical_literals"]
    ra, rb = on.register(PREFIX_TOOLS), off.register(PREFIX_TOOLS)
    spellings = {tuple(on.encode(f"<arg1>{t}</arg1>")[1:-1]) for t in ("m", "move", "wait", "w")}
    kept = changed = 0
    for turn in turns(40):
        side["now"] = "on"
        a = on.decide(ra.handle, turn)
        side["now"] = "off"
        b = off.decide(rb.handle, turn)
        assert a.legal, (a.heads, a.reason)
        assert tuple(a.head_token_ids["arg1"][:-1]) in spellings, a.heads
        if tuple(b.head_token_ids["arg1"][:-1]) in spellings and not b.redecoded:
            assert (a.call, a.heads) == (b.call, b.heads), turn.query
            kept += 1
        else:
            changed += 1
    assert kept > 0 and changed > 0, "the random model should write both kinds of spelling (else vacuous)"
    assert forwards["on"] < forwards["off"]


def test_canonical_literals_need_the_constrained_decode(tiny):
    from tickcall.models.engine import EngineError

    with pytest.raises(EngineError, match="canonical_literals .* needs constrain on"):
        HFEngine(tiny, device="cpu", constrain=False, canonical_literals=True)
