r"""RMSProp, plain, centered, with momentum, and both: PyTorch's rule (``torch.optim.RMSprop``),
with ``eps`` outside the square root.

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

import functools

import numpy as np

from ..elements import element
from ..primitives import fma, sqrt
from ..rule import Rule
from ._reference import coupled_gradient as reference_gradient
from ._reference import group_lr
from .common import coupled_gradient

#: Every RMSProp rule's scalars (the rules without momentum ignore the last).
SCALARS = ("lr", "grad_sign", "alpha", "one_minus_alpha", "eps", "momentum")


@element
def rmsprop_chunk(param, group, scalars):
    """``(lr, weight_decay, grad_sign, alpha, one_minus_alpha, eps, momentum)`` in the buffer's
    dtype, the group's ``lr * lr_factor`` taken in float64, each rounded once."""
    t = param.dtype.type
    lr, grad_sign, alpha, one_minus_alpha, eps, momentum = scalars
    return t(lr * group[0]), t(group[1]), t(grad_sign), t(alpha), t(one_minus_alpha), t(eps), t(momentum)


@element
def _grad_avg(grad_avg, g, chunk):
    return fma(chunk[4], g - grad_avg, grad_avg)  # grad_avg + (1 - alpha) * (g - grad_avg)


@element
def _centered_denominator(v, grad_avg, eps):
    variance = fma(-grad_avg, grad_avg, v)
    if variance < 0:  # rounding only; a NaN passes through
        variance = variance - variance  # zero of the same dtype (a literal 0 would promote)
    return sqrt(variance) + eps


@element
def _gradient_and_square_avg(p, g, square_avg, chunk):
    g = coupled_gradient(p, g, chunk[1], chunk[2])
    # alpha * v + (1 - alpha) * g * g, in torch's order (so that g**2 need not fit the dtype)
    return g, fma(chunk[3], square_avg, (chunk[4] * g) * g)


@element
def rmsprop(p, state, g, chunk):
    g, v = _gradient_and_square_avg(p, g, state[0], chunk)
    return fma(-chunk[0], g / (sqrt(v) + chunk[5]), p), (v,)


@element
def rmsprop_centered(p, state, g, chunk):
    g, v = _gradient_and_square_avg(p, g, state[0], chunk)
    a = _grad_avg(state[1], g, chunk)
    return fma(-chunk[0], g / _centered_denominator(v, a, chunk[5]), p), (v, a)


@element
def rmsprop_momentum(p, state, g, chunk):
    g, v = _gradient_and_square_avg(p, g, state[0], chunk)
    b = fma(chunk[6], state[1], g / (sqrt(v) + chunk[5]))
    return fma(-chunk[0], b, p), (v, b)


@element
def rmsprop_centered_momentum(p, state, g, chunk):
    g, v = _gradient_and_square_avg(p, g, state[0], chunk)
    a = _grad_avg(state[1], g, chunk)
    b = fma(chunk[6], state[2], g / _centered_denominator(v, a, chunk[5]))
    return fma(-chunk[0], b, p), (v, a, b)


def reference(param, state, grad, bounds, groups, table, scalars, names=("square_avg",)):
    """float64 reference of every RMSProp rule (the arguments of the kernels); ``names`` are the
    rule's state rows, which say which rule it is."""
    dtype = param.dtype
    _, grad_sign, alpha, one_minus_alpha, eps, momentum = (float(np.asarray(s).astype(dtype)) for s in scalars)
    p, g = reference_gradient(param, grad, table, bounds, groups, grad_sign, dtype)
    centered = "grad_avg" in names
    v = alpha * state[0].astype(np.float64) + one_minus_alpha * g * g
    state[0] = v
    if centered:
        a = state[1].astype(np.float64)
        a = a + one_minus_alpha * (g - a)
        state[1] = a
        denominator = np.sqrt(np.maximum(v - a * a, 0.0)) + eps
    else:
        denominator = np.sqrt(v) + eps
    update = g / denominator
    if "momentum_buffer" in names:
        update = momentum * state[-1].astype(np.float64) + update
        state[-1] = update
    param[:] = p - group_lr(table, bounds, groups, scalars[0], dtype) * update


def _rule(name, update, state):
    return Rule(name, state, ("lr_factor", "weight_decay"), SCALARS, rmsprop_chunk, update,
                functools.partial(reference, names=state))


RULES = (
    _rule("rmsprop_step", rmsprop, ("square_avg",)),
    _rule("rmsprop_centered_step", rmsprop_centered, ("square_avg", "grad_avg")),
    _rule("rmsprop_momentum_step", rmsprop_momentum, ("square_avg", "momentum_buffer")),
    _rule("rmsprop_centered_momentum_step", rmsprop_centered_momentum, ("square_avg", "grad_avg", "momentum_buffer")),
)
