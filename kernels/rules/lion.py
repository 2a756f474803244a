r"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms", Program 1).

.. math::

    g &\leftarrow s\,g \\
    c &\leftarrow m + (1-\beta_1)(g - m) \\
    \theta &\leftarrow \theta - \gamma\,(\operatorname{sign}(c) + \lambda\theta) \\
    m &\leftarrow m + (1-\beta_2)(g - m)

:math:`\beta_1 m + (1-\beta_1) g` is written as the interpolation PyTorch's ``lerp`` uses, a
single-rounding FMA, as are :math:`\operatorname{sign}(c) + \lambda\theta` and the step. The
weight decay is decoupled (multiplied by the learning rate, not added to the gradient).
:math:`\operatorname{sign}(0) = 0`; a NaN stays NaN.
"""

import numpy as np

from ..elements import element
from ..primitives import fma, mul
from ..rule import Rule
from ._reference import as_float64, expand, group_lr

SCALARS = ("lr", "grad_sign", "one_minus_beta1", "one_minus_beta2")


@element
def lion_chunk(param, group, scalars):
    """``(lr_k, weight_decay, grad_sign, one_minus_beta1, one_minus_beta2, one)`` in the
    buffer's dtype (``one`` keeps the sign in that dtype)."""
    t = param.dtype.type
    lr, grad_sign, one_minus_beta1, one_minus_beta2 = scalars
    return t(lr * group[0]), t(group[1]), t(grad_sign), t(one_minus_beta1), t(one_minus_beta2), t(1.0)


@element
def _sign(x, one):
    if x > 0:
        return one
    if x < 0:
        return -one
    return x  # +0, -0 and NaN as they are


@element
def lion(p, state, g, chunk):
    lr, weight_decay, grad_sign, one_minus_beta1, one_minus_beta2, one = chunk
    g = mul(grad_sign, g)  # not fused into g - m
    m = state[0]
    direction = _sign(fma(one_minus_beta1, g - m, m), one)
    return fma(-lr, fma(weight_decay, p, direction), p), (fma(one_minus_beta2, g - m, m),)


def reference(param, state, grad, bounds, groups, table, scalars):
    """float64 reference of Lion (the arguments of the kernel)."""
    dtype = param.dtype
    grad_sign, one_minus_beta1, one_minus_beta2 = (float(np.asarray(s).astype(dtype)) for s in scalars[1:])
    p, m, g = as_float64(param, state[0], grad)
    g = grad_sign * g
    c = m + one_minus_beta1 * (g - m)
    decay = expand(table[:, 1].astype(dtype), bounds, groups)
    param[:] = p - group_lr(table, bounds, groups, scalars[0], dtype) * (np.sign(c) + decay * p)
    state[0] = m + one_minus_beta2 * (g - m)


RULES = (Rule("lion_step", ("exp_avg",), ("lr_factor", "weight_decay"), SCALARS, lion_chunk, lion, reference),)
