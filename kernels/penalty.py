r"""The L2 penalty :math:`\sum_k \tfrac{\lambda_k}{2}\lVert\theta_k\rVert^2` over parameter groups.

The penalty whose gradient the update kernels fuse in as :math:`g + \lambda\theta`, returned as
a Python float for a batch cost. Each chunk's sum of squares is accumulated in float64 (a
float32 accumulator loses digits over millions of terms) and the chunk sums are added in chunk
order, so the value does not depend on the number of threads. Within a chunk the sum is
vectorised (``reassoc``), so its last bits depend on the SIMD width of the machine it runs on.

The square is :func:`square`, the element function both targets compile; the CUDA reduction is
:class:`fastopt.kernels.cuda.Penalty`, which sums per tile and adds the tile sums in a fixed
order: the two agree to float64 rounding, not bit for bit.

Argument order: ``param, bounds, groups, table, column``: the chunk table and a rule's float64
group table, whose column ``column`` holds each group's weight decay.
"""

import functools

import numpy as np
from numba import float64, njit, prange

from .rules._reference import expand
from .cpu import JIT_OPTIONS, TARGET, reduction_kernel
from .elements import element, rebound
from .primitives import mul


@element
def square(x):
    """``x**2`` in float64, a product of its own so that no target fuses it into the sum."""
    return mul(float64(x), float64(x))


_square = TARGET.element(square)


@reduction_kernel
def l2_penalty(param, bounds, groups, table, column):
    """Return the L2 penalty of ``param`` as a float (float64 accumulation)."""
    out = np.empty(groups.size, np.float64)
    for c in prange(groups.size):
        total = 0.0
        for i in range(bounds[c], bounds[c + 1]):
            total += _square(param[i])
        out[c] = 0.5 * table[groups[c], column] * total
    return _sum_in_order(out)


@functools.cache
def l2_penalty_bfloat16():
    """:func:`l2_penalty` of bfloat16 parameters, given as their uint16 bits."""
    from .quantized import bfloat16_value

    square_of_bits = TARGET.element(_square_bits, bfloat16_value=bfloat16_value)
    return reduction_kernel(rebound(l2_penalty.py_func, {"_square": square_of_bits}, "l2_penalty_bfloat16"))


@element
def _square_bits(bits):
    return square(bfloat16_value(bits))  # noqa: F821


@njit(**{**JIT_OPTIONS, "cache": False})  # compiled into l2_penalty, which is cached
def _sum_in_order(values):
    """``values[0] + values[1] + ...`` left to right. A function of its own, compiled without
    the caller's ``reassoc``, so that the chunk sums are added in chunk order exactly."""
    total = 0.0
    for k in range(values.size):
        total += values[k]
    return total


def l2_penalty_reference(param, bounds, groups, table, column):
    """float64 reference of :func:`l2_penalty`."""
    p = np.asarray(param, dtype=np.float64)
    return float(0.5 * np.sum(expand(np.asarray(table)[:, column], bounds, groups) * p * p))
