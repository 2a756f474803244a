r"""SGD, with momentum and with Nesterov momentum: PyTorch's rule (``torch.optim.SGD``).

.. math::

    g &\leftarrow s\,g + \lambda\theta \qquad (s = -1 \text{ to maximize}) \\
    b &\leftarrow \mu b + (1-\tau) g \quad\text{(} b \leftarrow g \text{ on the first step)} \\
    \theta &\leftarrow \theta - \gamma\,b \quad\text{or, Nesterov,}\quad
        \theta \leftarrow \theta - \gamma\,(g + \mu b)

PyTorch starts the buffer as a copy of the first gradient, without dampening. The kernels
need no first-step flag for that: the host passes ``buffer_decay = 0`` and
``buffer_grad_scale = 1`` on the first step (``0 * 0 + 1 * g`` is exactly ``g``) and
``momentum``, ``1 - dampening`` afterwards. Each multiply-add is a single-rounding FMA.
"""

import numpy as np

from ..elements import element
from ..primitives import fma
from ..rule import Rule
from ._reference import coupled_gradient as reference_gradient
from ._reference import group_lr
from .common import coupled_gradient

#: Every SGD rule's scalars (plain SGD ignores the last three).
SCALARS = ("lr", "grad_sign", "buffer_decay", "buffer_grad_scale", "momentum")


@element
def sgd_chunk(param, group, scalars):
    """``(lr, weight_decay, grad_sign, buffer_decay, buffer_grad_scale, momentum)`` in the
    buffer's dtype, the group's ``lr * lr_factor`` taken in float64, each rounded once."""
    t = param.dtype.type
    lr, grad_sign, buffer_decay, buffer_grad_scale, momentum = scalars
    return t(lr * group[0]), t(group[1]), t(grad_sign), t(buffer_decay), t(buffer_grad_scale), t(momentum)


@element
def sgd(p, state, g, chunk):
    lr, weight_decay, grad_sign = chunk[0], chunk[1], chunk[2]
    return fma(-lr, coupled_gradient(p, g, weight_decay, grad_sign), p), ()


@element
def _gradient_and_buffer(p, b, g, chunk):
    _, weight_decay, grad_sign, buffer_decay, buffer_grad_scale, _ = chunk
    g = coupled_gradient(p, g, weight_decay, grad_sign)
    return g, fma(buffer_decay, b, buffer_grad_scale * g)


@element
def sgd_momentum(p, state, g, chunk):
    g, b = _gradient_and_buffer(p, state[0], g, chunk)
    return fma(-chunk[0], b, p), (b,)


@element
def sgd_nesterov(p, state, g, chunk):
    g, b = _gradient_and_buffer(p, state[0], g, chunk)
    return fma(-chunk[0], fma(chunk[5], b, g), p), (b,)


def reference(param, state, grad, bounds, groups, table, scalars, nesterov=False):
    """float64 reference of every SGD rule (the arguments of the kernels)."""
    dtype = param.dtype
    grad_sign, buffer_decay, buffer_grad_scale, momentum = (float(np.asarray(s).astype(dtype)) for s in scalars[1:])
    p, g = reference_gradient(param, grad, table, bounds, groups, grad_sign, dtype)
    update = g
    if state.shape[0]:
        b = buffer_decay * state[0].astype(np.float64) + buffer_grad_scale * g
        state[0] = b
        update = g + momentum * b if nesterov else b
    param[:] = p - group_lr(table, bounds, groups, scalars[0], dtype) * update


def _nesterov_reference(*arguments):
    reference(*arguments, nesterov=True)


def _rule(name, update, state, reference_=reference):
    return Rule(name, state, ("lr_factor", "weight_decay"), SCALARS, sgd_chunk, update, reference_)


RULES = (
    _rule("sgd_step", sgd, ()),
    _rule("sgd_momentum_step", sgd_momentum, ("momentum_buffer",)),
    _rule("sgd_nesterov_step", sgd_nesterov, ("momentum_buffer",), _nesterov_reference),
)
