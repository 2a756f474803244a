r"""Adam and AdamW, with and without AMSGrad: PyTorch's rule (``torch.optim.Adam``/``AdamW``,
``foreach=False``).

.. math::

    g &\leftarrow s\,g + \lambda\theta \quad\text{(Adam; } s=\pm1 \text{ for maximize)} \\
    \theta &\leftarrow \theta\,(1 - \gamma\lambda) \quad\text{(AdamW, instead)} \\
    m &\leftarrow m + (1-\beta_1)(g - m) \\
    v &\leftarrow \beta_2 v + (1-\beta_2) g^2 \\
    \hat v &\leftarrow \max(\hat v, v) \quad\text{(AMSGrad)} \\
    \theta &\leftarrow \theta - \frac{\gamma}{1-\beta_1^t}\,
        \frac{m}{\sqrt{\hat v}/\sqrt{1-\beta_2^t} + \epsilon}

The host passes the bias corrections :math:`1-\beta_1^t` and :math:`\sqrt{1-\beta_2^t}` as
float64 scalars; each chunk divides its group's learning rate by the first in float64 and
rounds the step size :math:`\gamma/(1-\beta_1^t)` once to the buffer's dtype, and AdamW's
factor :math:`1 - \gamma\lambda` likewise, exactly as the host would. The two multiply-adds
of the moments and the final update are single-rounding FMAs.
"""

import numpy as np

from ..elements import element
from ..primitives import fma, mul, sqrt
from ..rule import Rule
from ._reference import adam_moments, expand
from .common import coupled_gradient

SCALARS = ("lr", "bias_correction1", "grad_sign", "one_minus_beta1", "beta2", "one_minus_beta2", "eps",
           "bias_correction2_sqrt")
GROUP = ("lr_factor", "weight_decay")

# chunk = (step_size, weight_decay or decay, grad_sign, one_minus_beta1, beta2, one_minus_beta2, eps,
#          bias_correction2_sqrt), all in the buffer's dtype


@element
def adam_chunk(param, group, scalars):
    """The step size ``lr_k / (1 - beta1**t)`` and the coupled weight decay, and the scalars."""
    t = param.dtype.type
    lr, bias_correction1, grad_sign, one_minus_beta1, beta2, one_minus_beta2, eps, bc2_sqrt = scalars
    return (t(lr * group[0] / bias_correction1), t(group[1]), t(grad_sign), t(one_minus_beta1), t(beta2),
            t(one_minus_beta2), t(eps), t(bc2_sqrt))


@element
def adamw_chunk(param, group, scalars):
    """The step size and the decoupled decay factor ``1 - lr_k * lambda``, and the scalars."""
    t = param.dtype.type
    lr, bias_correction1, grad_sign, one_minus_beta1, beta2, one_minus_beta2, eps, bc2_sqrt = scalars
    lr = lr * group[0]
    return (t(lr / bias_correction1), t(1.0 - mul(lr, group[1])), t(grad_sign), t(one_minus_beta1), t(beta2),
            t(one_minus_beta2), t(eps), t(bc2_sqrt))


@element
def _moments(m, v, g, chunk):
    # (1 - beta2) * g * g in torch's order: a gradient whose square overflows but whose
    # (1 - beta2) * g * g does not (|g| from about 1.8e19 in float32) keeps v finite.
    one_minus_beta1, beta2, one_minus_beta2 = chunk[3], chunk[4], chunk[5]
    return fma(one_minus_beta1, g - m, m), fma(beta2, v, (one_minus_beta2 * g) * g)


@element
def _running_max(current, candidate):
    # NaN-propagating maximum, like torch.maximum: a NaN on either side wins.
    if candidate > current or candidate != candidate:
        return candidate
    return current


@element
def _step(p, m, v, chunk):
    step_size, eps, bias_correction2_sqrt = chunk[0], chunk[6], chunk[7]
    return fma(-step_size, m / (sqrt(v) / bias_correction2_sqrt + eps), p)


@element
def _coupled_moments(p, state, g, chunk):
    return _moments(state[0], state[1], coupled_gradient(p, g, chunk[1], chunk[2]), chunk)


@element
def _decayed_moments(p, state, g, chunk):
    return p * chunk[1], _moments(state[0], state[1], mul(chunk[2], g), chunk)


@element
def adam(p, state, g, chunk):
    m, v = _coupled_moments(p, state, g, chunk)
    return _step(p, m, v, chunk), (m, v)


@element
def adam_amsgrad(p, state, g, chunk):
    m, v = _coupled_moments(p, state, g, chunk)
    v_max = _running_max(state[2], v)
    return _step(p, m, v_max, chunk), (m, v, v_max)


@element
def adamw(p, state, g, chunk):
    p, (m, v) = _decayed_moments(p, state, g, chunk)
    return _step(p, m, v, chunk), (m, v)


@element
def adamw_amsgrad(p, state, g, chunk):
    p, (m, v) = _decayed_moments(p, state, g, chunk)
    v_max = _running_max(state[2], v)
    return _step(p, m, v_max, chunk), (m, v, v_max)


def reference(param, state, grad, bounds, groups, table, scalars, decoupled=False):
    """float64 reference of every Adam rule (the arguments of the kernels); AMSGrad when
    ``state`` has three rows."""
    dtype = param.dtype
    lr, bias_correction1 = float(scalars[0]), float(scalars[1])
    grad_sign, one_minus_beta1, beta2, one_minus_beta2, eps, bc2_sqrt = (
        float(np.asarray(s).astype(dtype)) for s in scalars[2:])
    p, g, m, v = adam_moments(param, state, grad, bounds, groups, table, lr, grad_sign, one_minus_beta1, beta2,
                              one_minus_beta2, decoupled)
    step_size = expand((lr * table[:, 0] / bias_correction1).astype(dtype), bounds, groups)
    v_hat = v
    if state.shape[0] == 3:
        v_hat = np.fmax(state[2].astype(np.float64), v)
        v_hat[np.isnan(v) | np.isnan(state[2])] = np.nan
        state[2] = v_hat
    param[:] = p - step_size * m / (np.sqrt(v_hat) / bc2_sqrt + eps)
    state[0], state[1] = m, v


def _adamw_reference(*arguments):
    reference(*arguments, decoupled=True)


RULES = (
    Rule("adam_step", ("exp_avg", "exp_avg_sq"), GROUP, SCALARS, adam_chunk, adam, reference),
    Rule("adam_amsgrad_step", ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), GROUP, SCALARS, adam_chunk,
         adam_amsgrad, reference),
    Rule("adamw_step", ("exp_avg", "exp_avg_sq"), GROUP, SCALARS, adamw_chunk, adamw, _adamw_reference),
    Rule("adamw_amsgrad_step", ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), GROUP, SCALARS, adamw_chunk,
         adamw_amsgrad, _adamw_reference),
)
