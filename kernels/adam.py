r"""Adam and AdamW, with and without AMSGrad: CPU kernels and their float64 references.

All four kernels share one argument order, and each reference takes exactly the arguments of
its kernel::

    mutated buffers:  param, exp_avg, exp_avg_sq[, max_exp_avg_sq]
    read-only:        grad, chunk_bounds, chunk_group, group_lr, group_weight_decay
                      (adamw: group_decay)
    scalars:          grad_sign, one_minus_beta1, beta2, one_minus_beta2, eps,
                      bias_correction1, bias_correction2_sqrt

The per-element rule is PyTorch's (``torch.optim.Adam``/``AdamW``, ``foreach=False``):

.. math::

    g &\leftarrow s\,g + \lambda\theta \quad\text{(Adam; } s=\pm1 \text{ for maximize)} \\
    \theta &\leftarrow \theta\,(1 - \gamma\lambda) \quad\text{(AdamW, as } \text{group\_decay)} \\
    m &\leftarrow m + (1-\beta_1)(g - m) \\
    v &\leftarrow \beta_2 v + (1-\beta_2) g^2 \\
    \hat v &\leftarrow \max(\hat v, v) \quad\text{(AMSGrad)} \\
    \theta &\leftarrow \theta - \frac{\gamma}{1-\beta_1^t}\,
        \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}

``chunk_bounds`` (uint64, ``n_chunks + 1``) and ``chunk_group`` (int64, ``n_chunks``) are the
chunk table of :mod:`fastopt.kernels.chunks`. ``group_lr`` (float64, whatever the buffer's
dtype) holds each group's :math:`\gamma` and ``bias_correction1`` (a float64 scalar)
:math:`1-\beta_1^t`; each chunk divides the two in float64 and rounds the step size
:math:`\gamma/(1-\beta_1^t)` once to the buffer's dtype, so that a step passes only scalars
(the CUDA twins need no copy to the device per step). ``bias_correction2_sqrt`` is
:math:`\sqrt{1-\beta_2^t}`, derived on the host in float64 and rounded once. The two multiply-adds of the moments and the final update are
single-rounding FMAs.
"""

import math

import numpy as np
from numba import prange

from ._config import fma, inline_helper, parallel_kernel
from ._groups import as_float64, expand


@inline_helper
def _moments(m, v, g, one_minus_beta1, beta2, one_minus_beta2):
    return fma(one_minus_beta1, g - m, m), fma(beta2, v, one_minus_beta2 * (g * g))


@inline_helper
def _running_max(current, candidate):
    # NaN-propagating maximum, like torch.maximum: a NaN on either side wins.
    if candidate > current or candidate != candidate:
        return candidate
    return current


@inline_helper
def _update(p, m, v, step_size, bias_correction2_sqrt, eps):
    return fma(-step_size, m / (math.sqrt(v) / bias_correction2_sqrt + eps), p)


@inline_helper
def _step_size(param, lr, bias_correction1):
    # In float64, rounded once to the buffer's dtype: the host's lr / (1 - beta1**t) exactly.
    return param.dtype.type(lr / bias_correction1)


@parallel_kernel
def adam_step(param, exp_avg, exp_avg_sq, grad, chunk_bounds, chunk_group,
              group_lr, group_weight_decay, grad_sign, one_minus_beta1, beta2,
              one_minus_beta2, eps, bias_correction1, bias_correction2_sqrt):
    """One Adam step (L2 term coupled into the gradient), in place."""
    for c in prange(chunk_group.size):
        step_size = _step_size(param, group_lr[chunk_group[c]], bias_correction1)
        weight_decay = group_weight_decay[chunk_group[c]]
        for i in range(chunk_bounds[c], chunk_bounds[c + 1]):
            p = param[i]
            g = fma(weight_decay, p, grad_sign * grad[i])
            m, v = _moments(exp_avg[i], exp_avg_sq[i], g, one_minus_beta1, beta2, one_minus_beta2)
            exp_avg[i] = m
            exp_avg_sq[i] = v
            param[i] = _update(p, m, v, step_size, bias_correction2_sqrt, eps)


@parallel_kernel
def adam_amsgrad_step(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, chunk_bounds,
                      chunk_group, group_lr, group_weight_decay, grad_sign,
                      one_minus_beta1, beta2, one_minus_beta2, eps, bias_correction1,
                      bias_correction2_sqrt):
    """One Adam step with AMSGrad's running maximum of the second moment, in place."""
    for c in prange(chunk_group.size):
        step_size = _step_size(param, group_lr[chunk_group[c]], bias_correction1)
        weight_decay = group_weight_decay[chunk_group[c]]
        for i in range(chunk_bounds[c], chunk_bounds[c + 1]):
            p = param[i]
            g = fma(weight_decay, p, grad_sign * grad[i])
            m, v = _moments(exp_avg[i], exp_avg_sq[i], g, one_minus_beta1, beta2, one_minus_beta2)
            v_max = _running_max(max_exp_avg_sq[i], v)
            exp_avg[i] = m
            exp_avg_sq[i] = v
            max_exp_avg_sq[i] = v_max
            param[i] = _update(p, m, v_max, step_size, bias_correction2_sqrt, eps)


