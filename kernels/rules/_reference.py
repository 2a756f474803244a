"""What the float64 references share: per-element values of the group table, float64 copies."""

import numpy as np


def expand(column, bounds, groups):
    """The float64 value of a per-group ``column`` at every element of the chunk table."""
    per_chunk = np.asarray(column, dtype=np.float64)[np.asarray(groups, dtype=np.int64)]
    return np.repeat(per_chunk, np.diff(np.asarray(bounds, dtype=np.int64)))


def as_float64(*buffers):
    """float64 copies of ``buffers``: the references compute in float64 whatever the input."""
    return tuple(np.asarray(b, dtype=np.float64).copy() for b in buffers)


def group_lr(table, bounds, groups, lr, dtype):
    """Each element's learning rate: ``lr * lr_factor`` in float64, rounded once to ``dtype``,
    as the kernels derive it per chunk."""
    return expand((float(lr) * table[:, 0]).astype(dtype), bounds, groups)


def coupled_gradient(param, grad, table, bounds, groups, grad_sign, dtype):
    """``(p, s * g + lambda * p)`` in float64, with each group's weight decay rounded to ``dtype``."""
    p, g = as_float64(param, grad)
    decay = expand(table[:, 1].astype(dtype), bounds, groups)
    return p, float(grad_sign) * g + decay * p


def adam_moments(param, state, grad, bounds, groups, table, lr, grad_sign, one_minus_beta1, beta2, one_minus_beta2,
                 decoupled=False):
    """The Adam family's first half in float64: ``(p, g, m, v)`` after the sign, the weight decay
    (added to ``g``, or with ``decoupled`` applied to ``p`` as ``1 - lr_k * lambda`` rounded to
    the dtype, as the kernels form it) and the new moments."""
    dtype = param.dtype
    p, m, v, g = as_float64(param, state[0], state[1], grad)
    g = grad_sign * g
    if decoupled:
        p = p * expand((1.0 - lr * table[:, 0] * table[:, 1]).astype(dtype), bounds, groups)
    else:
        g = g + expand(table[:, 1].astype(dtype), bounds, groups) * p
    return p, g, m + one_minus_beta1 * (g - m), beta2 * v + one_minus_beta2 * g * g
