"""CUDA twins of :mod:`fastopt.kernels.dropout`: the same mask, element for element.

Each thread takes whole Philox counters (four elements each) in a grid-stride loop and runs
the scalar :func:`~fastopt.kernels.philox.philox4x32_10` source compiled as a device function,
so the words, the integer threshold compare and the one multiply by ``scale`` are those of the
CPU kernel.
"""

from numba import cuda

from ._cuda import uint64
from .philox import MASK32, SHIFT32, _philox4x32_10

philox4x32_10 = cuda.jit(device=True, inline=True)(_philox4x32_10)


@cuda.jit(device=True, inline=True)
def _counters(offset, size):
    first = offset // uint64(4)
    return first, (offset + size - uint64(1)) // uint64(4) + uint64(1)


@cuda.jit(device=True, inline=True)
def _drop(x, element, offset, size, word, threshold, scale):
    if element >= offset and element - offset < size:
        index = element - offset
        if word < threshold:
            x[index] = x[index] * scale
        else:
            x[index] = 0


@cuda.jit(device=True, inline=True)
def _mark(mask, element, offset, size, word, threshold):
    if element >= offset and element - offset < size:
        mask[element - offset] = 1 if word < threshold else 0


@cuda.jit
def dropout_step(x, offset, key0, key1, stream, step, threshold, scale):
    size = uint64(x.size)
    if size == 0:
        return
    first, stop = _counters(offset, size)
    for counter in range(first + uint64(cuda.grid(1)), stop, uint64(cuda.gridsize(1))):
        w0, w1, w2, w3 = philox4x32_10(counter & MASK32, counter >> SHIFT32, stream, step, key0, key1)
        element = counter * uint64(4)
        _drop(x, element, offset, size, w0, threshold, scale)
        _drop(x, element + uint64(1), offset, size, w1, threshold, scale)
        _drop(x, element + uint64(2), offset, size, w2, threshold, scale)
        _drop(x, element + uint64(3), offset, size, w3, threshold, scale)


@cuda.jit
def dropout_mask(mask, offset, key0, key1, stream, step, threshold):
    size = uint64(mask.size)
    if size == 0:
        return
    first, stop = _counters(offset, size)
    for counter in range(first + uint64(cuda.grid(1)), stop, uint64(cuda.gridsize(1))):
        w0, w1, w2, w3 = philox4x32_10(counter & MASK32, counter >> SHIFT32, stream, step, key0, key1)
        element = counter * uint64(4)
        _mark(mask, element, offset, size, w0, threshold)
        _mark(mask, element + uint64(1), offset, size, w1, threshold)
        _mark(mask, element + uint64(2), offset, size, w2, threshold)
        _mark(mask, element + uint64(3), offset, size, w3, threshold)
