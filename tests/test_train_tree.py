"""The training tree (prefix once, suffixes, head branches) is the same computation as plain
full-sequence forwards, and the batched student decodes exactly what the engine decodes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from models.calls import Call  # noqa: E402
from models.format import get_template  # noqa: E402
from models.tools import normalize_tools  # noqa: E402
from models.training.collect import Record  # noqa: E402
from models.training.rows import RowCodec  # noqa: E402
from models.training.sources import CARTPOLE_TOOLS  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from models.tiny import make_tiny_model

    path = make_tiny_model(tmp_path_factory.mktemp("tiny"), hidden=64, layers=2, template="compact", seed=3)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()
    return path, model, AutoTokenizer.from_pretrained(path)


def test_tree_logits_equal_full_sequences(tiny):
    from models.training.tree import branch_hidden, prompt_cache

    _, model, _ = tiny
    prefix = [5, 6, 7, 8, 9, 10]
    suffixes = [[11, 12, 13], [14, 15, 16, 17, 18, 19], [20]]
    branches = [[[30, 31, 32], [33]], [[34, 35], [36, 37, 38, 39]], [[40], [41, 42]]]
    with torch.no_grad():
        kv, p, s_mask, s_len = prompt_cache(model, prefix, suffixes, pad=0)
        hidden, _ = branch_hidden(model, kv, p, s_mask, s_len, branches, pad=0)
        logits = model.lm_head(hidden)
        row = 0
        for b, suf in enumerate(suffixes):
            for br in branches[b]:
                full = model(input_ids=torch.tensor([prefix + suf + br])).logits[0, -len(br):]
                assert torch.allclose(full, logits[row, : len(br)], atol=1e-4), (b, br)
                row += 1


def test_tree_gradients_equal_full_sequence_loss(tiny):
    """The weighted branch loss through the shared caches gives the same gradient as the plain loss."""
    import torch.nn.functional as F

    from models.training.tree import tree_loss

    _, model, _ = tiny
    prefix, suffixes = [5, 6, 7], [[8, 9], [10, 11, 12]]
    branches = [[[20, 21, 22], [23, 24]], [[25, 26], [27, 28, 29]]]
    weights = [[2.0, 1.1], [2.0, 1.1]]
    model.zero_grad()
    loss, _ = tree_loss(model, prefix, suffixes, branches, weights, pad=0)
    loss.backward()
    g_tree = model.model.layers[0].mlp.up_proj.weight.grad.clone()
    model.zero_grad()
    num, den = 0.0, 0.0
    for b, suf in enumerate(suffixes):
        for h, br in enumerate(branches[b]):
            ids = torch.tensor([prefix + suf + br[:-1]])
            logits = model(input_ids=ids).logits[0, -(len(br) - 1):]
            ce = F.cross_entropy(logits, torch.tensor(br[1:]), reduction="sum")
            num = num + weights[b][h] * ce
            den += weights[b][h] * (len(br) - 1)
    ref = num / den
    ref.backward()
    assert torch.allclose(loss.detach(), ref.detach(), atol=1e-5)
    assert torch.allclose(g_tree, model.model.layers[0].mlp.up_proj.weight.grad, atol=1e-5)
    model.zero_grad()


def test_rows_use_the_engine_token_layout(tiny):
    """Prefix and suffix are tokenised apart, a branch is <head> + value + </head> <|im_end|>."""
    _, _, tok = tiny
    tools = normalize_tools(CARTPOLE_TOOLS)
    codec = RowCodec(tok, get_template("compact"), heads_mode="used")
    rec = Record("CartPole-v1", "x=+0.010 v=-0.200 a=+0.030 w=+0.100", [],
                 Call("push", {"direction": "left"}))
    ex = codec.encode(rec, tools)
    assert ex.heads == ("function", "arg1")
    fn, arg = ex.branches
    assert tok.decode(fn) == "<function>push</function><|im_end|>"
    assert tok.decode(arg) == "<arg1>left</arg1><|im_end|>"
    assert ex.weights == [2.0, pytest.approx(1.1)]
    all_heads = RowCodec(tok, get_template("compact"), heads_mode="all").encode(rec, tools)
    assert len(all_heads.branches) == 7
    assert tok.decode(all_heads.branches[6]) == "<arg6><|null|></arg6><|im_end|>"


def test_batch_student_decodes_what_the_engine_decodes(tiny):
    """Same model, same turns: the training-time batched decoder and HFEngine give the same heads."""
    from models.format import Turn
    from models.hf_engine import HFEngine
    from models.training.student import BatchStudent

    path, model, tok = tiny
    tools = normalize_tools(CARTPOLE_TOOLS)
    student = BatchStudent(model, tok, tools, get_template("compact"), max_new_tokens=6)
    engine = HFEngine(path, device="cpu", max_new_tokens=6)
    handle = engine.register(CARTPOLE_TOOLS, template="compact").handle
    turns = [Turn("x=+0.010 v=-0.200 a=+0.030 w=+0.100"), Turn("x=-1.5 v=+0.3", ['push(direction="left")@f1 done']),
             Turn("hello")]
    ours = student.decide(turns)
    for turn, got in zip(turns, ours, strict=True):
        want = engine.decide(handle, turn)
        assert got.heads == want.heads
