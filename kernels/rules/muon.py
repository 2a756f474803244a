r"""Muon (Jordan et al., 2024; torch.optim.Muon's rule), per parameter matrix.

.. math::

    B &\leftarrow B + (1-\mu)(g - B), \qquad
        \tilde B = g + \mu (B - g) \ \text{(Nesterov)} \ \text{or} \ B \\
    O &= \mathrm{NS}^{(a,b,c)}_k(\tilde B;\ \epsilon), \qquad
    \theta \leftarrow \theta\,(1 - \gamma\lambda) - \gamma\,r(A, B)\,O

(the momentum and the Nesterov direction as torch's ``lerp``), with ``NS`` the quintic
Newton-Schulz iteration of torch: ``X = M / max(||M||_F, eps)`` (transposed while it has more
rows than columns), then ``k`` times ``G = X X^T; X = a X + (b G + c G G) X``. ``r`` is
torch's ``adjust_lr_fn``: ``sqrt(max(1, A/B))`` ("original", the default) or ``0.2
sqrt(max(A, B))`` ("match_rms_adamw") for an ``A x B`` matrix.

The momentum and the step are element source (both targets); the iteration runs on BLAS over
the matrices of the scratch buffer, in the parameters' dtype, or, with ``bfloat16``, as torch
runs it: every product and sum rounded to bfloat16 (computed in float32, rounded to nearest
even), which :func:`round_bfloat16` emulates with NumPy or CuPy.
"""

import numpy as np

from ..elements import element
from ..matrixwise import array_module
from ..primitives import fma, mul, sqrt
from ..rule import Matrixwise, Rule
from ._reference import as_float64, expand, group_lr
from .common import lerp

SCALARS = ("lr", "momentum", "one_minus_momentum", "match_rms_adamw", "a", "b", "c", "eps", "ns_steps", "bfloat16")


@element
def muon_chunk(param, group, scalars):
    """``(lr_k, 1 - lr_k * weight_decay, momentum, 1 - momentum, 1 - (momentum), 1 - (1 -
    momentum))`` in the buffer's dtype: the first four formed in float64 and rounded once (torch
    multiplies by ``1 - lr * weight_decay`` and interpolates with weights ``1 - momentum`` and
    ``momentum``), the last two in the buffer's dtype from the rounded weights, as torch's lerp."""
    t = param.dtype.type
    lr = scalars[0] * group[0]
    momentum, one_minus = t(scalars[1]), t(scalars[2])
    return t(lr), t(1.0 - mul(lr, group[1])), momentum, one_minus, t(1.0) - momentum, t(1.0) - one_minus


@element
def muon_momentum(p, state, g, chunk):
    """``buf.lerp_(g, 1 - momentum)``."""
    b = lerp(state[0], g, chunk[3], chunk[5])
    return b, (b,)


@element
def muon_nesterov(p, state, g, chunk):
    """``buf.lerp_(g, 1 - momentum)``, then ``g.lerp(buf, momentum)``."""
    b = lerp(state[0], g, chunk[3], chunk[5])
    return lerp(g, b, chunk[2], chunk[4]), (b,)


@element
def muon_scale(param, group, scalars, rows, cols):
    """The tensor's step size ``lr_k * r(rows, cols)``, rounded once to the buffer's dtype."""
    if scalars[3] != 0.0:
        ratio = 0.2 * sqrt(max(rows, cols))
    else:
        ratio = sqrt(max(1.0, rows / cols))
    return param.dtype.type(scalars[0] * group[0] * ratio)


@element
def muon_step(p, o, chunk, scale):
    return fma(-scale, o, mul(p, chunk[1]))


def round_bfloat16(x):
    """float32 ``x`` rounded to bfloat16 (to nearest, ties to even), as float32, in place (and
    returned); NaN stays NaN."""
    xp = array_module(x)
    bits = x.view(xp.uint32)
    nan = xp.isnan(x)
    carry = bits >> 16
    carry &= 1
    carry += 0x7FFF
    bits += carry
    bits &= 0xFFFF0000
    if nan.any():  # the carry may have turned a NaN into inf
        x[nan] = xp.nan
    return x


