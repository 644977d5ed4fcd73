"""Checks the vLLM backend makes before vLLM starts, so an unsupported checkpoint fails with one clear
message instead of a kernel error deep inside vLLM: quantization vs the hardware's kernels, the
attention head size vs the CPU build, and the dtype int4 kernels need.

No vLLM import here: these run (and are tested) where vLLM is not installed.
"""

from __future__ import annotations

from typing import Any

from tickcall.models.engine import EngineError
from tickcall.models.quantize_load import quantization_summary

#: head sizes vLLM's CPU attention backend implements (vllm/v1/attention/backends/cpu_attn.py, 0.32)
CPU_ATTENTION_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


class UnsupportedQuantizationError(EngineError):
    """The checkpoint's quantization has no kernel on this hardware (e.g. int4 on an AVX2 CPU)."""


class UnsupportedModelError(EngineError):
    """The model's shape cannot run on this vLLM build (e.g. a head size the CPU attention lacks)."""


def cpu_has_int4_kernels() -> bool:
    """vLLM's CPU int4 (W4A16) GEMM lives in its AVX-512 builds; an AVX2-only x86 CPU lacks it."""
    import torch

    return bool(torch.cpu._is_avx512_supported())


def check_quantization_runs(config: dict[str, Any], device: str) -> None:
    """Raise :class:`UnsupportedQuantizationError` when the checkpoint's weights cannot run here."""
    q = quantization_summary(config)
    if q is None or device != "cpu":
        return
    bits = q.get("weight_bits")
    if bits is not None and int(bits) < 8 and not cpu_has_int4_kernels():
        raise UnsupportedQuantizationError(
            f"this checkpoint is {q['method']} int{bits} (W{bits}A16, group {q.get('group_size')}); vLLM's "
            "CPU int4 kernels need AVX-512 and this CPU has none (AVX2 at most). Use the dense (fp32/bf16) "
            "checkpoint here, the transformers backend (it decompresses W4A16 to dense weights), or a GPU.")


def check_head_size(config: dict[str, Any], device: str) -> None:
    if device != "cpu":
        return
    heads = config.get("num_attention_heads") or 1
    head_dim = config.get("head_dim") or config.get("hidden_size", 0) // heads
    if head_dim not in CPU_ATTENTION_HEAD_SIZES:
        raise UnsupportedModelError(
            f"head size {head_dim} (hidden {config.get('hidden_size')} / {heads} heads) is not supported by "
            f"vLLM's CPU attention (supported: {', '.join(map(str, CPU_ATTENTION_HEAD_SIZES))}); "
            "use the transformers backend for this model")


def resolve_dtype(config: dict[str, Any], device: str, dtype: str | None) -> str:
    """The dtype to load with: ``dtype`` when given, else float32 (bfloat16 for int4 checkpoints) on
    CPU and ``"auto"`` on GPU. CPU int4 GEMM takes bfloat16 activations only ("cpu_gemm_wna16" has no
    float32), so an explicit float32 for a quantized checkpoint on CPU is refused."""
    quantized = quantization_summary(config) is not None
    if dtype is None:
        return ("bfloat16" if quantized else "float32") if device == "cpu" else "auto"
    if device == "cpu" and quantized and dtype in ("float32", "float"):
        raise UnsupportedQuantizationError("vLLM's CPU int4 kernels run in bfloat16, not float32: "
                                           "leave dtype unset or pass dtype='bfloat16'")
    return dtype