@parallel_kernel
def adamw_step(param, exp_avg, exp_avg_sq, grad, chunk_bounds, chunk_group,
               group_lr, group_decay, grad_sign, one_minus_beta1, beta2,
               one_minus_beta2, eps, bias_correction1, bias_correction2_sqrt):
    """One AdamW step (decoupled decay: ``group_decay`` is 1 - lr * weight_decay), in place."""
    for c in prange(chunk_group.size):
        step_size = _step_size(param, group_lr[chunk_group[c]], bias_correction1)
        decay = group_decay[chunk_group[c]]
        for i in range(chunk_bounds[c], chunk_bounds[c + 1]):
            p = param[i] * decay
            g = grad_sign * grad[i]
            m, v = _moments(exp_avg[i], exp_avg_sq[i], g, one_minus_beta1, beta2, one_minus_beta2)
            exp_avg[i] = m
            exp_avg_sq[i] = v
            param[i] = _update(p, m, v, step_size, bias_correction2_sqrt, eps)


@parallel_kernel
def adamw_amsgrad_step(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, chunk_bounds,
                       chunk_group, group_lr, group_decay, grad_sign, one_minus_beta1,
                       beta2, one_minus_beta2, eps, bias_correction1, bias_correction2_sqrt):
    """One AdamW step with AMSGrad, in place."""
    for c in prange(chunk_group.size):
        step_size = _step_size(param, group_lr[chunk_group[c]], bias_correction1)
        decay = group_decay[chunk_group[c]]
        for i in range(chunk_bounds[c], chunk_bounds[c + 1]):
            p = param[i] * decay
            g = grad_sign * grad[i]
            m, v = _moments(exp_avg[i], exp_avg_sq[i], g, one_minus_beta1, beta2, one_minus_beta2)
            v_max = _running_max(max_exp_avg_sq[i], v)
            exp_avg[i] = m
            exp_avg_sq[i] = v
            max_exp_avg_sq[i] = v_max
            param[i] = _update(p, m, v_max, step_size, bias_correction2_sqrt, eps)


# ---------------------------------------------------------------------------------------------
# float64 references: same arguments, plain numpy, no FMA, results stored into the buffers.


def _reference(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, chunk_bounds, chunk_group,
               group_lr, group_weight_decay, group_decay, grad_sign, one_minus_beta1,
               beta2, one_minus_beta2, eps, bias_correction1, bias_correction2_sqrt):
    p, m, v, g = as_float64(param, exp_avg, exp_avg_sq, grad)
    rounded = (np.asarray(group_lr, np.float64) / float(bias_correction1)).astype(param.dtype)
    step_size = expand(rounded, chunk_bounds, chunk_group)
    if group_decay is not None:
        p = p * expand(group_decay, chunk_bounds, chunk_group)
    g = float(grad_sign) * g
    if group_weight_decay is not None:
        g = g + expand(group_weight_decay, chunk_bounds, chunk_group) * p
    m = m + float(one_minus_beta1) * (g - m)
    v = float(beta2) * v + float(one_minus_beta2) * g * g
    v_hat = v
    if max_exp_avg_sq is not None:
        v_hat = np.fmax(np.asarray(max_exp_avg_sq, dtype=np.float64), v)
        v_hat[np.isnan(v)] = np.nan
        v_hat[np.isnan(max_exp_avg_sq)] = np.nan
        max_exp_avg_sq[:] = v_hat
    p = p - step_size * m / (np.sqrt(v_hat) / float(bias_correction2_sqrt) + float(eps))
    param[:], exp_avg[:], exp_avg_sq[:] = p, m, v


def adam_step_reference(param, exp_avg, exp_avg_sq, grad, chunk_bounds, chunk_group,
                        group_lr, group_weight_decay, *scalars):
    """float64 reference of :func:`adam_step`."""
    _reference(param, exp_avg, exp_avg_sq, None, grad, chunk_bounds, chunk_group,
               group_lr, group_weight_decay, None, *scalars)


def adam_amsgrad_step_reference(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, chunk_bounds,
                                chunk_group, group_lr, group_weight_decay, *scalars):
    """float64 reference of :func:`adam_amsgrad_step`."""
    _reference(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, chunk_bounds, chunk_group,
               group_lr, group_weight_decay, None, *scalars)


def adamw_step_reference(param, exp_avg, exp_avg_sq, grad, chunk_bounds, chunk_group,
                         group_lr, group_decay, *scalars):
    """float64 reference of :func:`adamw_step`."""
    _reference(param, exp_avg, exp_avg_sq, None, grad, chunk_bounds, chunk_group,
               group_lr, None, group_decay, *scalars)


def adamw_amsgrad_step_reference(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad,
                                 chunk_bounds, chunk_group, group_lr, group_decay,
                                 *scalars):
    """float64 reference of :func:`adamw_amsgrad_step`."""
    _reference(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, chunk_bounds, chunk_group,
               group_lr, None, group_decay, *scalars)
