"""Rules with per-tensor sums (LAMB's trust ratio): the summation order both targets share, and
the CPU kernel.

A step runs three stages over the tiles of :func:`~.chunks.chunk_table` ``(segments,
TENSOR_TILE, merge=False)``, whose tiles start at each tensor's first element:

1. per tile, the rule's first pass (:func:`~.rule.measure`): the new state stored, and the
   float64 sums of ``p**2`` and ``u**2`` over the tile into ``partial[tile]``. Element ``j`` of
   a tile goes to lane ``j % LANES``; each lane adds its elements in order, then the lanes are
   added by a fixed tree (lane ``j`` takes lane ``j + h`` for ``h = LANES/2, ..., 1``), as a
   CUDA block of ``LANES`` threads does;
2. per tensor, its tiles' sums added in tile order into ``sums[tensor]``;
3. per tile, the rule's ratio of its tensor's sums, its step size, and the second pass
   (:func:`~.rule.finish`).

The order is the same on every target and for any number of threads, so the sums, and the
steps, are the same bits on the CPU and on CUDA. A tile of group -1 is left alone in every
stage (its tensor does not step this time; a tensor is in one group).

On the CPU the three stages are one kernel call (two parallel loops and a serial one between).
"""

import functools

import numpy as np
from numba import njit, prange, uint64

from .chunks import CHUNK_SIZE
from .cpu import JIT_OPTIONS, TARGET, _source_digest
from .elements import element, rebound
from .penalty import square
from .rule import finish, measure

#: Lanes of a tile's sums: a CUDA block of this many threads computes the same tree.
LANES = 256


@element
def tile_sum(lanes):
    """The sum of ``lanes`` (``LANES`` values) by the fixed tree (in place)."""
    half = LANES // 2
    while half > 0:
        for j in range(half):
            lanes[j] += lanes[j + half]
        half //= 2
    return lanes[0]


@element
def add_tiles(k, groups, tensor_tiles, partial, sums):
    """Tensor ``k``'s sums: its tiles' sums added in tile order into ``sums[k]`` (both targets)."""
    param_squares = 0.0
    direction_squares = 0.0
    for t in range(tensor_tiles[k], tensor_tiles[k + 1]):
        if groups[t] >= 0:
            param_squares += partial[t, 0]
            direction_squares += partial[t, 1]
    sums[k, 0] = param_squares
    sums[k, 1] = direction_squares


def tensorwise_step(param, state, grad, bounds, groups, table, scalars, tile_tensor, tensor_tiles, partial, sums):
    """One step of a rule with per-tensor sums (the three stages above); ``prologue``,
    ``measure``, ``finish``, ``ratio`` and ``scale`` are bound per rule."""
    width = uint64(LANES)
    for t in prange(groups.size):
        if groups[t] >= 0:
            chunk = prologue(param, table[groups[t]], scalars)  # noqa: F821
            param_lanes, direction_lanes = np.zeros(LANES), np.zeros(LANES)
            directions = np.empty(LANES, param.dtype)
            stop = bounds[t + 1]
            for base in range(bounds[t], stop, width):
                n = min(width, stop - base)
                # Two loops, so that each vectorises: the update (state stored, u kept), then the
                # squares into the lanes (the parameter is not changed by the first pass).
                for j in range(n):
                    p, directions[j] = measure(param, state, grad, base + j, chunk)
                for j in range(n):
                    param_lanes[j] += square(param[base + j])
                    direction_lanes[j] += square(directions[j])
            partial[t, 0] = tile_sum(param_lanes)
            partial[t, 1] = tile_sum(direction_lanes)
    for k in range(tensor_tiles.size - 1):
        add_tiles(k, groups, tensor_tiles, partial, sums)
    for t in prange(groups.size):
        if groups[t] >= 0:
            chunk = prologue(param, table[groups[t]], scalars)  # noqa: F821
            k = tile_tensor[t]
            step_size = scale(param, table[groups[t]], scalars, ratio(sums[k, 0], sums[k, 1]))  # noqa: F821
            for i in range(bounds[t], bounds[t + 1]):
                finish(param, state, i, chunk, step_size)


def kernel(rule, parallel=True):
    """The CPU kernel of a rule with :attr:`~.rule.Rule.tensorwise`: multi-threaded, or its
    single-threaded build (the same bits). Unchecked: it trusts its arguments."""
    return _kernel(rule, bool(parallel))


@functools.cache
def _kernel(rule, parallel):
    bindings = {"prologue": rule.prologue, "ratio": rule.tensorwise.ratio, "scale": rule.tensorwise.scale,
                "measure": TARGET.element(measure, **rule.element_bindings()),
                "finish": TARGET.element(finish, **rule.finish_bindings())}
    names = TARGET.names(tensorwise_step, bindings)
    name = f"{rule.name}{'' if parallel else '_serial'}_{_source_digest()}"
    return njit(parallel=parallel, **JIT_OPTIONS)(rebound(tensorwise_step, names, name))


class CpuLaunch:
    """A step of a per-tensor rule over fixed buffers: the kernel build for their size, the
    tensor tables and the scratch sums, allocated once; called as ``launch(*buffers, scalars)``."""

    def __init__(self, rule, size, tensors):
        self._kernel = _kernel(rule, size > CHUNK_SIZE)
        self._tile_tensor, self._tensor_tiles = tensors
        self.partial = np.zeros((self._tile_tensor.size, 2))
        self.sums = np.zeros((self._tensor_tiles.size - 1, 2))

    def __call__(self, param, state, grad, bounds, groups, table, scalars):
        self._kernel(param, state, grad, bounds, groups, table, scalars, self._tile_tensor, self._tensor_tiles,
                     self.partial, self.sums)

