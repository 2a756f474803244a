#!/usr/bin/env bash
# The GPU check, in one call, on a machine with an NVIDIA GPU, numba-cuda and (for the peer
# figures) PyTorch with CUDA: fastopt installed without touching those, then
#   0. the launch shape a rule kernel gets at 1e5, 1e6, 1e7 and 1e9 parameters on this card;
#   1. tests/cuda_kernel_check.py and tests/cuda_facade_check.py on the real GPU: every rule's
#      kernel, dropout and the penalty, then every optimizer family and the state dicts, bit
#      for bit against the CPU;
#   2. tests/cuda_trainer_check.py: the trainer's GPU path (CuPy) against the CPU, checkpoints
#      across devices, and fastopt train --device cuda reaching 97% on digits; and
#      tests/cuda_torch_check.py: fastopt.torch on CUDA tensors against torch.optim, a side
#      stream, AMP with GradScaler, and step timings against torch's fused AdamW;
#   3. bench/gpu_vs_cpu.py: parity on fresh data, the GPU/CPU table against torch on the same
#      card, and the CUDA issue's bars (Adam over 1e9 float32, host time per step);
#   4. bench/trainer_vs_torch.py --device cuda: seconds per epoch against torch on the card.
# Results go to $OUT (default: the current folder) as launch_shapes.json, kernels.txt,
# facade.json, trainer.json, torch.json, gpu_vs_cpu.json and trainer_vs_torch.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
python -m pip install --quiet --no-deps --no-build-isolation -e . 2>/dev/null \
    || python -m pip install --quiet --no-deps -e .
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python -c "import json; from fastopt.bench import gpu; print(json.dumps(gpu.launch_shapes()))" \
    | tee "$out/launch_shapes.json"
python tests/cuda_kernel_check.py | tee "$out/kernels.txt"
python tests/cuda_facade_check.py | tee "$out/facade.json"
python tests/cuda_trainer_check.py | tee "$out/trainer.json"
python tests/cuda_torch_check.py | tee "$out/torch.json"
python bench/gpu_vs_cpu.py --json "$out/gpu_vs_cpu.json" "$@"
python bench/trainer_vs_torch.py --device cuda | tee "$out/trainer_vs_torch.txt"
