"""Per-element pieces several rules share."""

from ..elements import element
from ..primitives import fma


@element
def lr_and_weight_decay(param, group, scalars):
    """The chunk's learning rate and weight decay in the buffer's dtype: ``lr * lr_factor``
    in float64, as the host would compute it, and the float64 decay, each rounded once.
    ``scalars[0]`` is the base learning rate (float64)."""
    dtype = param.dtype.type
    return dtype(scalars[0] * group[0]), dtype(group[1])


@element
def coupled_gradient(p, g, weight_decay, grad_sign):
    """``s * g + lambda * p`` with one rounding of the sum (``s = -1`` to maximize)."""
    return fma(weight_decay, p, grad_sign * g)