def newton_schulz(stack, scalars):
    """The orthogonalised stack ``(count, rows, cols)`` of directions (a new array, the dtype
    of ``stack``): torch's ``_zeropower_via_newtonschulz`` per matrix, in ``stack``'s dtype or,
    with the ``bfloat16`` scalar set, rounded to bfloat16 after every operation as torch's."""
    a, b, c, eps, steps, bfloat16 = scalars[4], scalars[5], scalars[6], scalars[7], int(scalars[8]), scalars[9]
    xp = array_module(stack)
    if bfloat16:
        x = round_bfloat16(stack.astype(xp.float32))  # a copy
        rounded = round_bfloat16
    else:
        x = stack

        def rounded(value):
            return value
    tall = stack.shape[1] > stack.shape[2]
    if tall:
        x = x.transpose(0, 2, 1)
    norm = rounded(xp.sqrt(xp.sum(xp.square(x), axis=(1, 2), keepdims=True)))
    x = rounded(x / xp.maximum(norm, x.dtype.type(eps)))
    a, b, c = (x.dtype.type(v) for v in (a, b, c))
    for _ in range(steps):
        gram = rounded(x @ x.transpose(0, 2, 1))
        update = rounded(b * gram + c * (gram @ gram))
        x = rounded(a * x + update @ x)
    if tall:
        x = x.transpose(0, 2, 1)
    return x.astype(stack.dtype)


def ratio(rows, cols, match_rms_adamw):
    """torch's ``adjust_lr_fn`` ratio for a ``rows x cols`` matrix."""
    if match_rms_adamw:
        return 0.2 * np.sqrt(max(rows, cols))
    return np.sqrt(max(1.0, rows / cols))


def _lerp(start, end, weight, dtype):
    """torch's lerp in float64: from ``start`` below weight 0.5, else from ``end``."""
    if weight < 0.5:
        return start + weight * (end - start)
    return end - float(dtype(1.0) - dtype(weight)) * (end - start)


def _reference(nesterov):
    def reference(param, state, grad, bounds, groups, table, scalars, shapes=None):
        """float64 reference of Muon (the arguments of the kernel, and ``shapes``: the
        ``(start, rows, cols)`` of each matrix; tiles of group -1 are left alone). The
        iteration in float64 whatever the buffer's dtype (but for ``bfloat16``)."""
        dtype = param.dtype
        momentum, one_minus = (float(np.asarray(s).astype(dtype)) for s in scalars[1:3])
        p, m, g = as_float64(param, state[0], grad)
        active = np.repeat(np.asarray(groups) >= 0, np.diff(np.asarray(bounds, dtype=np.int64)))
        m_new = _lerp(m, g, one_minus, dtype.type)
        direction = _lerp(g, m_new, momentum, dtype.type) if nesterov else m_new
        lr = group_lr(table, bounds, groups, scalars[0], np.float64)
        decay = expand(table[:, 1], bounds, groups)
        out = p.copy()
        for start, rows, cols in shapes or ():
            index = slice(start, start + rows * cols)
            if rows * cols == 0 or not active[start]:
                continue
            o = newton_schulz(direction[index].reshape(1, rows, cols), scalars).reshape(-1).astype(np.float64)
            factor = np.asarray(1.0 - lr[start] * decay[start]).astype(dtype)
            step = np.asarray(lr[start] * ratio(rows, cols, scalars[3])).astype(dtype)
            out[index] = p[index] * float(factor) - float(step) * o
        param[:] = np.where(active, out, p)
        state[0] = np.where(active, m_new, m)

    return reference


RULES = tuple(
    Rule(name, ("momentum_buffer",), ("lr_factor", "weight_decay"), SCALARS, muon_chunk, update,
         _reference(name == "muon_nesterov_step"), matrixwise=Matrixwise(newton_schulz, muon_scale, muon_step))
    for name, update in (("muon_step", muon_momentum), ("muon_nesterov_step", muon_nesterov))
)
