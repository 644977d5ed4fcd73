#!/usr/bin/env bash
# The GPU check: decide P50/P90 of SmolLM2-135M- and Qwen2.5-0.5B-shaped models (random bf16 weights,
# built here from their configs, nothing downloaded) through the transformers backend, eager and with
# CUDA graphs, for 1 and 8 heads and 1, 8, 64 concurrent decides. Writes JSON, prints a table.
#
#   bash scripts/gpu_check.sh                         # CUDA when there is one, ~7 min, gpu_check.json
#   bash scripts/gpu_check.sh --device cpu --quick    # the script itself, checked on a CPU
#   bash scripts/gpu_check.sh --help                  # every option (tickcall/bench/gpu_check.py)
#
# Needs only python with torch, transformers, tokenizers, safetensors, numpy: no install of tickcall
# (the repository root goes on PYTHONPATH; the module maps tickcall.models to models/ itself).
# Python: $PYTHON, else .venv/bin/python, else python3. Hard stop at 8 minutes; the check budgets
# itself to 7 (--budget-s) and rewrites its JSON after every cell, so a stop keeps what was measured.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x "$root/.venv/bin/python" ]]; then
    py="$root/.venv/bin/python"
else
    py=python3
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec timeout --signal=TERM --kill-after=10 "${GPU_CHECK_TIMEOUT_S:-480}" "$py" -m tickcall.bench.gpu_check "$@"
