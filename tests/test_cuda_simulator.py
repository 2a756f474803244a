"""The CUDA twins under the CUDA simulator, bitwise against the CPU kernels (no GPU needed)."""

import os
import subprocess
import sys
from pathlib import Path


def test_cuda_twins_match_the_cpu_kernels_bitwise():
    script = Path(__file__).parent / "cuda_simulator_check.py"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "all equal", result.stdout[-3000:]
