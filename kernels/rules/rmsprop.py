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

import numpy as np

from ..elements import element
from ..primitives import fma, sqrt
from ..rule import Rule, Scalar
from ._reference import coupled_gradient as reference_gradient
from ._reference import group_lr
from .common import coupled_gradient, lr_and_weight_decay

SCALARS = (Scalar("lr", "float64"), Scalar("grad_sign"), Scalar("alpha"), Scalar("one_minus_alpha"),
           Scalar("eps"))
MOMENTUM_SCALARS = SCALARS + (Scalar("momentum"),)


# chunk = (lr, weight_decay); scalars = (lr, grad_sign, alpha, one_minus_alpha, eps[, momentum])


@element
def _square_avg(v, g, scalars):
    return fma(scalars[2], v, scalars[3] * (g * g))  # alpha * v + (1 - alpha) * g**2


@element
def _grad_avg(grad_avg, g, scalars):
    return fma(scalars[3], g - grad_avg, grad_avg)


@element
def _centered_denominator(v, grad_avg, eps):
    variance = fma(-grad_avg, grad_avg, v)
    if variance < 0:  # rounding only; a NaN passes through
        variance = variance - variance  # zero of the same dtype (a literal 0 would promote)
    return sqrt(variance) + eps


@element
def _gradient_and_square_avg(p, g, weight_decay, square_avg, scalars):
    g = coupled_gradient(p, g, weight_decay, scalars[1])
    return g, _square_avg(square_avg, g, scalars)


@element
def rmsprop(p, state, g, chunk, scalars):
    g, v = _gradient_and_square_avg(p, g, chunk[1], state[0], scalars)
    return fma(-chunk[0], g / (sqrt(v) + scalars[4]), p), (v,)


@element
def rmsprop_centered(p, state, g, chunk, scalars):
    g, v = _gradient_and_square_avg(p, g, chunk[1], state[0], scalars)
    a = _grad_avg(state[1], g, scalars)
    return fma(-chunk[0], g / _centered_denominator(v, a, scalars[4]), p), (v, a)


@element
def rmsprop_momentum(p, state, g, chunk, scalars):
    g, v = _gradient_and_square_avg(p, g, chunk[1], state[0], scalars)
    b = fma(scalars[5], state[1], g / (sqrt(v) + scalars[4]))
    return fma(-chunk[0], b, p), (v, b)


@element
def rmsprop_centered_momentum(p, state, g, chunk, scalars):
    g, v = _gradient_and_square_avg(p, g, chunk[1], state[0], scalars)
    a = _grad_avg(state[1], g, scalars)
    b = fma(scalars[5], state[2], g / _centered_denominator(v, a, scalars[4]))
    return fma(-chunk[0], b, p), (v, a, b)


def reference(param, state, grad, bounds, groups, table, scalars):
    """float64 reference of every RMSProp rule (the arguments of the kernels); the state's rows
    say which: ``square_avg``, then ``grad_avg`` if centered, then ``momentum_buffer`` if the
    scalars carry a momentum."""
    dtype = param.dtype
    p, g = reference_gradient(param, grad, table, bounds, groups, scalars[1], dtype)
    alpha, one_minus_alpha, eps = (float(s) for s in scalars[2:5])
    momentum = len(scalars) == 6
    centered = state.shape[0] == (3 if momentum else 2)
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
    if momentum:
        update = float(scalars[5]) * state[-1].astype(np.float64) + update
        state[-1] = update
    param[:] = p - group_lr(table, bounds, groups, scalars[0], dtype) * update


def _rule(name, update, state, scalars):
    return Rule(name, state, ("lr_factor", "weight_decay"), scalars, lr_and_weight_decay, update, reference)


RULES = (
    _rule("rmsprop_step", rmsprop, ("square_avg",), SCALARS),
    _rule("rmsprop_centered_step", rmsprop_centered, ("square_avg", "grad_avg"), SCALARS),
    _rule("rmsprop_momentum_step", rmsprop_momentum, ("square_avg", "momentum_buffer"), MOMENTUM_SCALARS),
    _rule("rmsprop_centered_momentum_step", rmsprop_centered_momentum,
          ("square_avg", "grad_avg", "momentum_buffer"), MOMENTUM_SCALARS),
)
