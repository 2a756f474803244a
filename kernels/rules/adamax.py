r"""Adamax (Kingma & Ba, 2015, section 7.1): PyTorch's rule (``torch.optim.Adamax``).

.. math::

    g &\leftarrow s\,g + \lambda\theta \\
    m &\leftarrow m + (1-\beta_1)(g - m) \\
    u &\leftarrow \max(\beta_2 u,\ |g| + \epsilon) \\
    \theta &\leftarrow \theta - \frac{\gamma}{1-\beta_1^t}\,\frac{m}{u}

``eps`` is added to :math:`|g|` inside the maximum, as PyTorch does (the paper has no
:math:`\epsilon`). The maximum propagates a NaN from either side, like ``torch.maximum``. The
host passes :math:`1-\beta_1^t` in float64; each chunk divides its group's learning rate by it
in float64 and rounds once. The moment's update and the step are single-rounding FMAs.
"""

import numpy as np

from ..elements import element
from ..primitives import fma
from ..rule import Rule
from ._reference import as_float64, expand
from ._reference import coupled_gradient as reference_gradient
from .adam import _running_max
from .common import coupled_gradient

SCALARS = ("lr", "bias_correction1", "grad_sign", "one_minus_beta1", "beta2", "eps")


@element
def adamax_chunk(param, group, scalars):
    """``(lr_k / (1 - beta1**t), weight_decay, grad_sign, one_minus_beta1, beta2, eps)`` in
    the buffer's dtype."""
    t = param.dtype.type
    lr, bias_correction1, grad_sign, one_minus_beta1, beta2, eps = scalars
    return t(lr * group[0] / bias_correction1), t(group[1]), t(grad_sign), t(one_minus_beta1), t(beta2), t(eps)


@element
def adamax(p, state, g, chunk):
    g = coupled_gradient(p, g, chunk[1], chunk[2])
    m = fma(chunk[3], g - state[0], state[0])
    u = _running_max(abs(g) + chunk[5], chunk[4] * state[1])
    return fma(-chunk[0], m / u, p), (m, u)


def reference(param, state, grad, bounds, groups, table, scalars):
    """float64 reference of Adamax (the arguments of the kernel)."""
    dtype = param.dtype
    lr, bias_correction1 = float(scalars[0]), float(scalars[1])
    grad_sign, one_minus_beta1, beta2, eps = (float(np.asarray(s).astype(dtype)) for s in scalars[2:])
    p, g = reference_gradient(param, grad, table, bounds, groups, grad_sign, dtype)
    m, u = as_float64(state[0], state[1])
    m = m + one_minus_beta1 * (g - m)
    decayed, candidate = beta2 * u, np.abs(g) + eps
    u = np.fmax(decayed, candidate)
    u[np.isnan(decayed) | np.isnan(candidate)] = np.nan
    state[0], state[1] = m, u
    step_size = expand((lr * table[:, 0] / bias_correction1).astype(dtype), bounds, groups)
    param[:] = p - step_size * m / u


RULES = (Rule("adamax_step", ("exp_avg", "exp_inf"), ("lr_factor", "weight_decay"), SCALARS, adamax_chunk, adamax,
              reference),)
