"""Per-element pieces several rules share."""

from ..elements import element
from ..primitives import fma


@element
def lerp(start, end, weight, one_minus_weight):
    """torch's ``start.lerp_(end, weight)`` (its vectorised CPU kernel): one FMA from ``start``
    below weight 0.5, else from ``end``, so that weight 1 gives ``end`` exactly. The weight and
    ``1 - weight`` are given in the buffer's dtype (``1 - weight`` formed there, as torch does)."""
    if weight < 0.5:
        return fma(weight, end - start, start)
    return fma(-one_minus_weight, end - start, end)


@element
def coupled_gradient(p, g, weight_decay, grad_sign):
    """``s * g + lambda * p`` with one rounding of the sum (``s = -1`` to maximize)."""
    return fma(weight_decay, p, grad_sign * g)
