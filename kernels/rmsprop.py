r"""RMSProp, plain, centered, with momentum, and both: CPU kernels and float64 references.

Argument order, shared by each kernel and its reference::

    mutated buffers:  param, square_avg[, grad_avg][, momentum_buffer]
    read-only:        grad, chunk_bounds, chunk_group, group_lr, group_weight_decay
    scalars:          grad_sign, alpha, one_minus_alpha, eps[, momentum]

The per-element rule is PyTorch's (``torch.optim.RMSprop``), with ``eps`` outside the square
root:

.. math::

    g &\leftarrow s\,g + \lambda\theta \\
    v &\leftarrow \alpha v + (1-\alpha) g^2 \\
    \bar g &\leftarrow \bar g + (1-\alpha)(g - \bar g) \quad\text{(centered)} \\
    d &\leftarrow \sqrt{v} + \epsilon \quad\text{or, centered,}\quad
        d \leftarrow \sqrt{v - \bar g^2} + \epsilon \\
    b &\leftarrow \mu b + g / d, \quad \theta \leftarrow \theta - \gamma b
        \quad\text{(momentum; else } \theta \leftarrow \theta - \gamma g / d \text{)}

Each multiply-add (including :math:`v - \bar g^2`) is a single-rounding FMA. Where rounding
makes :math:`v - \bar g^2` negative (a constant gradient, or ``alpha = 0``, where the FMA
returns minus the rounding error of :math:`g^2`), the variance is taken as 0; PyTorch takes the
square root of the negative number and returns NaN there. A NaN gradient still gives NaN.
"""

import math

import numpy as np
from numba import prange

from ._config import fma, inline_helper, parallel_kernel
from ._groups import as_float64, expand


@inline_helper
def _square_avg(v, g, alpha, one_minus_alpha):
    return fma(alpha, v, one_minus_alpha * (g * g))


@inline_helper
def _grad_avg(grad_avg, g, one_minus_alpha):
    return fma(one_minus_alpha, g - grad_avg, grad_avg)


@inline_helper
def _centered_denominator(v, grad_avg, eps):
    variance = fma(-grad_avg, grad_avg, v)
    if variance < 0:  # rounding only; a NaN passes through
        variance = variance - variance  # zero of the same dtype (a literal 0 would promote)
    return math.sqrt(variance) + eps


@parallel_kernel
def rmsprop_step(param, square_avg, grad, chunk_bounds, chunk_group, group_lr,
                 group_weight_decay, grad_sign, alpha, one_minus_alpha, eps):
    """One RMSProp step, in place."""
    for c in prange(chunk_group.size):
        lr = group_lr[chunk_group[c]]
        weight_decay = group_weight_decay[chunk_group[c]]
        for i in range(chunk_bounds[c], chunk_bounds[c + 1]):
            p = param[i]
            g = fma(weight_decay, p, grad_sign * grad[i])
            v = _square_avg(square_avg[i], g, alpha, one_minus_alpha)
            square_avg[i] = v
            param[i] = fma(-lr, g / (math.sqrt(v) + eps), p)


@parallel_kernel
def rmsprop_centered_step(param, square_avg, grad_avg, grad, chunk_bounds, chunk_group,
                          group_lr, group_weight_decay, grad_sign, alpha, one_minus_alpha, eps):
    """One centered RMSProp step, in place."""
    for c in prange(chunk_group.size):
        lr = group_lr[chunk_group[c]]
        weight_decay = group_weight_decay[chunk_group[c]]
        for i in range(chunk_bounds[c], chunk_bounds[c + 1]):
            p = param[i]
            g = fma(weight_decay, p, grad_sign * grad[i])
            v = _square_avg(square_avg[i], g, alpha, one_minus_alpha)
            a = _grad_avg(grad_avg[i], g, one_minus_alpha)
            square_avg[i] = v
            grad_avg[i] = a
            param[i] = fma(-lr, g / _centered_denominator(v, a, eps), p)


