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
