"""Which fast weight format a CPU should run a language model in (``HFEngine(precision="auto")``).

The CPU's instruction-set flags come from ``/proc/cpuinfo`` (Linux) and, as a fallback, from torch's
own dispatch level (``torch.backends.cpu.get_cpu_capability()``). The rule, measured (docs/benchmarks.md,
"SmolLM2 on the CPU"):

* ``amx_bf16`` (Sapphire Rapids and later): bf16 weights and activations, the matmuls on AMX tiles;
* anything else, ``avx512_bf16`` included: int8 weights with dynamic activation quantization. On a
  2-core EPYC with avx512_bf16 and VNNI (no AMX) the int8 matmuls of SmolLM2-135M run 2.7x faster than
  bf16 at 3 rows and 1.5x at 68, and the activations stay float32 (bf16 element-wise ops are slower
  than float32 ones there), so int8 wins there too.
"""

from __future__ import annotations

from pathlib import Path

PRECISIONS = ("auto", "fp32", "bf16", "int8")
FLAGS_OF_INTEREST = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f", "avx2", "avx_vnni")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's flags of interest (``FLAGS_OF_INTEREST``); empty where nothing can be read."""
    flags: set[str] = set()
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    if not flags:  # not Linux: torch knows at least the vector width it dispatches to
        try:
            import torch

            cap = torch.backends.cpu.get_cpu_capability().lower()
            flags = (
                {"avx512f", "avx2"} if cap.startswith("avx512") else ({"avx2"} if cap == "avx2" else set())
            )
        except (ImportError, AttributeError):
            pass
    return frozenset(f for f in FLAGS_OF_INTEREST if f in flags)


def choose_precision(flags: frozenset[str] | None = None) -> tuple[str, str]:
    """(precision, reason) for a model that takes the fast path: "bf16" with AMX, else "int8"."""
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "bf16", "bf16: amx_bf16"
    have = [f for f in ("avx512_bf16", "avx512_vnni", "avx_vnni") if f in flags]
    why = "+".join(have) if have else "no bf16/VNNI flags"
    return "int8", f"int8: {why}, no amx_bf16 (int8 measured faster than bf16 without AMX)"
