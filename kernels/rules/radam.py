r"""RAdam (Liu et al., 2020, "On the Variance of the Adaptive Learning Rate and Beyond"):
PyTorch's rule (``torch.optim.RAdam``), with coupled or decoupled weight decay.

.. math::

    g &\leftarrow s\,g + \lambda\theta \quad\text{(or, decoupled, } \theta \leftarrow \theta(1-\gamma\lambda)\text{)} \\
    m &\leftarrow m + (1-\beta_1)(g - m), \qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
    \rho_\infty &= \frac{2}{1-\beta_2} - 1, \qquad
        \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1-\beta_2^t} \\
    \theta &\leftarrow \theta - \frac{m}{1-\beta_1^t}\,\gamma\,
        \frac{\sqrt{1-\beta_2^t}}{\sqrt v + \epsilon}\,r_t \quad\text{where } \rho_t > 5,
        \qquad r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}} \\
    \theta &\leftarrow \theta - \frac{m}{1-\beta_1^t}\,\gamma \quad\text{otherwise (the first steps)}

The host computes :math:`\rho_t` and :math:`r_t` in float64 (one decision per step, the same
for every element) and passes ``rect = 0`` for the un-rectified steps. The products are taken
in PyTorch's order, each rounded, and none is fused into the final subtraction (``mul``).
"""

import numpy as np

from ..elements import element
from ..primitives import mul, sqrt
from ..rule import Rule
from ._reference import adam_moments, expand
from .adam import _coupled_moments, _moments

SCALARS = ("lr", "bias_correction1", "grad_sign", "one_minus_beta1", "beta2", "one_minus_beta2", "eps",
           "bias_correction2_sqrt", "rect")

# chunk = (lr_k, weight_decay or decay factor, grad_sign, one_minus_beta1, beta2, one_minus_beta2, eps,
#          bias_correction1, bias_correction2_sqrt, rect), as Adam's from index 1 to 6


@element
def radam_chunk(param, group, scalars):
    t = param.dtype.type
    lr, bias_correction1, grad_sign, one_minus_beta1, beta2, one_minus_beta2, eps, bc2_sqrt, rect = scalars
    return (t(lr * group[0]), t(group[1]), t(grad_sign), t(one_minus_beta1), t(beta2), t(one_minus_beta2),
            t(eps), t(bias_correction1), t(bc2_sqrt), t(rect))


@element
def radamw_chunk(param, group, scalars):
    t = param.dtype.type
    lr, bias_correction1, grad_sign, one_minus_beta1, beta2, one_minus_beta2, eps, bc2_sqrt, rect = scalars
    lr = lr * group[0]
    return (t(lr), t(1.0 - mul(lr, group[1])), t(grad_sign), t(one_minus_beta1), t(beta2), t(one_minus_beta2),
            t(eps), t(bias_correction1), t(bc2_sqrt), t(rect))


@element
def _step(p, m, v, chunk):
    lr, eps, bias_correction1, bc2_sqrt, rect = chunk[0], chunk[6], chunk[7], chunk[8], chunk[9]
    update = mul(m / bias_correction1, lr)
    rectified = mul(mul(update, bc2_sqrt / (sqrt(v) + eps)), rect)
    # A select, not a branch: the loop stays vectorised (the rectified term, computed on the
    # first steps too, is then dropped).
    return p - (rectified if rect > 0 else update)


@element
def radam(p, state, g, chunk):
    m, v = _coupled_moments(p, state, g, chunk)
    return _step(p, m, v, chunk), (m, v)


@element
def radamw(p, state, g, chunk):
    # mul: the decayed parameter is not fused into the final subtraction (NVVM would)
    m, v = _moments(state[0], state[1], mul(chunk[2], g), chunk)
    return _step(mul(p, chunk[1]), m, v, chunk), (m, v)


def reference(param, state, grad, bounds, groups, table, scalars, decoupled=False):
    """float64 reference of RAdam (the arguments of the kernels)."""
    dtype = param.dtype
    lr = float(scalars[0])
    (bias_correction1, grad_sign, one_minus_beta1, beta2, one_minus_beta2, eps, bc2_sqrt,
     rect) = (float(np.asarray(s).astype(dtype)) for s in scalars[1:])
    p, g, m, v = adam_moments(param, state, grad, bounds, groups, table, lr, grad_sign, one_minus_beta1, beta2,
                              one_minus_beta2, decoupled)
    group_lr = expand((lr * table[:, 0]).astype(dtype), bounds, groups)
    state[0], state[1] = m, v
    update = m / bias_correction1 * group_lr
    if rect > 0:
        update = update * (bc2_sqrt / (np.sqrt(v) + eps)) * rect
    param[:] = p - update


def _radamw_reference(*arguments):
    reference(*arguments, decoupled=True)


RULES = (
    Rule("radam_step", ("exp_avg", "exp_avg_sq"), ("lr_factor", "weight_decay"), SCALARS, radam_chunk, radam,
         reference),
    Rule("radamw_step", ("exp_avg", "exp_avg_sq"), ("lr_factor", "weight_decay"), SCALARS, radamw_chunk, radamw,
         _radamw_reference),
)
