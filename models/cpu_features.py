"""Which fast weight format a CPU should run a language model in (``HFEngine(precision="auto")``).

The CPU's instruction-set flags come from ``/proc/cpuinfo`` (Linux) and, as a fallback, from torch's
own dispatch level (``torch.backends.cpu.get_cpu_capability()``). The rule (docs/benchmarks.md,
"SmolLM2 on the CPU"):

* ``amx_bf16`` or ``avx512_bf16``: bf16 weights and activations (AMX tiles / AVX-512 BF16 dot products);
* anything else: int8 weights with dynamic activation quantization (fbgemm, VNNI where present).

Measured on the 2-core EPYC (avx512_bf16 + VNNI, no AMX), SmolLM2-135M: int8 decides about twice as
fast as bf16, but its per-call activation scale (one per tensor) moves SmolLM2's greedy choices far
more: against float32 on the same 20 goal-arena turns bf16 kept 90% identical calls (100% of the
function heads), int8 0% (35% of the function heads). So int8 is taken only where bf16 has no
hardware support, and ``precision="int8"`` asks for it explicitly.
"""

from __future__ import annotations

from pathlib import Path

PRECISIONS = ("auto", "fp32", "bf16", "int8")
FLAGS_OF_INTEREST = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f", "avx2", "avx_vnni")


def cpu_name(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name from ``/proc/cpuinfo``; ``platform``'s processor or machine elsewhere."""
    import platform

    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    """(precision, reason) for a model that takes the fast path: "bf16" where the CPU has bf16
    instructions (AMX or AVX-512 BF16), else "int8"."""
    flags = cpu_flags() if flags is None else flags
    for flag in ("amx_bf16", "avx512_bf16"):
        if flag in flags:
            return "bf16", f"bf16: {flag}"
    have = [f for f in ("avx512_vnni", "avx_vnni") if f in flags]
    return "int8", f"int8: no bf16 instructions ({'+'.join(have) if have else 'no VNNI either'})"
