"""Small CUDA kernels over whole buffers: fill (zeroing state and gradients on the device)."""

from numba import cuda

from . import _cuda


@cuda.jit
def fill(x, value):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        x[i] = value


def launch_fill(x, value):
    """``x[:] = value`` on the device, one thread per element up to the grid limit."""
    _cuda.elementwise(fill, x.size)(x, value)
