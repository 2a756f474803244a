r"""Inverted dropout in place, with masks from Philox4x32-10: the same mask on every device.

A mask depends only on (seed, stream, step, element index), never on threads, chunking or
device (the format promise of ``docs/design.md``):

* key ``(seed & 0xffffffff, seed >> 32)``; element ``i`` uses counter
  ``(j & 0xffffffff, j >> 32, stream, step)`` with ``j = i // 4`` and keeps word ``i % 4``;
* element ``i`` is kept iff that word ``< threshold``, where ``threshold = floor(keep_prob *
  2**32)`` is computed once on the host as an integer (an exact compare everywhere);
* a kept element is multiplied by ``scale = 1 / keep_prob`` rounded once to the buffer's
  dtype; a dropped one is set to zero.

That last decision is :func:`drop`, the element function both targets compile; the words come
from :mod:`.philox`, also one source. This module holds the CPU kernel; the CUDA kernel is
:func:`fastopt.kernels.cuda.dropout_step`.

``offset`` is the element index of ``x[0]``: dropout over a slice with its offset gives exactly
the corresponding part of dropout over the whole buffer (a segment of a FlatParams, or a
batch cut in pieces). The backward pass calls the same kernel on the gradient with the same
(seed, stream, step) and regenerates the mask instead of storing it. The keep mask itself is
dropout over a uint8 buffer of ones with ``scale = 1``.

Argument order: ``x``, then the uint64 scalars ``offset, key0, key1, stream, step,
threshold``, then ``scale`` in ``x``'s dtype.
"""

import numpy as np
from numba import prange

from .chunks import CHUNK_SIZE
from .cpu import TARGET, inline_helper, parallel_kernel
from .elements import element
from .philox import MASK32, SHIFT32, philox4x32_10_reference, philox_lanes

#: Counters per Philox batch: rounds run over this many counters at a time (vectorised).
LANES = np.uint64(64)
#: Counters per unit of parallel work (four elements each).
CHUNK_COUNTERS = np.uint64(CHUNK_SIZE // 4)


@element
def drop(x, index, word, threshold, scale):
    """Element ``index`` of ``x`` kept (times ``scale``) iff its Philox word is below
    ``threshold``, else set to zero."""
    # Two stores, not ``x * scale if ... else 0``: that expression unifies the float with the
    # integer 0 as float64 (a float64 round trip per element in the PTX).
    if word < threshold:
        x[index] = x[index] * scale
    else:
        x[index] = 0


_drop = TARGET.element(drop)


@inline_helper
def _counter_range(offset, size):
    """First counter, number of counters and number of chunks covering ``size`` elements."""
    first = offset // np.uint64(4)
    count = (offset + size - np.uint64(1)) // np.uint64(4) - first + np.uint64(1)
    return first, count, (count + CHUNK_COUNTERS - np.uint64(1)) // CHUNK_COUNTERS


@inline_helper
def _words(batch, c0, c1, c2, c3, words, stream, step, key0, key1):
    """Philox words of counters ``batch, batch + 1, ...`` into ``words`` in element order
    (``words[4 * j + w]`` is word ``w`` of counter ``batch + j``), so that the loop applying
    them runs over contiguous elements and vectorises (measured: 10 ms instead of 18 ms at
    1e7 elements, against 6.5 ms for the Philox rounds alone)."""
    for j in range(c0.size):
        counter = batch + np.uint64(j)
        c0[j] = counter & MASK32
        c1[j] = counter >> SHIFT32
        c2[j] = stream
        c3[j] = step
    philox_lanes(c0, c1, c2, c3, key0, key1)
    for j in range(c0.size):
        words[4 * j] = c0[j]
        words[4 * j + 1] = c1[j]
        words[4 * j + 2] = c2[j]
        words[4 * j + 3] = c3[j]


@inline_helper
def _lanes():
    return (np.empty(LANES, np.uint64), np.empty(LANES, np.uint64), np.empty(LANES, np.uint64),
            np.empty(LANES, np.uint64), np.empty(LANES * np.uint64(4), np.uint64))


@inline_helper
def _overlap(batch, stop, offset, size):
    """Elements ``lo .. hi`` of the batch's words that fall inside ``x`` (all but at the ends)."""
    base = batch * np.uint64(4)
    end = base + min(LANES, stop - batch) * np.uint64(4)
    lo = max(base, offset)
    hi = min(end, offset + size)
    return lo - base, hi - base, base


@parallel_kernel
def dropout_step(x, offset, key0, key1, stream, step, threshold, scale):
    """Inverted dropout of ``x`` in place (the forward and the backward pass alike)."""
    size = np.uint64(x.size)
    if size == 0:
        return
    first, count, n_chunks = _counter_range(offset, size)
    for chunk in prange(n_chunks):
        c0, c1, c2, c3, words = _lanes()
        start = first + np.uint64(chunk) * CHUNK_COUNTERS
        stop = min(start + CHUNK_COUNTERS, first + count)
        for batch in range(start, stop, LANES):
            _words(batch, c0, c1, c2, c3, words, stream, step, key0, key1)
            lo, hi, base = _overlap(batch, stop, offset, size)
            shift = base - offset
            for k in range(lo, hi):
                _drop(x, shift + k, words[k], threshold, scale)


# ---------------------------------------------------------------------------------------------
# references: numpy, same arguments


def mask_reference(size, offset, key0, key1, stream, step, threshold):
    """The keep mask of ``size`` elements from ``offset`` on, as a bool array."""
    element_index = np.uint64(offset) + np.arange(size, dtype=np.uint64)
    counter = element_index // np.uint64(4)
    counters = np.stack([counter & MASK32, counter >> SHIFT32,
                         np.full(size, stream, np.uint64), np.full(size, step, np.uint64)], axis=-1)
    words = philox4x32_10_reference(counters, np.array([key0, key1], dtype=np.uint64))
    word = words[np.arange(size), (element_index % np.uint64(4)).astype(np.intp)]
    return word.astype(np.uint64) < np.uint64(threshold)


def dropout_step_reference(x, offset, key0, key1, stream, step, threshold, scale):
    """Reference of :func:`dropout_step`: float64 product, rounded once to ``x``'s dtype."""
    keep = mask_reference(x.size, offset, key0, key1, stream, step, threshold)
    x[:] = np.where(keep, x.astype(np.float64) * float(scale), 0.0)
