"""Rules that transform each parameter matrix whole (Muon): the matrices of a flat buffer, and
the CPU kernels of the two element passes around the host's matrix products.

A step runs over the tiles of :func:`~.chunks.chunk_table` ``(segments, TENSOR_TILE,
merge=False)``, whose tiles start at each tensor's first element:

1. per tile, the rule's first pass (:func:`~.rule.stage`): the new state stored, the direction
   ``u`` written to a scratch buffer the size of the parameters;
2. per matrix, on the host, the rule's ``transform`` of the scratch buffer's matrix (BLAS:
   NumPy here, CuPy on CUDA), matrices of one shape stacked into one batched call
   (:class:`Matrices`), so that Python loops over shapes, not over tensors;
3. per tile, the step size of its tensor (from the tensor's shape) and the second pass
   (:func:`~.rule.land`).

Stages 1 and 3 are element source, compiled for each target; a tile of group -1 is left alone
in each stage (its tensor does not step this time, and on the CPU its matrix is not
transformed either).
"""

import functools
import math

import numpy as np
from numba import njit, prange

from .cpu import JIT_OPTIONS, TARGET, _source_digest
from .elements import rebound
from .rule import land, matrix_bindings, stage


class Matrices:
    """The 2-D tensors of a flat buffer, by shape: ``(rows, cols)`` and the start of each
    non-empty tensor, in layout order, and ``dims`` (float64, one ``(rows, cols)`` row per
    non-empty tensor: what stage 3 reads, indexed by the tile table's tensor numbers)."""

    def __init__(self, layout, starts):
        tensors = [(shape, start) for (name, shape), start in zip(layout, starts) if math.prod(shape)]
        for (name, shape), _ in zip(layout, starts):
            if len(shape) != 2:
                raise ValueError(f"parameter {name!r} has shape {tuple(shape)}: a matrix rule takes 2-D "
                                 "parameters only")
        self.dims = np.array([shape for shape, _ in tensors], dtype=np.float64).reshape(-1, 2)
        by_shape = {}
        for k, (shape, start) in enumerate(tensors):
            by_shape.setdefault(tuple(shape), []).append((k, start))
        self.batches = [(shape, np.array([k for k, _ in members]), [start for _, start in members])
                        for shape, members in by_shape.items()]

    @classmethod
    def of(cls, params):
        """The matrices of a :class:`~fastopt.FlatParams`."""
        return cls(params.layout, [params.segment(name)[0] for name in params])

    def transform(self, work, function, scalars, active=None):
        """Replace each matrix of ``work`` (1-D, NumPy or CuPy) by ``function(stack, scalars)``
        of the stack of its shape's matrices (``(count, rows, cols)``; a view of ``work`` when
        the shape has one matrix). ``active``: per tensor, whether it steps (the others are
        left alone); None: all."""
        for (rows, cols), numbers, starts in self.batches:
            if active is not None:
                chosen = active[numbers]
                if not chosen.any():
                    continue
                if not chosen.all():
                    starts = [start for start, keep in zip(starts, chosen) if keep]
            size = rows * cols
            if len(starts) == 1:
                view = work[starts[0]:starts[0] + size].reshape(1, rows, cols)
                view[...] = function(view, scalars)
                continue
            xp = array_module(work)
            stack = xp.stack([work[start:start + size].reshape(rows, cols) for start in starts])
            result = function(stack, scalars)
            for start, matrix in zip(starts, result):
                work[start:start + size] = matrix.reshape(size)


def array_module(array):
    """``numpy`` for a NumPy array, else CuPy's module of ``array`` (imported only then)."""
    if isinstance(array, np.ndarray):
        return np
    import cupy

    return cupy.get_array_module(array)


def first_pass(param, state, grad, bounds, groups, table, scalars, work):
    """Stage 1; ``prologue`` and ``stage`` are bound per rule."""
    for t in prange(groups.size):
        if groups[t] >= 0:
            chunk = prologue(param, table[groups[t]], scalars)  # noqa: F821
            for i in range(bounds[t], bounds[t + 1]):
                stage(param, state, grad, work, i, chunk)


def second_pass(param, work, bounds, groups, table, scalars, tile_tensor, dims):
    """Stage 3; ``prologue``, ``scale`` and ``land`` are bound per rule."""
    for t in prange(groups.size):
        if groups[t] >= 0:
            chunk = prologue(param, table[groups[t]], scalars)  # noqa: F821
            k = tile_tensor[t]
            step_size = scale(param, table[groups[t]], scalars, dims[k, 0], dims[k, 1])  # noqa: F821
            for i in range(bounds[t], bounds[t + 1]):
                land(param, work, i, chunk, step_size)


def kernels(rule, parallel=True):
    """The CPU kernels of stages 1 and 3 of a rule with :attr:`~.rule.Rule.matrixwise`:
    multi-threaded, or their single-threaded builds (the same bits). Unchecked."""
    return _kernels(rule, bool(parallel))


@functools.cache
def _kernels(rule, parallel):
    staged, landed = matrix_bindings(rule)
    first = TARGET.names(first_pass, {"prologue": rule.prologue, "stage": TARGET.element(stage, **staged)})
    second = TARGET.names(second_pass, {"prologue": rule.prologue, "scale": rule.matrixwise.scale,
                                        "land": TARGET.element(land, **landed)})
    suffix = f"{'' if parallel else '_serial'}_{_source_digest()}"
    return (njit(parallel=parallel, **JIT_OPTIONS)(rebound(first_pass, first, f"{rule.name}_stage{suffix}")),
            njit(parallel=parallel, **JIT_OPTIONS)(rebound(second_pass, second, f"{rule.name}_land{suffix}")))


class CpuLaunch:
    """A step of a matrix rule over fixed buffers: the kernel builds for their size, the tensor
    tables, the matrices and the scratch buffer, allocated once; called as
    ``launch(*buffers, scalars)``."""

    def __init__(self, rule, size, dtype, tensors):
        # The single-threaded builds, at every size: BLAS's threads spin for a while after the
        # products, and a Numba thread pool started then waits for them (measured: a pass over
        # 3e5 float32 elements 0.2 ms single-threaded, 0.1 ms on 2 threads alone, 5.6 ms on 2
        # threads right after a matrix product). The products take the cores.
        self._first, self._second = _kernels(rule, False)
        self._transform = rule.matrixwise.transform
        self._tile_tensor, self._tensor_tiles, self.matrices = tensors
        self._first_tiles = self._tensor_tiles[:-1]
        self.work = np.zeros(size, dtype)

    def __call__(self, param, state, grad, bounds, groups, table, scalars):
        if groups.size == 0:
            return
        self._first(param, state, grad, bounds, groups, table, scalars, self.work)
        self.matrices.transform(self.work, self._transform, scalars, groups[self._first_tiles] >= 0)
        self._second(param, self.work, bounds, groups, table, scalars, self._tile_tensor, self.matrices.dims)
