"""CUDA twins of :mod:`fastopt.kernels.adam`: same names, arguments and arithmetic."""

from numba import cuda

from . import _cuda
from ._cuda import uint64


@cuda.jit(device=True, inline=True)
def _update(p, m, v, step_size, bias_correction2_sqrt, eps):
    return cuda.fma(-step_size, m / (_cuda.sqrt(v) / bias_correction2_sqrt + eps), p)


@cuda.jit(device=True, inline=True)
def _running_max(current, candidate):
    if candidate > current or candidate != candidate:
        return candidate
    return current


@cuda.jit
def adam_step(param, exp_avg, exp_avg_sq, grad, chunk_bounds, chunk_group,
              group_lr, group_weight_decay, grad_sign, one_minus_beta1, beta2,
              one_minus_beta2, eps, bias_correction1, bias_correction2_sqrt):
    for c in range(cuda.blockIdx.x, chunk_group.size, cuda.gridDim.x):
        step_size = param.dtype.type(group_lr[chunk_group[c]] / bias_correction1)
        weight_decay = group_weight_decay[chunk_group[c]]
        for i in range(chunk_bounds[c] + uint64(cuda.threadIdx.x), chunk_bounds[c + 1], uint64(cuda.blockDim.x)):
            p = param[i]
            g = cuda.fma(weight_decay, p, grad_sign * grad[i])
            m = cuda.fma(one_minus_beta1, g - exp_avg[i], exp_avg[i])
            v = cuda.fma(beta2, exp_avg_sq[i], one_minus_beta2 * (g * g))
            exp_avg[i] = m
            exp_avg_sq[i] = v
            param[i] = _update(p, m, v, step_size, bias_correction2_sqrt, eps)


@cuda.jit
def adam_amsgrad_step(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, chunk_bounds,
                      chunk_group, group_lr, group_weight_decay, grad_sign,
                      one_minus_beta1, beta2, one_minus_beta2, eps, bias_correction1,
                      bias_correction2_sqrt):
    for c in range(cuda.blockIdx.x, chunk_group.size, cuda.gridDim.x):
        step_size = param.dtype.type(group_lr[chunk_group[c]] / bias_correction1)
        weight_decay = group_weight_decay[chunk_group[c]]
        for i in range(chunk_bounds[c] + uint64(cuda.threadIdx.x), chunk_bounds[c + 1], uint64(cuda.blockDim.x)):
            p = param[i]
            g = cuda.fma(weight_decay, p, grad_sign * grad[i])
            m = cuda.fma(one_minus_beta1, g - exp_avg[i], exp_avg[i])
            v = cuda.fma(beta2, exp_avg_sq[i], one_minus_beta2 * (g * g))
            v_max = _running_max(max_exp_avg_sq[i], v)
            exp_avg[i] = m
            exp_avg_sq[i] = v
            max_exp_avg_sq[i] = v_max
            param[i] = _update(p, m, v_max, step_size, bias_correction2_sqrt, eps)


@cuda.jit
def adamw_step(param, exp_avg, exp_avg_sq, grad, chunk_bounds, chunk_group,
               group_lr, group_decay, grad_sign, one_minus_beta1, beta2,
               one_minus_beta2, eps, bias_correction1, bias_correction2_sqrt):
    for c in range(cuda.blockIdx.x, chunk_group.size, cuda.gridDim.x):
        step_size = param.dtype.type(group_lr[chunk_group[c]] / bias_correction1)
        decay = group_decay[chunk_group[c]]
        for i in range(chunk_bounds[c] + uint64(cuda.threadIdx.x), chunk_bounds[c + 1], uint64(cuda.blockDim.x)):
            p = param[i] * decay
            g = grad_sign * grad[i]
            m = cuda.fma(one_minus_beta1, g - exp_avg[i], exp_avg[i])
            v = cuda.fma(beta2, exp_avg_sq[i], one_minus_beta2 * (g * g))
            exp_avg[i] = m
            exp_avg_sq[i] = v
            param[i] = _update(p, m, v, step_size, bias_correction2_sqrt, eps)


@cuda.jit
def adamw_amsgrad_step(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, chunk_bounds,
                       chunk_group, group_lr, group_decay, grad_sign, one_minus_beta1,
                       beta2, one_minus_beta2, eps, bias_correction1, bias_correction2_sqrt):
    for c in range(cuda.blockIdx.x, chunk_group.size, cuda.gridDim.x):
        step_size = param.dtype.type(group_lr[chunk_group[c]] / bias_correction1)
        decay = group_decay[chunk_group[c]]
        for i in range(chunk_bounds[c] + uint64(cuda.threadIdx.x), chunk_bounds[c + 1], uint64(cuda.blockDim.x)):
            p = param[i] * decay
            g = grad_sign * grad[i]
            m = cuda.fma(one_minus_beta1, g - exp_avg[i], exp_avg[i])
            v = cuda.fma(beta2, exp_avg_sq[i], one_minus_beta2 * (g * g))
            v_max = _running_max(max_exp_avg_sq[i], v)
            exp_avg[i] = m
            exp_avg_sq[i] = v
            max_exp_avg_sq[i] = v_max
            param[i] = _update(p, m, v_max, step_size, bias_correction2_sqrt, eps)
