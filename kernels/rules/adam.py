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

Scalars: ``lr`` and ``bias_correction1`` (:math:`1-\beta_1^t`) in float64; each chunk divides
its group's learning rate by the bias correction in float64 and rounds the step size
:math:`\gamma/(1-\beta_1^t)` once to the buffer's dtype, and AdamW's factor
:math:`1 - \gamma\lambda` likewise, exactly as the host would. ``bias_correction2_sqrt``
(:math:`\sqrt{1-\beta_2^t}`) is derived on the host in float64 and rounded once. The two
multiply-adds of the moments and the final update are single-rounding FMAs.
"""

import numpy as np

from ..elements import element
from ..primitives import fma, mul, sqrt
from ..rule import Rule, Scalar
from ._reference import as_float64, expand
from .common import coupled_gradient

SCALARS = (Scalar("lr", "float64"), Scalar("bias_correction1", "float64"), Scalar("grad_sign"),
           Scalar("one_minus_beta1"), Scalar("beta2"), Scalar("one_minus_beta2"), Scalar("eps"),
           Scalar("bias_correction2_sqrt"))
GROUP = ("lr_factor", "weight_decay")


@element
def adam_chunk(param, group, scalars):
    """Step size ``lr_k / (1 - beta1**t)`` and the coupled weight decay, in the dtype."""
    dtype = param.dtype.type
    return dtype(scalars[0] * group[0] / scalars[1]), dtype(group[1])


@element
def adamw_chunk(param, group, scalars):
    """Step size and the decoupled decay factor ``1 - lr_k * lambda``, in the dtype."""
    dtype = param.dtype.type
    lr = scalars[0] * group[0]
    return dtype(lr / scalars[1]), dtype(1.0 - mul(lr, group[1]))


@element
def _moments(m, v, g, scalars):
    one_minus_beta1, beta2, one_minus_beta2 = scalars[3], scalars[4], scalars[5]
    return fma(one_minus_beta1, g - m, m), fma(beta2, v, one_minus_beta2 * (g * g))


@element
def _running_max(current, candidate):
    # NaN-propagating maximum, like torch.maximum: a NaN on either side wins.
    if candidate > current or candidate != candidate:
        return candidate
    return current


@element
def _step(p, m, v, step_size, scalars):
    eps, bias_correction2_sqrt = scalars[6], scalars[7]
    return fma(-step_size, m / (sqrt(v) / bias_correction2_sqrt + eps), p)


@element
def adam(p, state, g, chunk, scalars):
    step_size, weight_decay = chunk
    m, v = _moments(state[0], state[1], coupled_gradient(p, g, weight_decay, scalars[2]), scalars)
    return _step(p, m, v, step_size, scalars), (m, v)


@element
def adam_amsgrad(p, state, g, chunk, scalars):
    step_size, weight_decay = chunk
    m, v = _moments(state[0], state[1], coupled_gradient(p, g, weight_decay, scalars[2]), scalars)
    v_max = _running_max(state[2], v)
    return _step(p, m, v_max, step_size, scalars), (m, v, v_max)


@element
def adamw(p, state, g, chunk, scalars):
    step_size, decay = chunk
    p = p * decay
    m, v = _moments(state[0], state[1], mul(scalars[2], g), scalars)
    return _step(p, m, v, step_size, scalars), (m, v)


@element
def adamw_amsgrad(p, state, g, chunk, scalars):
    step_size, decay = chunk
    p = p * decay
    m, v = _moments(state[0], state[1], mul(scalars[2], g), scalars)
    v_max = _running_max(state[2], v)
    return _step(p, m, v_max, step_size, scalars), (m, v, v_max)


def reference(param, state, grad, bounds, groups, table, scalars, decoupled=False):
    """float64 reference of every Adam rule (the arguments of the kernels); AMSGrad when
    ``state`` has three rows."""
    dtype = param.dtype
    lr, bias_correction1, grad_sign, one_minus_beta1, beta2, one_minus_beta2, eps, bc2_sqrt = map(float, scalars)
    p, m, v, g = as_float64(param, state[0], state[1], grad)
    group_lr = float(lr) * table[:, 0]
    step_size = expand((group_lr / bias_correction1).astype(dtype), bounds, groups)
    g = grad_sign * g
    if decoupled:
        p = p * expand((1.0 - group_lr * table[:, 1]).astype(dtype), bounds, groups)
    else:
        g = g + expand(table[:, 1].astype(dtype), bounds, groups) * p
    m = m + one_minus_beta1 * (g - m)
    v = beta2 * v + one_minus_beta2 * g * g
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