@parallel_kernel
def rmsprop_momentum_step(param, square_avg, momentum_buffer, grad, chunk_bounds, chunk_group,
                          group_lr, group_weight_decay, grad_sign, alpha, one_minus_alpha, eps,
                          momentum):
    """One RMSProp step with momentum, in place."""
    for c in prange(chunk_group.size):
        lr = group_lr[chunk_group[c]]
        weight_decay = group_weight_decay[chunk_group[c]]
        for i in range(chunk_bounds[c], chunk_bounds[c + 1]):
            p = param[i]
            g = fma(weight_decay, p, grad_sign * grad[i])
            v = _square_avg(square_avg[i], g, alpha, one_minus_alpha)
            b = fma(momentum, momentum_buffer[i], g / (math.sqrt(v) + eps))
            square_avg[i] = v
            momentum_buffer[i] = b
            param[i] = fma(-lr, b, p)


@parallel_kernel
def rmsprop_centered_momentum_step(param, square_avg, grad_avg, momentum_buffer, grad,
                                   chunk_bounds, chunk_group, group_lr, group_weight_decay,
                                   grad_sign, alpha, one_minus_alpha, eps, momentum):
    """One centered RMSProp step with momentum, in place."""
    for c in prange(chunk_group.size):
        lr = group_lr[chunk_group[c]]
        weight_decay = group_weight_decay[chunk_group[c]]
        for i in range(chunk_bounds[c], chunk_bounds[c + 1]):
            p = param[i]
            g = fma(weight_decay, p, grad_sign * grad[i])
            v = _square_avg(square_avg[i], g, alpha, one_minus_alpha)
            a = _grad_avg(grad_avg[i], g, one_minus_alpha)
            b = fma(momentum, momentum_buffer[i], g / _centered_denominator(v, a, eps))
            square_avg[i] = v
            grad_avg[i] = a
            momentum_buffer[i] = b
            param[i] = fma(-lr, b, p)


# ---------------------------------------------------------------------------------------------
# float64 references: same arguments, plain numpy, no FMA, results stored into the buffers.


def _reference(param, square_avg, grad_avg, momentum_buffer, grad, chunk_bounds, chunk_group,
               group_lr, group_weight_decay, grad_sign, alpha, one_minus_alpha, eps,
               momentum=None):
    p, v, g = as_float64(param, square_avg, grad)
    g = float(grad_sign) * g + expand(group_weight_decay, chunk_bounds, chunk_group) * p
    v = float(alpha) * v + float(one_minus_alpha) * g * g
    square_avg[:] = v
    if grad_avg is None:
        denominator = np.sqrt(v) + float(eps)
    else:
        a = np.asarray(grad_avg, np.float64)
        a = a + float(one_minus_alpha) * (g - a)
        grad_avg[:] = a
        denominator = np.sqrt(np.maximum(v - a * a, 0.0)) + float(eps)
    update = g / denominator
    if momentum_buffer is not None:
        update = float(momentum) * np.asarray(momentum_buffer, np.float64) + update
        momentum_buffer[:] = update
    param[:] = p - expand(group_lr, chunk_bounds, chunk_group) * update


def rmsprop_step_reference(param, square_avg, grad, *rest):
    """float64 reference of :func:`rmsprop_step`."""
    _reference(param, square_avg, None, None, grad, *rest)


def rmsprop_centered_step_reference(param, square_avg, grad_avg, grad, *rest):
    """float64 reference of :func:`rmsprop_centered_step`."""
    _reference(param, square_avg, grad_avg, None, grad, *rest)


def rmsprop_momentum_step_reference(param, square_avg, momentum_buffer, grad, *rest):
    """float64 reference of :func:`rmsprop_momentum_step`."""
    _reference(param, square_avg, None, momentum_buffer, grad, *rest)


def rmsprop_centered_momentum_step_reference(param, square_avg, grad_avg, momentum_buffer, grad,
                                             *rest):
    """float64 reference of :func:`rmsprop_centered_momentum_step`."""
    _reference(param, square_avg, grad_avg, momentum_buffer, grad, *rest)
