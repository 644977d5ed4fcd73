"""Training rows exactly as the SimpleTool format describes them, the history the student is shown,
the teacher sources, configs, and the shipped-model lookup. Fast: no training here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tickcall.envs.teaching import get_source
from tickcall.models.calls import Call
from tickcall.models.format import Turn, get_template
from tickcall.models.tools import normalize_tools
from tickcall.models.training.collect import RANDOM, TEACHER, Record, rollout, show_history
from tickcall.models.training.rows import DEFAULT_HEAD_WEIGHTS, RowCodec, branch_texts, train_heads

ROOT = Path(__file__).resolve().parents[1]

ARENA_LIKE = normalize_tools([
    {"name": "wait", "description": "", "parameters": {"type": "object", "properties": {}}},
    {"name": "dash", "description": "", "parameters": {"type": "object", "properties": {
        "direction": {"type": "string", "enum": ["N", "S"]}, "distance": {"type": "number"}}}},
])


def test_branch_texts_follow_the_format():
    rec = Record("x", "tgt=N d=5.2", ['wait()@f1 done'], Call("dash", {"direction": "N", "distance": 2}))
    tmpl = get_template("compact")
    rows = branch_texts(rec, ARENA_LIKE, tmpl, heads_mode="all")
    prompt = tmpl.prefix(ARENA_LIKE) + tmpl.suffix(Turn(
        "tgt=N d=5.2", ['wait()@f1 done']))
    assert [r[0] for r in rows] == [prompt + f"<{h}>" for h in
                                    ("function", "arg1", "arg2", "arg3", "arg4", "arg5", "arg6")]
    targets = [r[1] for r in rows]
    assert targets[:4] == ["dash</function><|im_end|>", "N</arg1><|im_end|>", "2</arg2><|im_end|>",
                           "<|null|></arg3><|im_end|>"]
    assert [r[2] for r in rows] == [2.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6]
    # an omitted or unused slot is <|null|>; the used-heads mode stops at the largest arity
    wait = branch_texts(Record("x", "q", [], Call("wait", {})), ARENA_LIKE, tmpl, heads_mode="used")
    assert [r[1] for r in wait] == ["wait</function><|im_end|>", "<|null|></arg1><|im_end|>",
                                    "<|null|></arg2><|im_end|>"]
    assert train_heads(ARENA_LIKE, "used") == ("function", "arg1", "arg2")
    with pytest.raises(ValueError, match="heads mode"):
        train_heads(ARENA_LIKE, "some")


def test_unknown_teacher_call_is_refused():
    rec = Record("x", "q", [], Call("jump", {}))
    with pytest.raises(ValueError, match="jump"):
        branch_texts(rec, ARENA_LIKE, get_template("compact"))


def test_codec_refuses_a_tokenizer_that_splits_the_tags():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["plain text only <function> x"] * 5, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    with pytest.raises(ValueError, match="must be one id"):
        RowCodec(PreTrainedTokenizerFast(tokenizer_object=tok), get_template("compact"))


def test_show_history_matches_the_async_status_lines():
    rng = np.random.default_rng(0)
    calls = [f'push(direction="{d}")' for d in ("left", "right", "left", "right", "left")]
    seen = [show_history(calls, 4, "futures", rng) for _ in range(200)]
    assert all(len(s) <= 4 for s in seen)
    full = [s for s in seen if len(s) == 4]
    assert full and all(s[0].startswith('push(direction="right")@f2 ') for s in full)
    tails = {s[-1].split(" ", 1)[1].split(" ")[0] for s in full}
    assert tails == {"done", "running"}
    assert show_history(calls, 2, "lockstep", rng) == ['push(direction="right")@f4 done',
                                                       'push(direction="left")@f5 done']
    assert show_history(calls, 0, "futures", rng) == [] and show_history([], 4, "futures", rng) == []
    with pytest.raises(ValueError, match="history_style"):
        show_history(calls, 2, "plain", rng)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "tickcall/Arena-v0"])
def test_teacher_rollouts_are_seeded_and_labelled(env_id):
    src = get_source(env_id)
    recs, stats = rollout(src, TEACHER, [1, 2], n_envs=2, history_len=2, max_decisions=40, rng_seed=5)
    again, _ = rollout(src, TEACHER, [1, 2], n_envs=2, history_len=2, max_decisions=40, rng_seed=5)
    assert [r.to_dict() for r in recs] == [r.to_dict() for r in again]
    assert stats.decisions == len(recs) and stats.illegal == 0
    names = {t.name for t in src.tools}
    assert all(r.call.name in names for r in recs)
    _, rnd = rollout(src, RANDOM, [1, 2], n_envs=2, max_decisions=40, record=False)
    assert rnd.decisions > 0


def test_an_illegal_call_holds_the_previous_action_and_is_counted():
    src = get_source("CartPole-v1", prefer_builtin=True)
    _, stats = rollout(src, lambda texts, hist: [None] * len(texts), [0], n_envs=1, record=False)
    assert stats.illegal == stats.decisions > 0
    assert stats.mean_return < 100  # never pushing the right way: the pole falls


def test_builtin_cartpole_source_matches_the_envs_binding():
    ours, theirs = get_source("CartPole-v1", prefer_builtin=True), get_source("CartPole-v1")
    assert [t.rendered for t in ours.tools] == [t.rendered for t in theirs.tools]
    a, b = ours.instance(), theirs.instance()
    obs, _ = a.env.reset(seed=3)
    assert a.obs_text(obs) == b.obs_text(obs) and a.teacher(obs) == b.teacher(obs)
    assert ours.hold == pytest.approx(50 / 16)


def test_configs_load_and_unknown_keys_are_refused(tmp_path):
    from tickcall.models.training.pipeline import TrainConfig

    for path in sorted((ROOT / "configs").glob("train*.yaml")):
        cfg = TrainConfig.load(path)
        assert cfg.envs and cfg.train.steps > 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("envs: [CartPole-v1]\ntrain: {stepz: 3}\n")
    with pytest.raises(ValueError, match="stepz"):
        TrainConfig.load(bad)
    bad.write_text("envz: [CartPole-v1]\n")
    with pytest.raises(ValueError, match="envz"):
        TrainConfig.load(bad)


def test_default_head_weights_are_the_papers():
    assert DEFAULT_HEAD_WEIGHTS["function"] == 2.0
    assert [round(DEFAULT_HEAD_WEIGHTS[f"arg{i}"], 2) for i in range(1, 7)] == [1.1, 1.2, 1.3, 1.4, 1.5, 1.6]


def test_shipped_lookup():
    from tickcall.models.shipped import SHIPPED, default_model_path

    with pytest.raises(KeyError, match="no shipped model"):
        default_model_path("Nope-v0")
    assert "tickcall/Arena-v0" in SHIPPED and "CartPole-v1" in SHIPPED
    path = default_model_path()
    assert (path / "config.json").exists() and (path / "README.md").exists()
    assert default_model_path("tickcall/Arena-v0") == path


@pytest.mark.parametrize("prefer_builtin", [True, False])
def test_cartpole_teacher_logits_agree_with_its_calls(prefer_builtin):
    """Rollout records carry the expert's scores; the call is always the value with the higher score,
    and with text labels the scores are those of the numbers the text shows."""
    src = get_source("CartPole-v1", prefer_builtin=prefer_builtin, text_labels=True)
    recs, _ = rollout(src, TEACHER, [0, 1], n_envs=2, epsilon=0.3, max_decisions=60)
    assert recs and all(r.logits is not None for r in recs)
    for r in recs:
        scores = r.logits["direction"]
        x, v, a, w = (float(p.split("=")[1]) for p in r.query.split())
        assert scores["right"] - scores["left"] == pytest.approx(0.05 * x + 0.3 * v + 3 * a + 0.6 * w)
        assert r.call.arguments["direction"] == ("right" if scores["right"] > scores["left"] else "left")
    assert Record.from_dict(recs[0].to_dict()) == recs[0]
    arena, _ = rollout(get_source("tickcall/Arena-v0"), TEACHER, [0], n_envs=1, max_decisions=5)
    assert arena[0].logits is None and "logits" not in arena[0].to_dict()


def test_a_config_turns_history_on_with_the_run_time_status_lines(tmp_path):
    """``data.history_len`` > 0 in a training config: the rows carry AsyncFC status lines as the
    futures layer writes them (``models.prompt_text``), at most ``history_len`` per turn."""
    import re

    from tickcall.models.training.pipeline import TrainConfig

    from tickcall.training import make_pipeline

    cfg = TrainConfig.load(ROOT / "configs" / "train-ci.yaml")
    cfg.work_dir, cfg.out = str(tmp_path / "work"), str(tmp_path / "model")
    cfg.data.episodes, cfg.data.max_decisions, cfg.data.history_len = 2, 30, 3
    data = make_pipeline(cfg, log=lambda _: None, progress=False).collect_teacher()
    recs = data["CartPole-v1"]
    line = re.compile(r'push\(direction="(left|right)"\)@f\d+ (done|running \d+ms|superseded by @f\d+)')
    assert any(r.history for r in recs) and all(len(r.history) <= 3 for r in recs)
    assert all(line.fullmatch(h) for r in recs for h in r.history)
    with pytest.raises(ValueError, match="history_style"):
        TrainConfig.from_dict({"envs": ["CartPole-v1"], "data": {"history_style": "plain"}})
