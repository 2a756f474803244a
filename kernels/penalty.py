r"""The L2 penalty :math:`\sum_k \tfrac{\lambda_k}{2}\lVert\theta_k\rVert^2` over parameter groups.

The penalty whose gradient the update kernels fuse in as :math:`g + \lambda\theta`, returned as
a Python float for a batch cost. Each chunk's sum of squares is accumulated in float64 (a
float32 accumulator loses digits over millions of terms) and the chunk sums are added in chunk
order, so the value does not depend on the number of threads. Within a chunk the sum is
vectorised (``reassoc``), so its last bits depend on the SIMD width of the machine it runs on.

Argument order: ``param, chunk_bounds, chunk_group, group_weight_decay``. The weight decays
may be float64 whatever the buffer's dtype (the façade passes them so: 0.1 is not a float32).
"""

import numpy as np
from numba import njit, prange

from ._config import JIT_OPTIONS, reduction_kernel
from ._groups import expand


@reduction_kernel
def l2_penalty(param, chunk_bounds, chunk_group, group_weight_decay):
    """Return the L2 penalty of ``param`` as a float (float64 accumulation)."""
    out = np.empty(chunk_group.size, np.float64)
    for c in prange(chunk_group.size):
        total = 0.0
        for i in range(chunk_bounds[c], chunk_bounds[c + 1]):
            x = np.float64(param[i])
            total += x * x
        out[c] = 0.5 * np.float64(group_weight_decay[chunk_group[c]]) * total
    return _sum_in_order(out)


@njit(**JIT_OPTIONS)
def _sum_in_order(values):
    """``values[0] + values[1] + ...`` left to right. A function of its own, compiled without
    the caller's ``reassoc``, so that the chunk sums are added in chunk order exactly."""
    total = 0.0
    for k in range(values.size):
        total += values[k]
    return total


def l2_penalty_reference(param, chunk_bounds, chunk_group, group_weight_decay):
    """float64 reference of :func:`l2_penalty`."""
    p = np.asarray(param, dtype=np.float64)
    return float(0.5 * np.sum(expand(group_weight_decay, chunk_bounds, chunk_group) * p * p))
