"""Per-element pieces several rules share."""

from ..elements import element
from ..primitives import fma


@element
def coupled_gradient(p, g, weight_decay, grad_sign):
    """``s * g + lambda * p`` with one rounding of the sum (``s = -1`` to maximize)."""
    return fma(weight_decay, p, grad_sign * g)
