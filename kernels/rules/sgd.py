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
from ..rule import Rule, Scalar
from ._reference import coupled_gradient as reference_gradient
from ._reference import group_lr
from .common import coupled_gradient, lr_and_weight_decay

SCALARS = (Scalar("lr", "float64"), Scalar("grad_sign"))
MOMENTUM_SCALARS = SCALARS + (Scalar("buffer_decay"), Scalar("buffer_grad_scale"))


@element
def sgd(p, state, g, chunk, scalars):
    lr, weight_decay = chunk
    g = coupled_gradient(p, g, weight_decay, scalars[1])
    return fma(-lr, g, p), ()


@element
def _momentum_buffer(b, g, scalars):
    return fma(scalars[2], b, scalars[3] * g)  # buffer_decay * b + buffer_grad_scale * g


@element
def sgd_momentum(p, state, g, chunk, scalars):
    lr, weight_decay = chunk
    g = coupled_gradient(p, g, weight_decay, scalars[1])
    b = _momentum_buffer(state[0], g, scalars)
    return fma(-lr, b, p), (b,)


@element
def sgd_nesterov(p, state, g, chunk, scalars):
    lr, weight_decay = chunk
    g = coupled_gradient(p, g, weight_decay, scalars[1])
    b = _momentum_buffer(state[0], g, scalars)
    return fma(-lr, fma(scalars[4], b, g), p), (b,)


def reference(param, state, grad, bounds, groups, table, scalars, nesterov=False):
    """float64 reference of every SGD rule (the arguments of the kernels)."""
    dtype = param.dtype
    p, g = reference_gradient(param, grad, table, bounds, groups, scalars[1], dtype)
    update = g
    if state.shape[0]:
        b = float(scalars[2]) * state[0].astype(np.float64) + float(scalars[3]) * g
        state[0] = b
        update = g + float(scalars[4]) * b if nesterov else b
    param[:] = p - group_lr(table, bounds, groups, scalars[0], dtype) * update


def _nesterov_reference(*arguments):
    reference(*arguments, nesterov=True)


def _rule(name, update, state, scalars, reference_=reference):
    return Rule(name, state, ("lr_factor", "weight_decay"), scalars, lr_and_weight_decay, update, reference_)


RULES = (
    _rule("sgd_step", sgd, (), SCALARS),
    _rule("sgd_momentum_step", sgd_momentum, ("momentum_buffer",), MOMENTUM_SCALARS),
    _rule("sgd_nesterov_step", sgd_nesterov, ("momentum_buffer",), MOMENTUM_SCALARS + (Scalar("momentum"),),
          _nesterov_reference),
)
