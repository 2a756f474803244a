"""The operations whose rounding a rule must pin down, so that every target rounds alike.

A rule's source calls these by name; each compile target binds the names to its own
implementation (:mod:`.cpu`, :mod:`.cuda`), and the definitions here are the plain-Python
meaning, which the CUDA simulator runs and which makes an element function callable from
Python on NumPy scalars:

* ``fma(a, b, c)``: ``a * b + c`` rounded once. CPU: ``llvm.fma``; CUDA: ``cuda.fma``
  (``fma.rn``).
* ``mul(a, b)``: a product that must not be fused into a following addition. NVVM and
  ``ptxas`` contract a plain ``a * b + c`` into an FMA even with ``fastmath=False``; the CPU
  does not (no ``contract`` flag). So a product whose result is added to something is written
  ``mul(a, b)``: a plain multiply on the CPU, ``mul.rn`` on CUDA (which nothing contracts).
  ``tests/test_cuda_ptx.py`` fails on any product a target could still fuse.
* ``sqrt(x)``: the correctly rounded square root in ``x``'s dtype (``sqrt.rn`` on CUDA).

* ``float_bits(x)`` and ``bits_float(b)``: a float32's bits as a uint32 and back (no
  rounding: a bit cast), for the int8 and bfloat16 state encodings (:mod:`.quantized`). CPU:
  LLVM ``bitcast``; CUDA: libdevice's ``float_as_uint``/``uint_as_float``.

Division is IEEE division on every target (``div.rn`` on CUDA with ``fastmath=False``).
"""

import math
from fractions import Fraction

import numpy as np

NAMES = ("fma", "mul", "sqrt", "float_bits", "bits_float")


def fma(a, b, c):
    """``a * b + c`` with one rounding, in the dtype of ``a`` (float32 or float64 scalars)."""
    kind = type(a)
    a, b, c = float(a), float(b), float(c)
    if not all(map(math.isfinite, (a, b, c))):
        return kind(_fma_of_non_finite(a, b, c))
    exact = Fraction(a) * Fraction(b) + Fraction(c)
    if exact == 0:
        return kind(a * b + c)  # the sign of an exact zero, as IEEE gives it
    try:
        nearest = float(exact)  # correctly rounded to float64
    except OverflowError:
        return kind(math.inf if exact > 0 else -math.inf)
    if kind is np.float64 or kind is float:
        return kind(nearest)
    # float32: round the exact value to float64 *to odd*, then to float32: one correct
    # rounding (53 >= 24 + 2 bits), where rounding to nearest twice could be off by one ulp.
    if Fraction(nearest) != exact and int(np.float64(nearest).view(np.uint64)) % 2 == 0:
        nearest = float(np.nextafter(nearest, math.inf if exact > nearest else -math.inf))
    with np.errstate(over="ignore"):  # beyond float32's range: inf, as the rounding says
        return kind(nearest)


def _fma_of_non_finite(a, b, c):
    """IEEE's fma where an input is inf or NaN: the exact product's class decides, not a
    float64 product that could overflow."""
    if math.isnan(a) or math.isnan(b) or math.isnan(c):
        return math.nan
    if math.isinf(a) or math.isinf(b):
        if a == 0 or b == 0:
            return math.nan  # inf * 0
        product = math.copysign(math.inf, a) * math.copysign(1.0, b)
        return math.nan if math.isinf(c) and c != product else product
    return c  # a finite product plus an infinite c


def mul(a, b):
    """``a * b``, rounded, never fused with what follows."""
    return a * b


def sqrt(x):
    """The square root in ``x``'s dtype (``math.sqrt`` would return a Python float)."""
    return np.sqrt(x)


def float_bits(x):
    """The bits of float32 ``x`` as a uint32."""
    return np.float32(x).view(np.uint32)


def bits_float(bits):
    """The float32 whose bits are ``bits`` (a 32-bit integer)."""
    return np.uint32(bits).view(np.float32)
