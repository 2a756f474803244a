r"""NAdam (Dozat, 2016, "Incorporating Nesterov Momentum into Adam"): PyTorch's rule
(``torch.optim.NAdam``), with coupled or decoupled weight decay.

.. math::

    g &\leftarrow s\,g + \lambda\theta \quad\text{(or, decoupled, } \theta \leftarrow \theta(1-\gamma\lambda)\text{)} \\
    m &\leftarrow m + (1-\beta_1)(g - m), \qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
    \mu_t &= \beta_1\bigl(1 - \tfrac12\, 0.96^{t\psi}\bigr), \qquad
        \Pi_t = \textstyle\prod_{i \le t} \mu_i \\
    d &= \sqrt{v / (1-\beta_2^t)} + \epsilon \\
    \theta &\leftarrow \theta - \frac{\gamma(1-\mu_t)}{1-\Pi_t}\,\frac{g}{d}
        - \frac{\gamma\mu_{t+1}}{1-\Pi_t\mu_{t+1}}\,\frac{m}{d}

:math:`\psi` is ``momentum_decay``. The host carries :math:`\Pi_t` from step to step (it
depends on every past :math:`\beta_1`, so a momentum schedule changes it) and passes
:math:`1-\mu_t`, :math:`1-\Pi_t`, :math:`\mu_{t+1}` and :math:`1-\Pi_t\mu_{t+1}` in float64;
each chunk forms the two coefficients from its group's learning rate in float64, in PyTorch's
order, and rounds each once. The two additions are PyTorch's two ``addcdiv`` (each rounded).
"""

import numpy as np

from ..elements import element
from ..primitives import mul, sqrt
from ..rule import Rule
from ._reference import adam_moments, expand
from .adam import _moments
from .common import coupled_gradient

SCALARS = ("lr", "grad_sign", "one_minus_beta1", "beta2", "one_minus_beta2", "eps", "bias_correction2",
           "one_minus_mu", "one_minus_mu_product", "mu_next", "one_minus_mu_product_next")

# chunk = (unused, weight_decay or decay factor, grad_sign, one_minus_beta1, beta2, one_minus_beta2, eps,
#          bias_correction2, grad coefficient, exp_avg coefficient), as Adam's from index 1 to 6


@element
def _coefficients(lr, scalars):
    """PyTorch's ``-lr * (1 - mu) / (1 - mu_product)`` and ``(-lr * mu_next) / (1 - mu_product_next)``,
    negated (the steps subtract: the same roundings, as negation is exact)."""
    return mul(lr, scalars[7]) / scalars[8], mul(lr, scalars[9]) / scalars[10]


@element
def nadam_chunk(param, group, scalars):
    t = param.dtype.type
    lr, grad_sign, one_minus_beta1, beta2, one_minus_beta2, eps, bias_correction2 = (
        scalars[0], scalars[1], scalars[2], scalars[3], scalars[4], scalars[5], scalars[6])
    grad_coefficient, avg_coefficient = _coefficients(lr * group[0], scalars)
    return (t(0.0), t(group[1]), t(grad_sign), t(one_minus_beta1), t(beta2), t(one_minus_beta2), t(eps),
            t(bias_correction2), t(grad_coefficient), t(avg_coefficient))


@element
def nadamw_chunk(param, group, scalars):
    t = param.dtype.type
    lr, grad_sign, one_minus_beta1, beta2, one_minus_beta2, eps, bias_correction2 = (
        scalars[0], scalars[1], scalars[2], scalars[3], scalars[4], scalars[5], scalars[6])
    lr = lr * group[0]
    grad_coefficient, avg_coefficient = _coefficients(lr, scalars)
    return (t(0.0), t(1.0 - mul(lr, group[1])), t(grad_sign), t(one_minus_beta1), t(beta2), t(one_minus_beta2),
            t(eps), t(bias_correction2), t(grad_coefficient), t(avg_coefficient))


@element
def _step(p, g, m, v, chunk):
    eps, bias_correction2, grad_coefficient, avg_coefficient = chunk[6], chunk[7], chunk[8], chunk[9]
    denom = sqrt(v / bias_correction2) + eps
    p = p - grad_coefficient * g / denom
    return p - avg_coefficient * m / denom


@element
def nadam(p, state, g, chunk):
    g = coupled_gradient(p, g, chunk[1], chunk[2])
    m, v = _moments(state[0], state[1], g, chunk)
    return _step(p, g, m, v, chunk), (m, v)


@element
def nadamw(p, state, g, chunk):
    # mul: the decayed parameter is not fused into the additions (NVVM would)
    g = mul(chunk[2], g)
    m, v = _moments(state[0], state[1], g, chunk)
    return _step(mul(p, chunk[1]), g, m, v, chunk), (m, v)


def reference(param, state, grad, bounds, groups, table, scalars, decoupled=False):
    """float64 reference of NAdam (the arguments of the kernels)."""
    dtype = param.dtype
    lr = float(scalars[0])
    grad_sign, one_minus_beta1, beta2, one_minus_beta2, eps, bias_correction2 = (
        float(np.asarray(s).astype(dtype)) for s in scalars[1:7])
    one_minus_mu, one_minus_mu_product, mu_next, one_minus_mu_product_next = (float(s) for s in scalars[7:11])
    p, g, m, v = adam_moments(param, state, grad, bounds, groups, table, lr, grad_sign, one_minus_beta1, beta2,
                              one_minus_beta2, decoupled)
    group_lr = lr * table[:, 0]
    grad_coefficient = expand((group_lr * one_minus_mu / one_minus_mu_product).astype(dtype), bounds, groups)
    avg_coefficient = expand((group_lr * mu_next / one_minus_mu_product_next).astype(dtype), bounds, groups)
    state[0], state[1] = m, v
    denom = np.sqrt(v / bias_correction2) + eps
    param[:] = p - grad_coefficient * g / denom - avg_coefficient * m / denom


def _nadamw_reference(*arguments):
    reference(*arguments, decoupled=True)


RULES = (
    Rule("nadam_step", ("exp_avg", "exp_avg_sq"), ("lr_factor", "weight_decay"), SCALARS, nadam_chunk, nadam,
         reference),
    Rule("nadamw_step", ("exp_avg", "exp_avg_sq"), ("lr_factor", "weight_decay"), SCALARS, nadamw_chunk, nadamw,
         _nadamw_reference),
)
