"""The training tree (prefix once, suffixes, head branches) is the same computation as plain
full-sequence forwards, and the batched student decodes exactly what the engine decodes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tickcall.envs.teaching import CARTPOLE_TOOLS  # noqa: E402
from tickcall.models.calls import Call  # noqa: E402
from tickcall.models.format import get_template  # noqa: E402
from tickcall.models.tools import normalize_tools  # noqa: E402
from tickcall.models.training.collect import Record  # noqa: E402
from tickcall.models.training.rows import RowCodec  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tickcall.models.tiny import make_tiny_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_tiny_model(tmp_path_factory.mktemp("tiny"), hidden=64, layers=2, template="compact", seed=3)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()
    return path, model, AutoTokenizer.from_pretrained(path)


def test_tree_logits_equal_full_sequences(tiny):
    from tickcall.models.training.tree import branch_hidden, prompt_cache

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
    from tickcall.models.training.tree import tree_loss

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
    """Same model, same turns: the training-time batched decoder and HFEngine give the same heads
    (the student's decoder is unconstrained: it measures the raw model while training)."""
    from tickcall.models.format import Turn
    from tickcall.models.hf_engine import HFEngine
    from tickcall.models.training.student import BatchStudent

    path, model, tok = tiny
    tools = normalize_tools(CARTPOLE_TOOLS)
    student = BatchStudent(model, tok, tools, get_template("compact"), max_new_tokens=6)
    engine = HFEngine(path, device="cpu", max_new_tokens=6, constrain=False)
    handle = engine.register(CARTPOLE_TOOLS, template="compact").handle
    turns = [Turn("x=+0.010 v=-0.200 a=+0.030 w=+0.100"), Turn("x=-1.5 v=+0.3", ['push(direction="left")@f1 done']),
             Turn("hello")]
    ours = student.decide(turns)
    for turn, got in zip(turns, ours, strict=True):
        want = engine.decide(handle, turn)
        assert got.heads == want.heads


def test_soft_targets_replace_the_one_hot_on_the_first_value_token(tiny):
    """A soft target changes the CE of exactly that token: to -sum(p log q) over the scored tokens.
    A one-hot soft target gives back the plain loss."""
    import torch.nn.functional as F
    from tickcall.models.training.rows import SoftTarget
    from tickcall.models.training.tree import tree_loss

    _, model, _ = tiny
    prefix, suffixes = [5, 6, 7], [[8, 9], [10, 11, 12]]
    branches = [[[20, 21, 22], [23, 24, 25]], [[20, 21, 22], [23, 26, 25]]]
    weights = [[2.0, 1.1], [2.0, 1.1]]
    with torch.no_grad():
        plain, _ = tree_loss(model, prefix, suffixes, branches, weights, pad=0)
        one_hot = [[SoftTarget(1, (24, 26), (1.0, 0.0))], [SoftTarget(1, (24, 26), (0.0, 1.0))]]
        same, _ = tree_loss(model, prefix, suffixes, branches, weights, pad=0, soft=one_hot)
        assert torch.allclose(plain, same, atol=1e-6)
        soft = [[SoftTarget(1, (24, 26), (0.7, 0.3))], []]
        got, _ = tree_loss(model, prefix, suffixes, branches, weights, pad=0, soft=soft)
        # reference: example 0's arg branch, first target token, against (0.7, 0.3)
        num, den = 0.0, 0.0
        for b, suf in enumerate(suffixes):
            for h, br in enumerate(branches[b]):
                logits = model(input_ids=torch.tensor([prefix + suf + br[:-1]])).logits[0, -(len(br) - 1):]
                ce = F.cross_entropy(logits, torch.tensor(br[1:]), reduction="none")
                if (b, h) == (0, 1):
                    logq = logits[0].log_softmax(-1)
                    ce[0] = -(0.7 * logq[24] + 0.3 * logq[26])
                num = num + weights[b][h] * ce.sum()
                den += weights[b][h] * len(ce)
        assert torch.allclose(got, num / den, atol=1e-5)
        assert not torch.allclose(got, plain, atol=1e-4)


def test_codec_turns_teacher_logits_into_soft_targets(tiny):
    import math

    _, _, tok = tiny
    tools = normalize_tools(CARTPOLE_TOOLS)
    rec = Record("CartPole-v1", "x=+0.000 v=+0.000 a=+0.010 w=+0.000", [], Call("push", {"direction": "right"}),
                 {"direction": {"left": 0.0, "right": 0.03}})
    hard = RowCodec(tok, get_template("compact"), heads_mode="used").encode(rec, tools)
    assert hard.soft == []
    ex = RowCodec(tok, get_template("compact"), heads_mode="used", soft_tau=0.1).encode(rec, tools)
    (st,) = ex.soft
    assert st.branch == 1
    right = tok.encode("right", add_special_tokens=False)[0]
    left = tok.encode("left", add_special_tokens=False)[0]
    assert st.ids == (left, right) and ex.branches[1][1] == right
    assert st.probs[1] == pytest.approx(1 / (1 + math.exp(-0.3)))
    # logits that would pick the other value than the call: refused, nothing silently relabelled
    bad = Record(rec.env_id, rec.query, [], Call("push", {"direction": "left"}), rec.logits)
    with pytest.raises(ValueError, match="do not pick"):
        RowCodec(tok, get_template("compact"), heads_mode="used", soft_tau=0.1).encode(bad, tools)
    with pytest.raises(ValueError, match="soft_tau"):
        RowCodec(tok, get_template("compact"), soft_tau=-1.0)
