r"""Adafactor (Shazeer and Stern, 2018), as torch.optim.Adafactor (torch 2.13) computes it.

Per parameter tensor, at step :math:`t` (:math:`g \leftarrow s\,g`, :math:`s = -1` to maximize):

.. math::

    \hat\beta_t &= t^{\tau}, \qquad \rho_t = \min(\gamma, 1/\sqrt t), \qquad
        \alpha_t = \max(\epsilon_2, \mathrm{RMS}(\theta_{t-1}))\,\rho_t \\
    R &\leftarrow \mathrm{lerp}(R, \mathrm{mean}_{\text{cols}}(g^2), \hat\beta_t), \quad
    C \leftarrow \mathrm{lerp}(C, \mathrm{mean}_{\text{rows}}(g^2), \hat\beta_t), \quad
    \hat V = \frac{R\,C}{\max(\mathrm{mean}(R), \epsilon_1)}
        \quad\text{(tensors of 2 or more dimensions, over the last two)} \\
    V &\leftarrow \mathrm{lerp}(V, g^2, \hat\beta_t), \quad \hat V = V \quad\text{(vectors)} \\
    U &= g / \sqrt{\max(\hat V, \epsilon_1^2)}, \qquad
    \theta_t = \theta_{t-1}(1 - \gamma\lambda) - \frac{\alpha_t}{\max(1, \mathrm{RMS}(U)/d)}\,U

with :math:`\epsilon_1` the dtype's machine epsilon unless given, and ``lerp`` torch's (an FMA
from the nearer end). The sums (:math:`\sum\theta^2`, the row and column sums of :math:`g^2`,
:math:`\sum U^2`, :math:`\sum R`) are float64 in a fixed order (see :mod:`..factored`); the
per-tensor step size :math:`\alpha_t / \max(\cdot)` and :math:`1 - \gamma\lambda` are formed in
float64 and rounded once, as torch forms them in Python; the rest is per element in the
buffer's dtype, written once for both targets.
"""

import math

import numpy as np
from numba import float64

from ..elements import element
from ..primitives import fma, mul, sqrt
from ..rule import Factored, Rule
from .common import lerp

SCALARS = ("lr", "grad_sign", "one_minus_beta2", "inverse_sqrt_step", "eps1", "eps2", "d")


@element
def adafactor_chunk(param, group, scalars):
    """``(1 - lr_k * weight_decay, grad_sign, w, 1 - w, eps1, eps1**2, 1)`` in the buffer's dtype
    (``w`` the interpolation weight ``t**beta2_decay``, ``1 - w`` formed in that dtype from the
    rounded weight, as torch's lerp does; ``eps1**2`` squared in float64 and rounded once, as
    torch squares the Python float)."""
    t = param.dtype.type
    lr = scalars[0] * group[0]
    weight = t(scalars[2])
    return (t(1.0 - mul(lr, group[1])), t(scalars[1]), weight, t(1.0) - weight, t(scalars[4]),
            t(mul(scalars[4], scalars[4])), t(1.0))


@element
def adafactor_variance(v, g, chunk):
    """A vector's second moment: ``lerp(v, g**2, w)`` (``g`` signed)."""
    g = mul(chunk[1], g)
    return lerp(v, mul(g, g), chunk[2], chunk[3])


@element
def adafactor_factor(value, mean_square, chunk):
    """A row or column factor: ``lerp(value, mean of g**2 over the row or column, w)`` (the
    mean rounded to the buffer's dtype)."""
    return lerp(value, mean_square, chunk[2], chunk[3])


@element
def adafactor_row_mean(mean, chunk):
    """A matrix's mean row factor, clamped below at ``eps1`` (torch's ``clamp_(min=eps1)``)."""
    return max(mean, chunk[4])


@element
def adafactor_direction(g, estimate, chunk):
    """``U = g / sqrt(max(V, eps1**2))`` as torch: ``g * rsqrt(...)`` (``rsqrt`` as ``1/sqrt``)."""
    return mul(mul(chunk[1], g), chunk[6] / sqrt(max(estimate, chunk[5])))


@element
def adafactor_estimate(row, col, row_mean):
    """A factored tensor's second moment at one element: ``R C / max(mean(R), eps1)`` (the mean
    already clamped), as ``(R / mean) C``: the division is the row's, once per row where the
    loop hoists it (torch divides the product: the two differ by a rounding)."""
    return mul(row / row_mean, col)


