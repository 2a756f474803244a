r"""CUDA twin of :mod:`fastopt.kernels.penalty`: the L2 penalty with float64 accumulation.

Each block sums its chunk's squares in float64 (a tree over the block's threads), writes
:math:`\tfrac{\lambda}{2}\sum\theta^2` of the chunk, and the host adds the chunk sums in chunk
order, as the CPU does. The sums within a chunk are added in another order than on the CPU
(which vectorises them), so the two agree to float64 rounding, not bit for bit: the relative
difference is at most about ``n_chunk * 2**-53`` for a chunk of ``n_chunk`` terms, all positive.
"""

import numpy as np
from numba import cuda, float64

from . import _cuda

#: Shared-memory slots per block; launches use at most this many threads per block.
_MAX_THREADS = 1024


@cuda.jit
def chunk_penalties(param, chunk_bounds, chunk_group, group_weight_decay, out):
    partial = cuda.shared.array(_MAX_THREADS, float64)
    tid = cuda.threadIdx.x
    for c in range(cuda.blockIdx.x, chunk_group.size, cuda.gridDim.x):
        total = float64(0.0)
        for i in range(chunk_bounds[c] + _cuda.uint64(tid), chunk_bounds[c + 1], _cuda.uint64(cuda.blockDim.x)):
            x = float64(param[i])
            total += x * x
        partial[tid] = total
        cuda.syncthreads()
        stride = cuda.blockDim.x // 2
        while stride > 0:  # blockDim is a power of two
            if tid < stride:
                partial[tid] += partial[tid + stride]
            cuda.syncthreads()
            stride //= 2
        if tid == 0:
            out[c] = 0.5 * float64(group_weight_decay[chunk_group[c]]) * partial[0]
        cuda.syncthreads()


def l2_penalty(param, chunk_bounds, chunk_group, group_weight_decay):
    """The L2 penalty of a CUDA buffer as a float; the group arrays live on the device, the
    float64 weight decays may come from the host."""
    out = cuda.device_array(chunk_group.size, np.float64)
    if chunk_group.size:
        decay = cuda.to_device(np.asarray(group_weight_decay, np.float64))
        _cuda.launch(chunk_penalties, chunk_group)(param, chunk_bounds, chunk_group, decay, out)
    total = 0.0
    for chunk_sum in out.copy_to_host().tolist():  # in chunk order, as the CPU adds them
        total += chunk_sum
    return total
