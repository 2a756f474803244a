"""Philox4x32-10 (Salmon, Moraes, Dror & Shaw, SC'11), the counter-based generator behind
cuRAND's Philox and Random123.

Four 32-bit counter words and two 32-bit key words go in, four 32-bit words come out; the
same inputs give the same words on every device. :func:`philox_source` is the scalar form,
an element function (written in the subset of Python that both ``numba.njit`` and
``numba.cuda.jit(device=True)`` compile: unsigned 64-bit products, shifts, masks and xors, no
arrays), built for the CPU as :func:`philox4x32_10` and for CUDA by :mod:`.cuda`; :func:`philox_lanes`
runs the rounds over arrays of counters, rounds outer and lanes inner, which LLVM vectorises
(``vpmuludq``); :func:`philox4x32_10_reference` is a numpy version for the tests.
"""

import numpy as np

from .cpu import inline_helper
from .elements import element

MASK32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)
MULTIPLIER0 = np.uint64(0xD2511F53)
MULTIPLIER1 = np.uint64(0xCD9E8D57)
WEYL0 = np.uint64(0x9E3779B9)  # golden ratio
WEYL1 = np.uint64(0xBB67AE85)  # sqrt(3) - 1
ROUNDS = 10


@element
def philox_source(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of one counter (uint64 values below 2**32 in and out)."""
    for _ in range(ROUNDS):
        product0 = MULTIPLIER0 * c0
        product1 = MULTIPLIER1 * c2
        c0, c1, c2, c3 = ((product1 >> SHIFT32) ^ c1 ^ k0, product1 & MASK32,
                          (product0 >> SHIFT32) ^ c3 ^ k1, product0 & MASK32)
        k0 = (k0 + WEYL0) & MASK32
        k1 = (k1 + WEYL1) & MASK32
    return c0, c1, c2, c3


#: The scalar form built for the CPU (the CUDA target builds its own from the same source).
philox4x32_10 = inline_helper(philox_source)


@inline_helper
def philox_lanes(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of ``len(c0)`` counters in place; the arrays hold uint64 words."""
    for j in range(c0.size):
        # Lanes outer, the ten rounds inner (unrolled: their count is a constant), so that a
        # counter's words stay in registers through the rounds; the masks tell LLVM the
        # factors fit 32 bits: one vpmuludq per product.
        x0, x1, x2, x3 = c0[j] & MASK32, c1[j] & MASK32, c2[j] & MASK32, c3[j] & MASK32
        a, b = k0, k1
        for _ in range(ROUNDS):
            product0 = MULTIPLIER0 * (x0 & MASK32)
            product1 = MULTIPLIER1 * (x2 & MASK32)
            x0, x1, x2, x3 = ((product1 >> SHIFT32) ^ x1 ^ a, product1 & MASK32,
                              (product0 >> SHIFT32) ^ x3 ^ b, product0 & MASK32)
            a = (a + WEYL0) & MASK32
            b = (b + WEYL1) & MASK32
        c0[j], c1[j], c2[j], c3[j] = x0, x1, x2, x3


def philox4x32_10_reference(counter, key):
    """numpy Philox4x32-10: ``counter`` (n, 4) and ``key`` (2,) or (n, 2) uint32-valued arrays
    in, (n, 4) uint32 words out."""
    c = [np.asarray(counter, dtype=np.uint64)[..., w].copy() for w in range(4)]
    key = np.asarray(key, dtype=np.uint64)
    k0, k1 = key[..., 0].copy(), key[..., 1].copy()
    for _ in range(ROUNDS):
        p0 = MULTIPLIER0 * c[0]
        p1 = MULTIPLIER1 * c[2]
        c = [(p1 >> SHIFT32) ^ c[1] ^ k0, p1 & MASK32, (p0 >> SHIFT32) ^ c[3] ^ k1, p0 & MASK32]
        k0 = (k0 + WEYL0) & MASK32
        k1 = (k1 + WEYL1) & MASK32
    return np.stack(c, axis=-1).astype(np.uint32)
