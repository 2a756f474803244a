r"""LAMB (You et al., 2020, "Large Batch Optimization for Deep Learning: Training BERT in 76
minutes", Algorithm 2, with bias correction), per parameter tensor.

.. math::

    m &\leftarrow m + (1-\beta_1)(g - m), \qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2
        \quad (g \leftarrow s\,g;\ s = -1 \text{ to maximize}) \\
    u &= \frac{m / (1-\beta_1^t)}{\sqrt{v / (1-\beta_2^t)} + \epsilon} + \lambda\theta \\
    \theta &\leftarrow \theta - \gamma\,\frac{\lVert\theta\rVert}{\lVert u\rVert}\,u
        \quad\text{per tensor, the ratio 1 where either norm is 0}

The norms are of each parameter tensor (a name of the :class:`~fastopt.FlatParams`), summed in
float64 in the fixed order of :mod:`..tensorwise`. The first pass stores ``m`` and ``v`` and
sums :math:`\theta^2` and :math:`u^2`; the second computes ``u`` again from the stored state
(the same bits) and steps by ``lr_k * ratio``, formed in float64 and rounded once. The bias
corrections are applied as reciprocals, so each pass divides once per element.
"""

import math

import numpy as np

from numba import float64

from ..elements import element
from ..primitives import fma, mul, sqrt
from ..rule import Rule, Tensorwise
from ._reference import as_float64, expand
from .adam import _moments

SCALARS = ("lr", "grad_sign", "one_minus_beta1", "beta2", "one_minus_beta2", "eps", "bias_correction1",
           "bias_correction2")

# chunk = (unused, weight_decay, grad_sign, one_minus_beta1, beta2, one_minus_beta2, eps,
#          1 / bias_correction1, 1 / bias_correction2), as Adam's from index 1 to 6


@element
def lamb_chunk(param, group, scalars):
    """The scalars in the buffer's dtype, the bias corrections as their reciprocals (formed in
    float64 and rounded once): the direction, computed in both passes, then divides once."""
    t = param.dtype.type
    return (t(0.0), t(group[1]), t(scalars[1]), t(scalars[2]), t(scalars[3]), t(scalars[4]), t(scalars[5]),
            t(1.0 / scalars[6]), t(1.0 / scalars[7]))


@element
def _direction(p, m, v, chunk):
    weight_decay, eps, inverse_correction1, inverse_correction2 = chunk[1], chunk[6], chunk[7], chunk[8]
    return fma(weight_decay, p, (m * inverse_correction1) / (sqrt(v * inverse_correction2) + eps))


@element
def lamb_update(p, state, g, chunk):
    m, v = _moments(state[0], state[1], chunk[2] * g, chunk)
    return _direction(p, m, v, chunk), (m, v)


@element
def lamb_direction(p, state, chunk):
    return _direction(p, state[0], state[1], chunk)


@element
def lamb_ratio(param_squares, direction_squares):
    """``||theta|| / ||u||``, 1 where either is 0 (a NaN or inf reaches the step)."""
    if param_squares == 0.0 or direction_squares == 0.0:
        return 1.0
    return sqrt(param_squares) / sqrt(direction_squares)


@element
def lamb_scale(param, group, scalars, ratio):
    """The step size ``lr_k * ratio``: rounded to the buffer's dtype, and in float64 for the
    tiles where that rounding overflows (a tensor whose direction shrank to subnormals while
    its norm did not: the ratio then exceeds float32's range, the step ``lr_k * ||theta||``
    does not)."""
    step_size = scalars[0] * group[0] * ratio
    return param.dtype.type(step_size), step_size


@element
def lamb_step(p, u, scale):
    rounded, exact = scale
    if rounded - rounded == 0:  # finite: the usual case, one fma in the buffer's dtype
        return fma(-rounded, u, p)
    # in float64 (stored rounded once); mul: no target fuses it into the subtraction
    return float64(p) - mul(exact, float64(u))


def reference(param, state, grad, bounds, groups, table, scalars, tensors=None):
    """float64 reference of LAMB (the arguments of the kernel, and ``tensors``: the tile
    tensor indices of the tile table). Tiles of group -1 are left alone."""
    dtype = param.dtype
    lr = float(scalars[0])
    grad_sign, one_minus_beta1, beta2, one_minus_beta2, eps = (float(np.asarray(s).astype(dtype)) for s in scalars[1:6])
    inverse1, inverse2 = (float(np.asarray(1.0 / s).astype(dtype)) for s in scalars[6:8])
    p, m, v, g = as_float64(param, state[0], state[1], grad)
    decay = expand(table[:, 1].astype(dtype), bounds, groups)
    m_new = m + one_minus_beta1 * (grad_sign * g - m)
    v_new = beta2 * v + one_minus_beta2 * (grad_sign * g) ** 2
    u = m_new * inverse1 / (np.sqrt(v_new * inverse2) + eps) + decay * p
    tile_tensor = np.zeros(len(groups), dtype=np.int64) if tensors is None else tensors
    out_p, out_m, out_v = p.copy(), m.copy(), v.copy()
    for k in np.unique(tile_tensor):
        tiles = [t for t in range(len(groups)) if tile_tensor[t] == k and groups[t] >= 0]
        if not tiles:
            continue
        index = np.concatenate([np.arange(int(bounds[t]), int(bounds[t + 1])) for t in tiles])
        theta_norm, u_norm = math.sqrt(np.sum(p[index] ** 2)), math.sqrt(np.sum(u[index] ** 2))
        ratio = theta_norm / u_norm if theta_norm > 0 and u_norm > 0 else 1.0
        exact = np.asarray([lr * table[groups[t], 0] * ratio for t in tiles])
        with np.errstate(over="ignore"):
            rounded = exact.astype(dtype).astype(np.float64)
        step = np.where(np.isfinite(rounded), rounded, exact)  # float64 where the dtype overflows
        sizes = [int(bounds[t + 1] - bounds[t]) for t in tiles]
        out_p[index] = p[index] - np.repeat(step, sizes) * u[index]
        out_m[index], out_v[index] = m_new[index], v_new[index]
    param[:] = out_p
    state[0], state[1] = out_m, out_v


RULES = (
    Rule("lamb_step", ("exp_avg", "exp_avg_sq"), ("lr_factor", "weight_decay"), SCALARS, lamb_chunk, lamb_update,
         reference, Tensorwise(lamb_direction, lamb_ratio, lamb_scale, lamb_step)),
)
