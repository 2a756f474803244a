"""Run by test_cuda_simulator.py in a fresh interpreter with NUMBA_ENABLE_CUDASIM=1.

Every CUDA twin against its CPU kernel on the same random data: bitwise equal (the optimizer
kernels, and the dropout kernel and mask: CPU and CUDA masks are the same bits). The simulator
runs kernels as Python on numpy scalars, so it gets the two primitives a GPU rounds once: a
correctly rounded fma (its own is ``a * b + c``, two roundings) and a dtype-preserving
square root. Few threads and few blocks, so the grid-stride loops over chunks and elements
both turn over.
"""

import importlib
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from cuda_facade_check import patch_simulator  # noqa: E402
from kernel_cases import KERNELS, make_case  # noqa: E402

from fastopt.kernels.chunks import chunk_table  # noqa: E402


def main():
    patch_simulator()  # launches below give their own (small) shapes

    failures = []
    for name in sorted(KERNELS):
        module = KERNELS[name][0].__name__.rsplit(".", 1)[1]
        twin = getattr(importlib.import_module(f"fastopt.kernels.{module}_cuda"), name)
        for dtype in (np.float32, np.float64):
            for size, seed in ((0, 0), (1, 1), (7, 2), (133, 3)):
                kernel, _, cpu, args = make_case(name, size, dtype, np.random.default_rng(seed), 3 if size > 2 else 1)
                cut = size // 3
                args[1], args[2] = chunk_table([(0, cut, 0), (cut, size, 1 if size > 2 else 0)], chunk_size=16)
                gpu = [buffer.copy() for buffer in cpu]
                kernel(*cpu, *args)
                twin[3, 8](*gpu, *args)
                for k, (a, b) in enumerate(zip(cpu, gpu)):
                    if not np.array_equal(a, b, equal_nan=True):
                        failures.append(f"{name} {dtype.__name__} size {size} buffer {k}: "
                                        f"{np.flatnonzero(a != b)[:5]}")
    failures += dropout_failures()
    print("\n".join(failures) if failures else "all equal")


def dropout_failures():
    """Dropout and its mask on the CUDA twin against the CPU kernel: the same bits."""
    from fastopt.kernels import dropout, dropout_cuda

    failures = []
    rng = np.random.default_rng(7)
    u = np.uint64
    for size, offset, p in ((0, 0, 0.5), (1, 0, 0.5), (7, 3, 0.1), (301, 5, 0.9), (64, 0, 0.5)):
        seed = int(rng.integers(0, 2**63))
        args = (u(offset), u(seed & 0xFFFFFFFF), u(seed >> 32), u(3), u(17), u(int((1 - p) * 2**32)))
        for dtype in (np.float32, np.float64):
            x = rng.standard_normal(size).astype(dtype)
            on_gpu = x.copy()
            dropout.dropout_step(x, *args, dtype(1 / (1 - p)))
            dropout_cuda.dropout_step[2, 8](on_gpu, *args, dtype(1 / (1 - p)))
            if not np.array_equal(x, on_gpu):
                failures.append(f"dropout_step {dtype.__name__} size {size} offset {offset}")
        cpu_mask, gpu_mask = np.empty(size, np.uint8), np.full(size, 7, np.uint8)
        dropout.dropout_mask(cpu_mask, *args)
        dropout_cuda.dropout_mask[2, 8](gpu_mask, *args)
        if not np.array_equal(cpu_mask, gpu_mask):
            failures.append(f"dropout_mask size {size} offset {offset}")
    return failures


if __name__ == "__main__":  # not on import (pytest --doctest-modules imports every module)
    main()
