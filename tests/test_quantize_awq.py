"""AWQ / W4A16: calibration data, refusals, and the real round trip (llm-compressor in .venv-quant).

The round trip runs wherever the quantization environment exists (``scripts/setup.sh --dev`` makes it)
and skips with the reason otherwise: it trains a small CartPole student (~1 minute), quantizes it,
and holds the W4A16 calls to the dense ones on held-out turns (a random model would say little: its
near-ties flip under any rounding). docs/benchmarks.md ("## vLLM backend") has the figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tickcall.envs.teaching import get_source
from tickcall.models import quantize as q
from tickcall.models.calls import Call
from tickcall.models.training.collect import Record


def test_calibration_from_text_and_training_records(tmp_path):
    from tickcall.models.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "m", hidden=128, heads=4, kv_heads=2, intermediate=384)
    calib = tmp_path / "calib.jsonl"
    rec = Record("CartPole-v1", "x=+0.012 v=-0.340 a=+0.021 w=+0.551", [], Call("push", {"direction": "left"}))
    calib.write_text(json.dumps({"text": "hello"}) + "\n\n" + json.dumps(rec.to_dict()) + "\n")
    texts = q.calibration_texts(model, calib, samples=100, sources=get_source)
    assert "hello" in texts
    rows = [t for t in texts if t != "hello"]
    assert rows and all("x=+0.012" in t and t.endswith("<|im_end|>") for t in rows)
    assert any("<function>push</function>" in t for t in rows)  # prompt + head + target, as trained
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"nope": 1}) + "\n")
    with pytest.raises(q.QuantizeError, match="bad.jsonl:1"):
        q.calibration_texts(model, bad, sources=get_source)


def test_refusals_before_running_anything(tmp_path, monkeypatch):
    from tickcall.models.tiny import make_tiny_model

    odd = make_tiny_model(tmp_path / "odd", hidden=64, heads=2, kv_heads=1, intermediate=192)
    with pytest.raises(q.QuantizeError, match="hidden_size 64 is not a multiple of the group size 128"):
        q.quantize_awq(odd, tmp_path / "out")
    ok = make_tiny_model(tmp_path / "ok", hidden=128, heads=4, kv_heads=2, intermediate=384)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(q.QuantizeError, match="not empty"):
        q.quantize_awq(ok, tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    monkeypatch.setenv("TICKCALL_QUANT_PYTHON", str(tmp_path / "no-such-python"))
    with pytest.raises(q.QuantizeError, match="setup_quant.sh"):
        q.quantize_awq(ok, tmp_path / "out")


def test_cli_reports_a_missing_environment(tmp_path, monkeypatch, capsys):
    from tickcall.models.tiny import make_tiny_model

    from tickcall.cli import main

    model = make_tiny_model(tmp_path / "m", hidden=128, heads=4, kv_heads=2, intermediate=384)
    monkeypatch.setenv("TICKCALL_QUANT_PYTHON", str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match="tickcall quantize: no quantization environment"):
        main(["quantize", "--method", "awq", str(model), str(tmp_path / "out")])


def _quant_env_or_skip() -> Path:
    try:
        return q.quant_python()
    except q.QuantizeError as exc:
        pytest.skip(str(exc))


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small CartPole-v1 student trained here (configs/train-ci.yaml reshaped to hidden 128, 4 heads:
    head size 32 for vLLM-CPU, widths that are multiples of the W4A16 group 128)."""
    _quant_env_or_skip()
    from tickcall.models.training.pipeline import TrainConfig

    from tickcall.training import make_pipeline

    tmp = tmp_path_factory.mktemp("awq")
    cfg = TrainConfig.load(ROOT / "configs" / "train-ci.yaml")
    cfg.out, cfg.work_dir = str(tmp / "model"), str(tmp / "work")
    cfg.model.hidden, cfg.model.heads, cfg.model.kv_heads, cfg.model.intermediate = 128, 4, 2, 384
    cfg.eval_episodes, cfg.train.steps = 1, 250
    scores = make_pipeline(cfg, log=lambda _: None, progress=False).run()
    return tmp, Path(cfg.out), Path(cfg.work_dir) / "data-CartPole-v1-r0.jsonl", scores


def _reshard(src: Path, dst: Path) -> Path:
    """The same checkpoint laid out as the public RT-Qwen folders: weights in two shards + an index."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    (dst / "model.safetensors").unlink()
    names = sorted(state)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:]), 1):
        file = f"model-0000{i}-of-00002.safetensors"
        save_file({k: state[k].contiguous() for k in part}, dst / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


@pytest.mark.slow
def test_trained_model_w4a16_agrees_with_dense(trained):
    """Quantize a trained student with AWQ (calibrated on its own training rows), load the W4A16 folder
    with load_engine (transformers, dequantized) in our layout and in the public sharded one, and
    compare calls with the dense model on held-out turns; then vLLM's int4 kernels where they exist."""
    import torch
    from tickcall.models.loading import load_engine

    tmp, model, data, scores = trained
    assert scores["envs"]["CartPole-v1"]["heldout"]["per_head"]["function"] > 0.95  # it did learn
    res = q.quantize_awq(model, tmp / "w4", calib=data, samples=32, n_grid=5, sources=get_source)
    assert res.quantization == {"method": "compressed-tensors", "format": "pack-quantized",
                                "weight_bits": 4, "group_size": 128}
    assert (tmp / "w4" / "tickcall.json").exists()
    assert q._size(tmp / "w4") < q._size(model)

    tools, turns = q.heldout_turns(model, n=60, sources=get_source)
    dense = load_engine(model, device="cpu", max_new_tokens=8)
    w4 = load_engine(tmp / "w4", device="cpu", max_new_tokens=8)
    w = w4.model.model.layers[0].mlp.down_proj.weight.detach()
    ref = dense.model.model.layers[0].mlp.down_proj.weight.detach()
    assert w.shape == ref.shape and not torch.equal(w, ref)  # really the int4 weights ...
    assert all(w[r, g:g + 128].unique().numel() <= 16 for r in range(8) for g in range(0, w.shape[1], 128))
    agree = q.compare_engines(dense, w4, tools, turns)
    print("trained student, W4A16 (transformers) vs dense:", agree.to_dict())
    assert agree.turns == len(turns) > 0
    # measured 100% on this student and on a 1200-step one (docs/benchmarks.md); a trained model's margins
    # dwarf the int4 rounding, so near-ties are rare
    assert agree.calls >= 0.9, agree.disagreements
    public = load_engine(_reshard(tmp / "w4", tmp / "w4-sharded"), device="cpu", max_new_tokens=8)
    same = q.compare_engines(w4, public, tools, turns[:20])
    assert same.heads == 1.0  # same weights, other layout

    try:
        import vllm  # noqa: F401
    except ImportError:
        return
    from tickcall.models.vllm_checks import UnsupportedQuantizationError, cpu_has_int4_kernels
    from tickcall.models.vllm_engine import VLLMEngine

    if not cpu_has_int4_kernels():
        with pytest.raises(UnsupportedQuantizationError, match="AVX-512"):
            VLLMEngine(tmp / "w4", device="cpu")
        return
    with VLLMEngine(tmp / "w4-sharded", device="cpu", max_new_tokens=8) as v:
        assert v.info()["quantization"]["weight_bits"] == 4
        vq = q.compare_engines(v, dense, tools, turns)
    print("trained student, W4A16 on vLLM int4 kernels (bf16) vs dense:", vq.to_dict())
    assert vq.calls >= 0.9, vq.disagreements
