"""AWQ -> compressed-tensors W4A16, run INSIDE the quantization environment (``.venv-quant``).

Standalone on purpose: it imports only torch, transformers, datasets and llm-compressor, never tickcall,
because llm-compressor pins a compressed-tensors version that vLLM's does not accept (separate venvs).
``models.quantize`` writes a job file and runs ``.venv-quant/bin/python models/quantize_awq_job.py JOB``.

Job (JSON): ``model`` (dense folder), ``out`` (folder to write), ``texts`` (calibration prompts),
``max_seq_length`` (tokens), ``scheme`` ("W4A16_ASYM": int4, asymmetric, group 128), ``group_size``,
``ignore`` (default ``["lm_head"]``), ``duo_scaling``, ``n_grid``. Prints one JSON line with the result
(``{"ok": true, "seconds": ..., "out": ...}``) last on stdout.
"""

from __future__ import annotations

import json
import sys
import time


def _cpu_friendly() -> None:
    """llm-compressor pins CPU tensors for faster host->device copies; without an accelerator
    ``pin_memory()`` raises "Cannot access accelerator device". On CPU there is nothing to pin."""
    import torch

    if torch.accelerator.is_available():
        return
    from llmcompressor.pipelines.cache import IntermediatesCache

    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None


def run(job: dict) -> dict:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _cpu_friendly()
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(job["model"])
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
    max_len = int(job.get("max_seq_length", 512))
    enc = [tok(t, add_special_tokens=False, truncation=True, max_length=max_len) for t in job["texts"]]
    ds = Dataset.from_dict({"input_ids": [e["input_ids"] for e in enc],
                            "attention_mask": [e["attention_mask"] for e in enc]})
    scheme = job.get("scheme", "W4A16_ASYM")
    ignore = job.get("ignore", ["lm_head"])
    group = int(job.get("group_size", 128))
    if group == 128:
        quant = QuantizationModifier(ignore=ignore, scheme=scheme, targets=["Linear"])
    else:
        quant = QuantizationModifier(ignore=ignore, targets=["Linear"], config_groups={"group_0": {
            "targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": scheme == "W4A16",
                                               "strategy": "group", "group_size": group}}})
    recipe = [AWQModifier(duo_scaling=job.get("duo_scaling", "both"), n_grid=int(job.get("n_grid", 20))), quant]
    oneshot(model=model, dataset=ds, recipe=recipe, max_seq_length=max_len,
            num_calibration_samples=len(enc))
    model.save_pretrained(job["out"], save_compressed=True)
    tok.save_pretrained(job["out"])
    return {"ok": True, "seconds": time.perf_counter() - t0, "out": job["out"], "samples": len(enc)}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: quantize_awq_job.py JOB.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        job = json.load(f)
    result = run(job)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
