"""The CUDA twins under the CUDA simulator, bitwise against the CPU kernels (no GPU needed)."""

import json
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


def test_cuda_facade_matches_the_cpu_bitwise():
    """Optimizers on GPU-resident FlatParams (every family, float32 and float64, a learning
    rate changed mid-run), state dicts across devices, zero-copy wrapping, dropout on device
    arrays and the refusals: tests/cuda_facade_check.py under the simulator."""
    script = Path(__file__).parent / "cuda_facade_check.py"
    result = subprocess.run([sys.executable, "-W", "ignore::numba.NumbaPerformanceWarning", str(script), "--simulator"],
                            capture_output=True, text=True, timeout=900,
                            env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failures"] == [], report["failures"]
    assert report["checked"] >= 100
