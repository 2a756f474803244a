"""CUDA twins of :mod:`fastopt.kernels.rmsprop`: same names, arguments and arithmetic."""

from numba import cuda

from . import _cuda
from ._cuda import uint64


@cuda.jit(device=True, inline=True)
def _square_avg(v, g, alpha, one_minus_alpha):
    return cuda.fma(alpha, v, one_minus_alpha * (g * g))


@cuda.jit(device=True, inline=True)
def _grad_avg(grad_avg, g, one_minus_alpha):
    return cuda.fma(one_minus_alpha, g - grad_avg, grad_avg)


@cuda.jit(device=True, inline=True)
def _centered_denominator(v, grad_avg, eps):
    variance = cuda.fma(-grad_avg, grad_avg, v)
    if variance < 0:  # rounding only; a NaN passes through
        variance = variance - variance
    return _cuda.sqrt(variance) + eps


@cuda.jit
def rmsprop_step(param, square_avg, grad, chunk_bounds, chunk_group, group_lr,
                 group_weight_decay, grad_sign, alpha, one_minus_alpha, eps):
    for c in range(cuda.blockIdx.x, chunk_group.size, cuda.gridDim.x):
        lr = group_lr[chunk_group[c]]
        weight_decay = group_weight_decay[chunk_group[c]]
        for i in range(chunk_bounds[c] + uint64(cuda.threadIdx.x), chunk_bounds[c + 1], uint64(cuda.blockDim.x)):
            p = param[i]
            g = cuda.fma(weight_decay, p, grad_sign * grad[i])
            v = _square_avg(square_avg[i], g, alpha, one_minus_alpha)
            square_avg[i] = v
            param[i] = cuda.fma(-lr, g / (_cuda.sqrt(v) + eps), p)


@cuda.jit
def rmsprop_centered_step(param, square_avg, grad_avg, grad, chunk_bounds, chunk_group,
                          group_lr, group_weight_decay, grad_sign, alpha, one_minus_alpha, eps):
    for c in range(cuda.blockIdx.x, chunk_group.size, cuda.gridDim.x):
        lr = group_lr[chunk_group[c]]
        weight_decay = group_weight_decay[chunk_group[c]]
        for i in range(chunk_bounds[c] + uint64(cuda.threadIdx.x), chunk_bounds[c + 1], uint64(cuda.blockDim.x)):
            p = param[i]
            g = cuda.fma(weight_decay, p, grad_sign * grad[i])
            v = _square_avg(square_avg[i], g, alpha, one_minus_alpha)
            a = _grad_avg(grad_avg[i], g, one_minus_alpha)
            square_avg[i] = v
            grad_avg[i] = a
            param[i] = cuda.fma(-lr, g / _centered_denominator(v, a, eps), p)


@cuda.jit
def rmsprop_momentum_step(param, square_avg, momentum_buffer, grad, chunk_bounds, chunk_group,
                          group_lr, group_weight_decay, grad_sign, alpha, one_minus_alpha, eps,
                          momentum):
    for c in range(cuda.blockIdx.x, chunk_group.size, cuda.gridDim.x):
        lr = group_lr[chunk_group[c]]
        weight_decay = group_weight_decay[chunk_group[c]]
        for i in range(chunk_bounds[c] + uint64(cuda.threadIdx.x), chunk_bounds[c + 1], uint64(cuda.blockDim.x)):
            p = param[i]
            g = cuda.fma(weight_decay, p, grad_sign * grad[i])
            v = _square_avg(square_avg[i], g, alpha, one_minus_alpha)
            b = cuda.fma(momentum, momentum_buffer[i], g / (_cuda.sqrt(v) + eps))
            square_avg[i] = v
            momentum_buffer[i] = b
            param[i] = cuda.fma(-lr, b, p)


@cuda.jit
def rmsprop_centered_momentum_step(param, square_avg, grad_avg, momentum_buffer, grad,
                                   chunk_bounds, chunk_group, group_lr, group_weight_decay,
                                   grad_sign, alpha, one_minus_alpha, eps, momentum):
    for c in range(cuda.blockIdx.x, chunk_group.size, cuda.gridDim.x):
        lr = group_lr[chunk_group[c]]
        weight_decay = group_weight_decay[chunk_group[c]]
        for i in range(chunk_bounds[c] + uint64(cuda.threadIdx.x), chunk_bounds[c + 1], uint64(cuda.blockDim.x)):
            p = param[i]
            g = cuda.fma(weight_decay, p, grad_sign * grad[i])
            v = _square_avg(square_avg[i], g, alpha, one_minus_alpha)
            a = _grad_avg(grad_avg[i], g, one_minus_alpha)
            b = cuda.fma(momentum, momentum_buffer[i], g / _centered_denominator(v, a, eps))
            square_avg[i] = v
            grad_avg[i] = a
            momentum_buffer[i] = b
            param[i] = cuda.fma(-lr, b, p)
