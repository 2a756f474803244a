r"""Adagrad: PyTorch's rule (``torch.optim.Adagrad``, dense gradients).

.. math::

    g &\leftarrow s\,g + \lambda\theta \\
    \Sigma &\leftarrow \Sigma + g^2 \\
    \theta &\leftarrow \theta - \frac{\gamma}{1 + (t-1)\,\eta}\,\frac{g}{\sqrt{\Sigma} + \epsilon}

with :math:`\eta` the learning-rate decay. The host passes the divisor :math:`1 + (t-1)\eta`
in float64; each chunk divides its group's learning rate by it in float64 and rounds the result
once to the buffer's dtype, as the host would. The sum's update and the step are
single-rounding FMAs. The sum starts at ``initial_accumulator_value`` (the optimizer fills it).
"""

import numpy as np

from ..elements import element
from ..primitives import fma, sqrt
from ..rule import Rule
from ._reference import as_float64, expand
from ._reference import coupled_gradient as reference_gradient
from .common import coupled_gradient

SCALARS = ("lr", "lr_decay_divisor", "grad_sign", "eps")


@element
def adagrad_chunk(param, group, scalars):
    """``(lr_k / divisor, weight_decay, grad_sign, eps)`` in the buffer's dtype."""
    t = param.dtype.type
    lr, divisor, grad_sign, eps = scalars
    return t(lr * group[0] / divisor), t(group[1]), t(grad_sign), t(eps)


@element
def adagrad(p, state, g, chunk):
    g = coupled_gradient(p, g, chunk[1], chunk[2])
    total = fma(g, g, state[0])
    return fma(-chunk[0], g / (sqrt(total) + chunk[3]), p), (total,)


def reference(param, state, grad, bounds, groups, table, scalars):
    """float64 reference of Adagrad (the arguments of the kernel)."""
    dtype = param.dtype
    lr, divisor = float(scalars[0]), float(scalars[1])
    grad_sign, eps = (float(np.asarray(s).astype(dtype)) for s in scalars[2:])
    p, g = reference_gradient(param, grad, table, bounds, groups, grad_sign, dtype)
    (total,) = as_float64(state[0])
    total = total + g * g
    state[0] = total
    step_size = expand((lr * table[:, 0] / divisor).astype(dtype), bounds, groups)
    param[:] = p - step_size * g / (np.sqrt(total) + eps)


RULES = (Rule("adagrad_step", ("sum",), ("lr_factor", "weight_decay"), SCALARS, adagrad_chunk, adagrad, reference),)
