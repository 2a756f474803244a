"""What the CUDA twins share: the launch shape and the primitives they must round alike.

Each CUDA kernel mirrors its CPU twin line for line (same argument order, same operations in
the same order, an explicit ``cuda.fma`` wherever the CPU kernel has ``fma``), so that the two
can agree bit for bit. Grid: one block per chunk of the chunk table (a grid-stride loop over
chunks), the block's threads striding over the chunk's elements.

``sqrt`` is a module global rather than ``math.sqrt`` written in place so that the CUDA
simulator, which runs kernels as Python on numpy scalars, can be given a dtype-preserving
square root (``math.sqrt`` of a float32 returns a Python float there); compiled kernels get
``math.sqrt``, which NVVM lowers to the correctly rounded ``sqrt.rn``.
"""

import math

from numba import uint64

#: Threads per block for every CUDA kernel.
THREADS_PER_BLOCK = 256
#: At most this many blocks per launch (the grid-stride loop covers the rest).
MAX_BLOCKS = 65535

sqrt = math.sqrt


def launch(kernel, chunk_group):
    """``kernel`` configured for the chunk table: one block per chunk, up to MAX_BLOCKS.

    The launch shape is read when this is called (the simulator tests make it small).
    """
    blocks = max(1, min(int(chunk_group.size), MAX_BLOCKS))
    return kernel[blocks, THREADS_PER_BLOCK]


def elementwise(kernel, size):
    """``kernel`` configured for a grid-stride loop over ``size`` items."""
    blocks = max(1, min(-(-int(size) // THREADS_PER_BLOCK), MAX_BLOCKS))
    return kernel[blocks, THREADS_PER_BLOCK]


__all__ = ["MAX_BLOCKS", "THREADS_PER_BLOCK", "elementwise", "launch", "sqrt", "uint64"]
