"""The memory roofline for in-place kernels: ``x *= s`` with every thread.

An in-place read-modify-write of one buffer is the ceiling an in-place optimizer step can
reach per byte moved; benchmarks report kernels as a fraction of it, measured in the same
run (a plain copy is not the right ceiling: large copies use non-temporal stores).
"""

from numba import prange

from .cpu import parallel_kernel


@parallel_kernel
def scale_in_place(x, s):
    """``x *= s`` in place, multi-threaded."""
    for i in prange(x.size):
        x[i] *= s
