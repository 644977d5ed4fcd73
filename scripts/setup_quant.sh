#!/usr/bin/env bash
# The quantization environment: llm-compressor in ./.venv-quant, apart from ./.venv.
#
#   bash scripts/setup_quant.sh
#
# Why apart: llm-compressor 0.14 pins compressed-tensors 0.19, vLLM 0.32 pins 0.17 (and transformers
# versions differ too). `tickcall quantize` (in .venv) runs models/quantize_awq_job.py with this
# environment's Python; it never imports tickcall. CPU: the local torch==2.13.0 CPU wheel.
# Idempotent: a second run checks the imports and returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LLMC_VERSION=${LLMC_VERSION:-0.14.0.1}
quiet() { grep -v -e "is ignored: it is neither" -e "^$" || true; }

if .venv-quant/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('llmcompressor') != '$LLMC_VERSION')" >/dev/null 2>&1; then
    echo "quantization environment ready in .venv-quant (llmcompressor $LLMC_VERSION)"
    exit 0
fi
[[ -x .venv-quant/bin/python ]] || "$PY" -m venv .venv-quant
pip() { .venv-quant/bin/python -m pip "$@"; }
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip install -q torch 2>&1 | quiet
else
    pip install -q "torch==2.13.0" 2>&1 | quiet
fi
pip install -q "llmcompressor==$LLMC_VERSION" 2>&1 | quiet
.venv-quant/bin/python -c "import llmcompressor, compressed_tensors, transformers; print('quantization environment ready in .venv-quant (llmcompressor', llmcompressor.__version__, 'compressed-tensors', compressed_tensors.__version__, 'transformers', transformers.__version__ + ')')"
