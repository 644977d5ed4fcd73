"""Which quantized folders the transformers backend loads, and the clear errors for the others.

The refusals are checked here without weights (they come before any weight is read). Real W4A16
folders (ours, and the same folder re-laid out as the public RT-Qwen "AWQ" shards) are loaded in
tests/test_quantize_awq.py, which quantizes a trained model with llm-compressor.
"""

from __future__ import annotations

import json

import pytest
from tickcall.models.loading import load_engine
from tickcall.models.quantize_load import QuantizedCheckpointError, transformers_load_kwargs

W4A16 = {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head"],
         "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
             "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 128}}}}
AUTOAWQ = {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm", "zero_point": True}


@pytest.fixture
def model(tmp_path):
    from tickcall.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path / "m", hidden=64, heads=2, kv_heads=1, intermediate=128)


def _set_quantization(folder, q):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = q
    (folder / "config.json").write_text(json.dumps(cfg))


def test_dense_folder_needs_nothing(model):
    assert transformers_load_kwargs(model) == {}


def test_compressed_tensors_folder_is_dequantized(model):
    _set_quantization(model, W4A16)
    kw = transformers_load_kwargs(model)
    assert kw["quantization_config"].dequantize is True


def test_autoawq_folder_refused_clearly_by_load_engine(model):
    _set_quantization(model, AUTOAWQ)
    with pytest.raises(QuantizedCheckpointError, match=r"quant_method 'awq' \(4-bit, group 128, gemm\).*AutoAWQ"):
        load_engine(model)


def test_unknown_format_and_missing_shards_refused(model):
    _set_quantization(model, {**W4A16, "format": "marlin-24"})
    with pytest.raises(QuantizedCheckpointError, match="format 'marlin-24'"):
        load_engine({"backend": "transformers", "model": str(model)})
    _set_quantization(model, W4A16)
    (model / "model.safetensors").rename(model / "model-00001-of-00002.safetensors")
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(QuantizedCheckpointError, match="missing: model-00002-of-00002.safetensors"):
        load_engine(model)
    (model / "model.safetensors.index.json").unlink()
    (model / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(QuantizedCheckpointError, match="no .safetensors"):
        load_engine(model)
