#!/usr/bin/env bash
# The GPU check, in one call, on a machine with an NVIDIA GPU, numba-cuda and (for the peer
# figures) PyTorch with CUDA: fastopt installed without touching those, then
#   1. tests/cuda_facade_check.py on the real GPU: every optimizer family, dropout and the
#      state dicts, bit for bit against the CPU;
#   2. bench/gpu_vs_cpu.py: parity on fresh data, the GPU/CPU table against torch on the same
#      card, and the CUDA issue's bars (Adam over 1e9 float32, host time per step).
# Results go to $OUT (default: the current folder) as facade.json and gpu_vs_cpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
python -m pip install --quiet --no-deps --no-build-isolation -e . 2>/dev/null \
    || python -m pip install --quiet --no-deps -e .
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python tests/cuda_facade_check.py | tee "$out/facade.json"
python bench/gpu_vs_cpu.py --json "$out/gpu_vs_cpu.json" "$@"
