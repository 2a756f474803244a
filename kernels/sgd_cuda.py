"""CUDA twins of :mod:`fastopt.kernels.sgd`: same names, arguments and arithmetic."""

from numba import cuda

from ._cuda import uint64


@cuda.jit
def sgd_step(param, grad, chunk_bounds, chunk_group, group_lr, group_weight_decay, grad_sign):
    for c in range(cuda.blockIdx.x, chunk_group.size, cuda.gridDim.x):
        lr = group_lr[chunk_group[c]]
        weight_decay = group_weight_decay[chunk_group[c]]
        for i in range(chunk_bounds[c] + uint64(cuda.threadIdx.x), chunk_bounds[c + 1], uint64(cuda.blockDim.x)):
            p = param[i]
            g = cuda.fma(weight_decay, p, grad_sign * grad[i])
            param[i] = cuda.fma(-lr, g, p)


@cuda.jit
def sgd_momentum_step(param, momentum_buffer, grad, chunk_bounds, chunk_group, group_lr,
                      group_weight_decay, grad_sign, buffer_decay, buffer_grad_scale):
    for c in range(cuda.blockIdx.x, chunk_group.size, cuda.gridDim.x):
        lr = group_lr[chunk_group[c]]
        weight_decay = group_weight_decay[chunk_group[c]]
        for i in range(chunk_bounds[c] + uint64(cuda.threadIdx.x), chunk_bounds[c + 1], uint64(cuda.blockDim.x)):
            p = param[i]
            g = cuda.fma(weight_decay, p, grad_sign * grad[i])
            b = cuda.fma(buffer_decay, momentum_buffer[i], buffer_grad_scale * g)
            momentum_buffer[i] = b
            param[i] = cuda.fma(-lr, b, p)


@cuda.jit
def sgd_nesterov_step(param, momentum_buffer, grad, chunk_bounds, chunk_group, group_lr,
                      group_weight_decay, grad_sign, buffer_decay, buffer_grad_scale, momentum):
    for c in range(cuda.blockIdx.x, chunk_group.size, cuda.gridDim.x):
        lr = group_lr[chunk_group[c]]
        weight_decay = group_weight_decay[chunk_group[c]]
        for i in range(chunk_bounds[c] + uint64(cuda.threadIdx.x), chunk_bounds[c + 1], uint64(cuda.blockDim.x)):
            p = param[i]
            g = cuda.fma(weight_decay, p, grad_sign * grad[i])
            b = cuda.fma(buffer_decay, momentum_buffer[i], buffer_grad_scale * g)
            momentum_buffer[i] = b
            param[i] = cuda.fma(-lr, cuda.fma(momentum, b, g), p)
