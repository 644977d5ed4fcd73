"""``tickcall quantize --method awq MODEL OUT``: AWQ -> compressed-tensors W4A16 (int4, group 128).

Runs llm-compressor in its own environment (``.venv-quant``; ``bash scripts/setup_quant.sh``), calibrated
on SimpleTool training rows of the model's envs (or ``--calib FILE.jsonl``, e.g. the training run's
``data-*.jsonl``). ``--check N`` then loads the W4A16 folder with the transformers backend (dequantized)
and, with ``--vllm``, on vLLM (int4 kernels), and reports call and per-head agreement with the dense
model on N held-out turns. ``--check-only`` checks an existing W4A16 folder.

    tickcall quantize --method awq runs/quant-student/model /tmp/w4a16 --check 300 --vllm
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "quantize a model folder to W4A16 (AWQ recipe, llm-compressor in .venv-quant)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="dense model folder (config.json, safetensors, tokenizer)")
    p.add_argument("out", help="folder to write the compressed-tensors W4A16 checkpoint to (new or empty)")
    p.add_argument("--method", default="awq", choices=["awq"], help="quantization recipe (default awq)")
    p.add_argument("--calib", help="calibration JSONL: training records or {\"text\": ...} lines "
                                   "(default: teacher rows of the model's envs)")
    p.add_argument("--samples", type=int, default=128, help="calibration samples (default 128)")
    p.add_argument("--max-seq-length", type=int, default=512, help="calibration tokens per sample")
    p.add_argument("--group-size", type=int, default=128,
                   help="int4 group size (default 128, as the public checkpoints; must divide layer widths)")
    p.add_argument("--symmetric", action="store_true", help="symmetric int4 (default asymmetric)")
    p.add_argument("--n-grid", type=int, default=20, help="AWQ scale search grid points (default 20)")
    p.add_argument("--python", help="Python of the quantization environment (default .venv-quant)")
    p.add_argument("--check", type=int, default=0, metavar="N",
                   help="after quantizing, compare calls with the dense model on N held-out turns "
                        "(the W4A16 folder loaded by the transformers backend, dequantized)")
    p.add_argument("--vllm", action="store_true",
                   help="with --check: also run the W4A16 folder on vLLM (int4 kernels: GPU or AVX-512 CPU)")
    p.add_argument("--check-only", action="store_true",
                   help="do not quantize: check the existing W4A16 folder OUT against MODEL")
    p.add_argument("--json", help="write the result to this file")


def run(args: argparse.Namespace) -> int:
    from tickcall.envs.teaching import get_source
    from tickcall.models.engine import EngineError
    from tickcall.models.quantize import QuantizeError, check, quantize_awq

    result: dict = {}
    if not args.check_only:
        try:
            res = quantize_awq(args.model, args.out, calib=args.calib, samples=args.samples,
                               max_seq_length=args.max_seq_length, group_size=args.group_size,
                               n_grid=args.n_grid, symmetric=args.symmetric, python=args.python,
                               sources=get_source)
        except QuantizeError as exc:
            raise SystemExit(f"tickcall quantize: {exc}") from None
        result.update({"out": res.out, "seconds": round(res.seconds, 1), "samples": res.samples,
                       "quantization": res.quantization})
        print(f"wrote {res.out}: {res.quantization} ({res.samples} calibration samples, {res.seconds:.1f} s)")
    if args.check or args.check_only:
        try:
            found = check(args.model, args.out, turns=args.check or 200, vllm=args.vllm, sources=get_source)
        except EngineError as exc:
            raise SystemExit(f"tickcall quantize: {exc}") from None
        result["check"] = found
        for key, agree in found.items():
            if not key.endswith(("_vs_dense", "_vs_transformers_w4a16")):
                continue
            heads = ", ".join(f"{h} {v:.1%}" for h, v in agree["per_head"].items())
            print(f"{key}: {agree['turns']} held-out turns, calls agree {agree['calls']:.1%} "
                  f"(heads: {heads}), legal {agree['legal_a']:.1%} / {agree['legal_b']:.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0