@element
def adafactor_alpha(param_squares, numel, lr, inverse_sqrt_step, eps2):
    """``alpha_t = max(eps2, RMS(theta)) * min(lr_k, 1/sqrt(t))`` in float64."""
    return max(eps2, sqrt(param_squares) / sqrt(float64(numel))) * min(lr, inverse_sqrt_step)


@element
def adafactor_step_size(alpha, direction_squares, numel, d):
    """``alpha_t / max(1, RMS(U)/d)`` in float64."""
    return alpha / max(1.0, sqrt(direction_squares) / (sqrt(float64(numel)) * d))


@element
def adafactor_step(p, u, chunk, step_size):
    """``theta (1 - lr_k lambda) - step_size U``: torch's ``mul_`` then ``add_``."""
    return fma(-step_size, u, mul(p, chunk[0]))


def _lerp64(start, end, weight):
    return start + weight * (end - start)


def reference(param, grad, factors, shapes, groups, table, scalars):
    """float64 reference: ``param`` (1-D) stepped in place over tensors of ``shapes`` (in
    order), ``factors`` the :class:`~..factored.FactorLayout` state buffer (row factors, column
    factors, vectors' variances, in tensor order), ``groups`` each tensor's group (-1: left
    alone). The scalars' dtype-rounded values, as the kernels take them."""
    dtype = param.dtype.type
    lr, grad_sign, weight, inverse_sqrt_step, eps1, eps2, d = scalars
    weight, eps1, eps1_squared = float(dtype(weight)), float(dtype(eps1)), float(dtype(eps1 * eps1))
    p_all, g_all = param.astype(np.float64), grad.astype(np.float64) * grad_sign
    out = p_all.copy()
    sizes = [math.prod(shape) for shape in shapes]
    row_total = sum(math.prod(s[:-1]) for s in shapes if len(s) >= 2)
    col_total = sum(math.prod(s[:-2]) * s[-1] for s in shapes if len(s) >= 2)
    sections = factors[:row_total], factors[row_total:row_total + col_total], factors[row_total + col_total:]
    offsets = [0, 0, 0]
    start = 0
    for shape, size, group in zip(shapes, sizes, groups):
        p, g = p_all[start:start + size].reshape(shape), g_all[start:start + size].reshape(shape)
        if len(shape) >= 2:
            rows, cols = math.prod(shape[:-1]), math.prod(shape[:-2]) * shape[-1]
            row = sections[0][offsets[0]:offsets[0] + rows].reshape(*shape[:-1], 1)
            col = sections[1][offsets[1]:offsets[1] + cols].reshape(*shape[:-2], 1, shape[-1])
            offsets[0] += rows
            offsets[1] += cols
        else:
            variance = sections[2][offsets[2]:offsets[2] + size].reshape(shape)
            offsets[2] += size
        if group < 0 or size == 0:
            start += size
            continue
        lr_k = lr * table[group, 0]
        alpha = max(eps2, math.sqrt(np.sum(p * p)) / math.sqrt(size)) * min(lr_k, inverse_sqrt_step)
        if len(shape) >= 2:
            new_row = _lerp64(row.astype(np.float64), np.mean(g * g, axis=-1, keepdims=True), weight)
            new_col = _lerp64(col.astype(np.float64), np.mean(g * g, axis=-2, keepdims=True), weight)
            row[...], col[...] = new_row, new_col
            estimate = new_row * new_col / np.maximum(np.mean(new_row, axis=-2, keepdims=True), eps1)
        else:
            new_variance = _lerp64(variance.astype(np.float64), g * g, weight)
            variance[...] = new_variance
            estimate = new_variance
        u = g / np.sqrt(np.maximum(estimate, eps1_squared))
        step_size = alpha / max(1.0, math.sqrt(np.sum(u * u)) / (math.sqrt(size) * d))
        decay = 1.0 - lr_k * table[group, 1]
        out[start:start + size] = (p * decay - step_size * u).reshape(-1)
        start += size
    param[:] = out


RULES = (
    Rule("adafactor_step", (), ("lr_factor", "weight_decay"), SCALARS, adafactor_chunk, adafactor_variance,
         reference, factored=Factored(adafactor_factor, adafactor_row_mean, adafactor_estimate, adafactor_direction, adafactor_alpha,
                                      adafactor_step_size, adafactor_step)),
)
