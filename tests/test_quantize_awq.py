"""AWQ / W4A16: calibration data, refusals, and the real round trip (llm-compressor in .venv-quant).

The round trip runs wherever the quantization environment exists (``scripts/setup.sh --dev`` makes it)
and skips with the reason otherwise. On a tiny *random* model the call agreement is reported, not
held to the 95% goal (random weights have near-ties everywhere); docs/benchmarks.md has the figure
for a trained model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models import quantize as q
from models.calls import Call
from models.training.collect import Record


def test_calibration_from_text_and_training_records(tmp_path):
    from models.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "m", hidden=128, heads=4, kv_heads=2, intermediate=384)
    calib = tmp_path / "calib.jsonl"
    rec = Record("CartPole-v1", "x=+0.012 v=-0.340 a=+0.021 w=+0.551", [], Call("push", {"direction": "left"}))
    calib.write_text(json.dumps({"text": "hello"}) + "\n\n" + json.dumps(rec.to_dict()) + "\n")
    texts = q.calibration_texts(model, calib, samples=100)
    assert "hello" in texts
    rows = [t for t in texts if t != "hello"]
    assert rows and all("x=+0.012" in t and t.endswith("<|im_end|>") for t in rows)
    assert any("<function>push</function>" in t for t in rows)  # prompt + head + target, as trained
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"nope": 1}) + "\n")
    with pytest.raises(q.QuantizeError, match="bad.jsonl:1"):
        q.calibration_texts(model, bad)


def test_refusals_before_running_anything(tmp_path, monkeypatch):
    from models.tiny import make_tiny_model

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
    from models.tiny import make_tiny_model
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


@pytest.mark.slow
def test_round_trip_w4a16_loads_in_transformers_and_vllm(tmp_path):
    """Quantize a tiny model for real, check the checkpoint format, load it with transformers, compare
    calls with the dense model; then vLLM: runs it where int4 kernels exist, refuses clearly elsewhere."""
    _quant_env_or_skip()
    import torch

    from models.hf_engine import HFEngine
    from models.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "dense", hidden=128, heads=4, kv_heads=2, intermediate=384,
                            seed=3, init_std=0.2, tie_embeddings=False)
    res = q.quantize_awq(model, tmp_path / "w4", samples=8, n_grid=4)
    assert res.quantization == {"method": "compressed-tensors", "format": "pack-quantized",
                                "weight_bits": 4, "group_size": 128}
    assert (tmp_path / "w4" / "tickcall.json").exists()
    assert q._size(tmp_path / "w4") < q._size(model)

    dense = q.dense_copy(tmp_path / "w4", tmp_path / "w4-dense")
    from safetensors.torch import load_file

    w = load_file(dense / "model.safetensors")["model.layers.0.mlp.down_proj.weight"]
    ref = load_file(model / "model.safetensors")["model.layers.0.mlp.down_proj.weight"]
    assert w.shape == ref.shape and not torch.equal(w, ref)
    assert all(w[r, g:g + 128].unique().numel() <= 16 for r in range(4) for g in range(0, w.shape[1], 128))

    tools, turns = q.heldout_turns(model, n=12)
    a, b = HFEngine(model, device="cpu", max_new_tokens=8), HFEngine(dense, device="cpu", max_new_tokens=8)
    agree = q.compare_engines(a, b, tools, turns)
    assert agree.turns == len(turns) > 0
    assert 0.0 <= agree.heads <= agree.first_tokens <= 1.0 and agree.first_tokens > 0.0
    print("random tiny model, W4A16 vs dense:", agree.to_dict())

    try:
        import vllm  # noqa: F401
    except ImportError:
        return
    from models.vllm_engine import UnsupportedQuantizationError, VLLMEngine, cpu_has_int4_kernels

    if not cpu_has_int4_kernels():
        with pytest.raises(UnsupportedQuantizationError, match="AVX-512"):
            VLLMEngine(tmp_path / "w4", device="cpu")
        return
    with VLLMEngine(tmp_path / "w4", device="cpu", max_new_tokens=8) as v:
        assert v.info()["quantization"]["weight_bits"] == 4
        vq = q.compare_engines(v, b, tools, turns)
    print("random tiny model, vLLM int4 kernels vs transformers dequantized:", vq.to_dict())
    assert vq.first_tokens > 0.5  # same int4 weights, different kernels: mostly the same argmax
