r"""Element-wise passes of a dense layer with a ReLU, fused (CPU), and their float64 references.

Forward, in place on the pre-activation ``z = a @ W`` (``(rows, width)``):
``relu_bias(z, bias)`` makes ``z`` the activation :math:`\max(z + b, 0)` in one pass (numpy's
``z += b`` then ``maximum`` is two, and a new array).

Backward, in place on ``delta = delta_out @ W.T``: ``relu_dropout_backward(delta, a, scale)``
keeps ``delta * scale`` where the layer's output ``a`` (after ReLU and inverted dropout) is
positive and sets the rest to zero. Where ``a > 0`` the unit was kept by dropout *and* its
pre-activation was positive, and nowhere else (``scale = 1 / keep_prob >= 1`` cannot make a
positive value zero), so this is the ReLU derivative times the dropout mask, read from the
forward pass's output: the mask is not regenerated (one Philox pass saved per layer and
batch) and no derivative array is made. Without dropout, ``scale`` is 1.

Same arithmetic as the unfused passes (one add, one max, one multiply by ``scale``), so the
values are bitwise theirs, with two exceptions: the sign of an exact zero, and an inf or NaN
``delta`` at an inactive unit, which becomes 0 (as in torch's ReLU backward) where the unfused
multiply by a zero derivative made it NaN. The MLP calls the serial builds (see
``fastopt.nn.model``: between BLAS calls one kernel thread is faster).
"""

import numpy as np
from numba import prange

from .cpu import parallel_kernel


@parallel_kernel
def relu_bias(z, bias):
    """``z[:] = max(z + bias, 0)`` (rows in parallel)."""
    rows, width = z.shape
    for r in prange(rows):
        for j in range(width):
            value = z[r, j] + bias[j]
            if value > 0 or value != value:  # a NaN stays NaN, as in numpy's maximum
                z[r, j] = value
            else:
                z[r, j] = 0


@parallel_kernel
def relu_dropout_backward(delta, a, scale):
    """``delta[:] = delta * scale where a > 0 else 0`` (rows in parallel)."""
    rows, width = delta.shape
    for r in prange(rows):
        for j in range(width):
            delta[r, j] = delta[r, j] * scale if a[r, j] > 0 else 0


def relu_bias_reference(z, bias):
    z[:] = np.maximum(z.astype(np.float64) + bias, 0.0)


def relu_dropout_backward_reference(delta, a, scale):
    delta[:] = np.where(a > 0, delta.astype(np.float64) * float(scale), 0.0)
