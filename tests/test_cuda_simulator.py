"""The CUDA side under the CUDA simulator (no GPU needed), bitwise against the CPU.

Each test runs a script in a fresh interpreter with NUMBA_ENABLE_CUDASIM=1 (set before Numba is
imported). What runs under the simulator, and what it covers:

* ``cuda_kernel_check.py``: every rule's CUDA kernel (the same source as the CPU's, on the
  GPU's tiles), dropout and its mask, and the L2 penalty, against the CPU kernels;
* ``cuda_facade_check.py``: the optimizers, dropout and state dicts on GPU-resident FlatParams;
* ``cuda_trainer_check.py``: the model and trainer's GPU code path, with NumPy standing in for
  CuPy (the simulator's device arrays are host memory), so CuPy's own arithmetic is not covered;
* ``bench/gpu_vs_cpu.py`` end to end at tiny sizes (its timings mean nothing there).

The simulator runs kernels as Python, with the plain-Python primitives of
``fastopt.kernels.primitives``; that the compiled kernels round the same way is
test_cuda_ptx.py's job. ``bench/gpu_check.sh`` runs the same scripts on a real GPU.
"""

import json
import os
import subprocess
import sys
from pathlib import Path


def test_cuda_kernels_match_the_cpu_kernels_bitwise():
    script = Path(__file__).parent / "cuda_kernel_check.py"
    result = subprocess.run([sys.executable, str(script), "--simulator"], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
    assert result.stdout.strip() == "all equal", result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]


def test_cuda_facade_matches_the_cpu_bitwise():
    """Optimizers on GPU-resident FlatParams (every family, float32 and float64, a learning
    rate changed mid-run), state dicts across devices, zero-copy wrapping, dropout on device
    arrays and the refusals: tests/cuda_facade_check.py under the simulator."""
    script = Path(__file__).parent / "cuda_facade_check.py"
    result = subprocess.run([sys.executable, str(script), "--simulator"],
                            capture_output=True, text=True, timeout=900,
                            env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
    report = json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else {}
    assert report.get("failures") == [], report.get("failures", result.stderr[-3000:])
    assert result.returncode == 0, result.stderr[-3000:]
    assert report["checked"] >= 100


def test_gpu_benchmark_script_runs_end_to_end():
    """bench/gpu_vs_cpu.py, ready for a GPU, runs through under the simulator at tiny sizes
    (its timings mean nothing there; its parity check must find no difference)."""
    root = Path(__file__).parent.parent
    code = (
        "import runpy, sys; sys.path.insert(0, 'tests'); import cuda_facade_check; "
        "cuda_facade_check.patch_simulator(); "
        "sys.argv = ['gpu_vs_cpu.py', '--sizes', '300', '--cpu-sizes', '1000', '--adam-size', '200', "
        "'--parity-size', '301', '--repeats', '3', '--host-size', '50', '--host-steps', '3', "
        "'--json', sys.argv[1]]; runpy.run_path('bench/gpu_vs_cpu.py', run_name='__main__')"
    )
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "gpu.json"
        result = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(out)], capture_output=True,
                                text=True, timeout=600, cwd=root, env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        report = json.loads(out.read_text())
    assert report["gpu"] == "the CUDA simulator"
    assert all(v["differing"] == 0 for v in report["parity"].values()), report["parity"]
    assert {row["device"] for row in report["rows"]} == {"cuda", "cpu"}
    on_gpu = {row["kernel"] for row in report["rows"] if row["device"] == "cuda"}
    assert {"adamw", "dropout", "adamw_int8", "adamw_bf16", "adamw_bf16_params"} <= on_gpu, on_gpu
    assert {"fastopt_ms", "copy_gbps", "pct_copy", "host_us_per_step", "host_us_breakdown"} <= set(report["bars"])


def test_trainer_on_the_gpu_matches_the_cpu_bitwise():
    """An MLP on device="cuda" trained by the Trainer (four activations, float32 and float64,
    three losses, dropout, AdamW with a bias group and a per-batch schedule, a validation
    split), GPU checkpoints resumed on either device, and fastopt train --device cuda:
    tests/cuda_trainer_check.py under the simulator, with NumPy standing in for CuPy."""
    script = Path(__file__).parent / "cuda_trainer_check.py"
    result = subprocess.run([sys.executable, str(script), "--simulator"], capture_output=True, text=True,
                            timeout=900, env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
    report = json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else {}
    assert report.get("failures") == [], report.get("failures", result.stderr[-3000:])
    assert result.returncode == 0, result.stderr[-3000:]
    assert report["checked"] >= 55
