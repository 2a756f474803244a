"""Run by test_cuda_simulator.py in a fresh interpreter with NUMBA_ENABLE_CUDASIM=1.

Every CUDA twin against its CPU kernel on the same random data: bitwise equal. The simulator
runs kernels as Python on numpy scalars, so it gets the two primitives a GPU rounds once: a
correctly rounded fma (its own is ``a * b + c``, two roundings) and a dtype-preserving
square root. Few threads and few blocks, so the grid-stride loops over chunks and elements
both turn over.
"""

import importlib
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
from numba.cuda.simulator import kernelapi

sys.path.insert(0, str(Path(__file__).parent))

from kernel_cases import KERNELS, make_case  # noqa: E402

from fastopt.kernels import _cuda  # noqa: E402
from fastopt.kernels.chunks import chunk_table  # noqa: E402


def correctly_rounded_fma(self, a, b, c):
    kind = type(a)
    if kind is np.float32:  # the float64 product of two float32 is exact
        return np.float32(np.float64(a) * np.float64(b) + np.float64(c))
    return kind(float(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))))


def main():
    kernelapi.FakeCUDAModule.fma = correctly_rounded_fma
    _cuda.sqrt = np.sqrt

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
    print("\n".join(failures) if failures else "all equal")


if __name__ == "__main__":  # not on import (pytest --doctest-modules imports every module)
    main()
