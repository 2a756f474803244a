r"""SGD, with momentum and with Nesterov momentum: CPU kernels and their float64 references.

Argument order, shared by each kernel and its reference::

    mutated buffers:  param[, momentum_buffer]
    read-only:        grad, chunk_bounds, chunk_group, group_lr, group_weight_decay
    scalars:          grad_sign[, buffer_decay, buffer_grad_scale[, momentum]]

The per-element rule is PyTorch's (``torch.optim.SGD``):

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
from numba import prange

from ._config import fma, parallel_kernel
from ._groups import as_float64, expand


@parallel_kernel
def sgd_step(param, grad, chunk_bounds, chunk_group, group_lr, group_weight_decay, grad_sign):
    """One plain SGD step, in place."""
    for c in prange(chunk_group.size):
        lr = group_lr[chunk_group[c]]
        weight_decay = group_weight_decay[chunk_group[c]]
        for i in range(chunk_bounds[c], chunk_bounds[c + 1]):
            p = param[i]
            g = fma(weight_decay, p, grad_sign * grad[i])
            param[i] = fma(-lr, g, p)


@parallel_kernel
def sgd_momentum_step(param, momentum_buffer, grad, chunk_bounds, chunk_group, group_lr,
                      group_weight_decay, grad_sign, buffer_decay, buffer_grad_scale):
    """One SGD step with (heavy-ball) momentum, in place."""
    for c in prange(chunk_group.size):
        lr = group_lr[chunk_group[c]]
        weight_decay = group_weight_decay[chunk_group[c]]
        for i in range(chunk_bounds[c], chunk_bounds[c + 1]):
            p = param[i]
            g = fma(weight_decay, p, grad_sign * grad[i])
            b = fma(buffer_decay, momentum_buffer[i], buffer_grad_scale * g)
            momentum_buffer[i] = b
            param[i] = fma(-lr, b, p)


@parallel_kernel
def sgd_nesterov_step(param, momentum_buffer, grad, chunk_bounds, chunk_group, group_lr,
                      group_weight_decay, grad_sign, buffer_decay, buffer_grad_scale, momentum):
    """One SGD step with Nesterov momentum, in place."""
    for c in prange(chunk_group.size):
        lr = group_lr[chunk_group[c]]
        weight_decay = group_weight_decay[chunk_group[c]]
        for i in range(chunk_bounds[c], chunk_bounds[c + 1]):
            p = param[i]
            g = fma(weight_decay, p, grad_sign * grad[i])
            b = fma(buffer_decay, momentum_buffer[i], buffer_grad_scale * g)
            momentum_buffer[i] = b
            param[i] = fma(-lr, fma(momentum, b, g), p)


# ---------------------------------------------------------------------------------------------
# float64 references: same arguments, plain numpy, no FMA, results stored into the buffers.


def _gradient(param, grad, chunk_bounds, chunk_group, group_weight_decay, grad_sign):
    p, g = as_float64(param, grad)
    return p, float(grad_sign) * g + expand(group_weight_decay, chunk_bounds, chunk_group) * p


def sgd_step_reference(param, grad, chunk_bounds, chunk_group, group_lr, group_weight_decay,
                       grad_sign):
    """float64 reference of :func:`sgd_step`."""
    p, g = _gradient(param, grad, chunk_bounds, chunk_group, group_weight_decay, grad_sign)
    param[:] = p - expand(group_lr, chunk_bounds, chunk_group) * g


def sgd_momentum_step_reference(param, momentum_buffer, grad, chunk_bounds, chunk_group,
                                group_lr, group_weight_decay, grad_sign, buffer_decay,
                                buffer_grad_scale):
    """float64 reference of :func:`sgd_momentum_step`."""
    p, g = _gradient(param, grad, chunk_bounds, chunk_group, group_weight_decay, grad_sign)
    b = float(buffer_decay) * np.asarray(momentum_buffer, np.float64) + float(buffer_grad_scale) * g
    momentum_buffer[:] = b
    param[:] = p - expand(group_lr, chunk_bounds, chunk_group) * b


def sgd_nesterov_step_reference(param, momentum_buffer, grad, chunk_bounds, chunk_group,
                                group_lr, group_weight_decay, grad_sign, buffer_decay,
                                buffer_grad_scale, momentum):
    """float64 reference of :func:`sgd_nesterov_step`."""
    p, g = _gradient(param, grad, chunk_bounds, chunk_group, group_weight_decay, grad_sign)
    b = float(buffer_decay) * np.asarray(momentum_buffer, np.float64) + float(buffer_grad_scale) * g
    momentum_buffer[:] = b
    param[:] = p - expand(group_lr, chunk_bounds, chunk_group) * (g + float(momentum) * b)
