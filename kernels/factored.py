"""Rules with factored state (Adafactor): the state's layout per tensor, the order of every sum,
and the CPU kernel.

Each tensor of two or more dimensions keeps a row factor per row and a column factor per column
of each of its matrices (the last two dimensions; the leading ones are a batch of matrices), and
each vector (or scalar) a value per element. The state is one buffer, in three sections: every
tensor's row factors, then every tensor's column factors, then every vector's values, each
section in tensor order (:class:`FactorLayout`).

A step works on *rows*: a factored tensor's matrix rows, and tiles of :data:`VECTOR_ROW`
elements of a vector. Six stages, a tensor of group -1 left alone in each:

1. per row, the float64 sums of ``p**2`` and (factored) ``g**2`` by ``LANES`` lanes and the
   fixed tree of :mod:`.tensorwise`; a vector's values updated in place (``rule.update``);
2. per column of each factored matrix, the float64 sum of ``g**2`` down its rows, in row order
   (a CPU thread takes a block of :data:`COLUMN_BLOCK` columns, a CUDA thread a column);
3. per tensor, in row order: ``sum(p**2)`` and from it ``alpha``; the row and column factors
   updated from their means of ``g**2``; each matrix's mean row factor (clamped);
4. per row, the update ``U`` at each element and the float64 sum of ``U**2`` (lanes, tree);
5. per tensor, ``sum(U**2)`` in row order and from it the step size;
6. per row, ``U`` again (the same bits) and the step.

Every sum has one order on every target and thread count, so CPU and CUDA agree bit for bit.
"""

import functools
import math

import numpy as np
from numba import float64, njit, prange, uint64

from .cpu import JIT_OPTIONS, TARGET, _source_digest
from .elements import element, rebound
from .penalty import square
from .tensorwise import LANES, tile_sum

#: Elements per row of a vector (a unit of stages 1, 4 and 6).
VECTOR_ROW = 2048
#: Columns a CPU thread sums at once in stage 2 (each column still down its rows in order).
COLUMN_BLOCK = 64

#: Columns of ``FactorLayout.tensor_info``.
ROWS, COLS, BATCH, ROW_FACTORS, COL_FACTORS, MEANS = range(6)


class FactorLayout:
    """Where each tensor's factored state lives, and the tables of rows, column blocks and
    tensors a step runs over (int64 NumPy arrays; indices into the one state buffer are
    absolute). Built from a layout ``[(name, shape)]`` and each tensor's first element; the
    tables number the non-empty tensors in order, as the tile tables do."""

    def __init__(self, layout, starts):
        shapes = [tuple(shape) for _, shape in layout]
        factored = [len(shape) >= 2 for shape in shapes]
        self.names = [name for name, _ in layout]
        self.shapes = shapes
        row_sizes = [math.prod(s[:-1]) if f else 0 for s, f in zip(shapes, factored)]
        col_sizes = [math.prod(s[:-2]) * s[-1] if f else 0 for s, f in zip(shapes, factored)]
        var_sizes = [0 if f else math.prod(s) for s, f in zip(shapes, factored)]
        self.sections = {"row_var": sum(row_sizes), "col_var": sum(col_sizes), "variance": sum(var_sizes)}
        self.size = sum(self.sections.values())
        row_offsets = np.cumsum([0] + row_sizes)
        col_offsets = self.sections["row_var"] + np.cumsum([0] + col_sizes)
        var_offsets = self.sections["row_var"] + self.sections["col_var"] + np.cumsum([0] + var_sizes)
        #: Per tensor (all, in layout order): ``{"row_var": (start, stop), ...}`` of its state.
        self.slices = []
        rows, blocks, tensors = [], [], []
        means = 0
        for k, (shape, start) in enumerate(zip(shapes, starts)):
            numel = math.prod(shape)
            if factored[k]:
                self.slices.append({"row_var": (int(row_offsets[k]), int(row_offsets[k + 1])),
                                    "col_var": (int(col_offsets[k]), int(col_offsets[k + 1]))})
            else:
                self.slices.append({"variance": (int(var_offsets[k]), int(var_offsets[k + 1]))})
            if numel == 0:
                continue
            number = len(tensors)
            first_row = len(rows)
            if factored[k]:
                n_rows, n_cols, batch = shape[-2], shape[-1], math.prod(shape[:-2])
                for b in range(batch):
                    for r in range(n_rows):
                        rows.append((start + (b * n_rows + r) * n_cols, n_cols, number,
                                     row_offsets[k] + b * n_rows + r, col_offsets[k] + b * n_cols, means + b))
                    for c in range(0, n_cols, COLUMN_BLOCK):
                        blocks.append((start + b * n_rows * n_cols + c, min(COLUMN_BLOCK, n_cols - c), n_cols, n_rows,
                                       col_offsets[k] + b * n_cols + c, number))
                tensors.append((first_row, numel, n_rows, n_cols, batch, row_offsets[k], col_offsets[k], means))
                means += batch
            else:
                for offset in range(0, numel, VECTOR_ROW):
                    rows.append((start + offset, min(VECTOR_ROW, numel - offset), number, var_offsets[k] + offset,
                                 -1, -1))
                tensors.append((first_row, numel, 0, 0, 0, 0, 0, 0))
        table = np.array(rows, dtype=np.int64).reshape(-1, 6)
        self.row_start, self.row_length, self.row_tensor = (table[:, c].copy() for c in range(3))
        self.row_factor, self.row_cols, self.row_mean = (table[:, c].copy() for c in range(3, 6))
        table = np.array(blocks, dtype=np.int64).reshape(-1, 6)
        self.block_start, self.block_width, self.block_stride, self.block_rows, self.block_out, self.block_tensor = (
            table[:, c].copy() for c in range(6))
        table = np.array(tensors, dtype=np.int64).reshape(-1, 8)
        self.tensor_rows = np.append(table[:, 0], len(rows)).astype(np.int64)
        self.tensor_numel = table[:, 1].copy()
        self.tensor_info = table[:, 2:].copy()
        self.means = means

    @classmethod
    def of(cls, params):
        """The layout of a :class:`~fastopt.FlatParams`."""
        return cls(params.layout, [params.segment(name)[0] for name in params])

    def tables(self):
        """The kernel's tables, in its argument order."""
        return (self.row_start, self.row_length, self.row_tensor, self.row_factor, self.row_cols, self.row_mean,
                self.block_start, self.block_width, self.block_stride, self.block_rows, self.block_out,
                self.block_tensor, self.tensor_rows, self.tensor_numel, self.tensor_info)

    def views(self, factors):
        """``{section name: view}`` of a state buffer."""
        views, start = {}, 0
        for name, size in self.sections.items():
            views[name] = factors[start:start + size]
            start += size
        return views

    def tensor_state(self, factors, k):
        """Tensor ``k``'s (layout order) state as torch shapes it: ``row_var`` ``(..., R, 1)`` and
        ``col_var`` ``(..., 1, C)``, or ``variance`` the tensor's shape; views of ``factors``."""
        shape = self.shapes[k]
        if len(shape) >= 2:
            (r0, r1), (c0, c1) = self.slices[k]["row_var"], self.slices[k]["col_var"]
            return {"row_var": factors[r0:r1].reshape(*shape[:-1], 1),
                    "col_var": factors[c0:c1].reshape(*shape[:-2], 1, shape[-1])}
        v0, v1 = self.slices[k]["variance"]
        return {"variance": factors[v0:v1].reshape(shape)}


@element
def row_direction(grad, factors, means, i, offset, factor, cols, mean, chunk):
    """``U`` at element ``i``, the ``offset``-th of its row (see the module docstring): what
    a CUDA thread computes; the CPU's loops make the same calls, the row's kind decided outside."""
    if cols >= 0:
        value = estimate(factors[factor], factors[cols + offset], means[mean])  # noqa: F821
    else:
        value = factors[factor + offset]
    return direction(grad[i], value, chunk)  # noqa: F821


def factored_step(param, grad, groups, table, scalars, factors, means, tensor_tiles, row_start, row_length, row_tensor,
                  row_factor, row_cols, row_mean, block_start, block_width, block_stride, block_rows, block_out,
                  block_tensor, tensor_rows, tensor_numel, tensor_info, row_sums, col_sums, tensor_values):
    """One step (the six stages above); ``prologue``, ``update`` and the ``Factored`` source
    (``factor``, ``row_mean_of``, ``estimate``, ``direction``, ``alpha``, ``step_size``,
    ``step``) are bound per rule. The element loops index with uint64 and branch on the row's
    kind outside them, so that they vectorise (measured: 2x on stages 4 and 6)."""
    width = uint64(LANES)
    for j in prange(row_start.size):
        group = groups[tensor_tiles[row_tensor[j]]]
        if group >= 0:
            chunk = prologue(param, table[group], scalars)  # noqa: F821
            param_lanes, grad_lanes = np.zeros(LANES), np.zeros(LANES)
            start = uint64(row_start[j])
            stop = start + uint64(row_length[j])
            if row_cols[j] >= 0:
                for base in range(start, stop, width):
                    n = min(width, stop - base)
                    for i in range(n):
                        param_lanes[i] += square(param[base + i])
                        grad_lanes[i] += square(grad[base + i])
            else:
                at = uint64(row_factor[j])
                for base in range(start, stop, width):
                    n = min(width, stop - base)
                    values = at + (base - start)
                    for i in range(n):
                        param_lanes[i] += square(param[base + i])
                    for i in range(n):
                        factors[values + i] = update(factors[values + i], grad[base + i], chunk)  # noqa: F821
            row_sums[j, 0] = tile_sum(param_lanes)
            row_sums[j, 1] = tile_sum(grad_lanes)
    for b in prange(block_start.size):
        if groups[tensor_tiles[block_tensor[b]]] >= 0:
            sums = np.zeros(COLUMN_BLOCK)
            columns = uint64(block_width[b])
            for r in range(block_rows[b]):
                base = uint64(block_start[b] + r * block_stride[b])
                for c in range(columns):
                    sums[c] += square(grad[base + c])
            for c in range(columns):
                col_sums[block_out[b] + c] = sums[c]
    for k in prange(tensor_numel.size):
        group = groups[tensor_tiles[k]]
        if group >= 0:
            chunk = prologue(param, table[group], scalars)  # noqa: F821
            update_factors(k, param, scalars, table[group], factors, means, tensor_rows, tensor_numel, tensor_info,
                           row_factor, row_sums, col_sums, tensor_values, chunk)
    for j in prange(row_start.size):
        group = groups[tensor_tiles[row_tensor[j]]]
        if group >= 0:
            chunk = prologue(param, table[group], scalars)  # noqa: F821
            lanes = np.zeros(LANES)
            start = uint64(row_start[j])
            stop = start + uint64(row_length[j])
            at = uint64(row_factor[j])
            if row_cols[j] >= 0:
                row, row_mean_ = factors[at], means[row_mean[j]]
                cols = uint64(row_cols[j])
                for base in range(start, stop, width):
                    n = min(width, stop - base)
                    values = cols + (base - start)
                    for i in range(n):
                        lanes[i] += square(direction(grad[base + i], estimate(row, factors[values + i], row_mean_),  # noqa: F821
                                                     chunk))
            else:
                for base in range(start, stop, width):
                    n = min(width, stop - base)
                    values = at + (base - start)
                    for i in range(n):
                        lanes[i] += square(direction(grad[base + i], factors[values + i], chunk))  # noqa: F821
            row_sums[j, 1] = tile_sum(lanes)
    for k in prange(tensor_numel.size):
        group = groups[tensor_tiles[k]]
        if group >= 0:
            direction_squares = float64(0.0)
            for j in range(tensor_rows[k], tensor_rows[k + 1]):
                direction_squares += row_sums[j, 1]
            tensor_values[k, 1] = step_size(tensor_values[k, 0], direction_squares, tensor_numel[k],  # noqa: F821
                                            scalars[6])
    for j in prange(row_start.size):
        k = row_tensor[j]
        group = groups[tensor_tiles[k]]
        if group >= 0:
            chunk = prologue(param, table[group], scalars)  # noqa: F821
            size = param.dtype.type(tensor_values[k, 1])
            start = uint64(row_start[j])
            n = uint64(row_length[j])
            at = uint64(row_factor[j])
            if row_cols[j] >= 0:
                row, row_mean_ = factors[at], means[row_mean[j]]
                cols = uint64(row_cols[j])
                for i in range(n):
                    u = direction(grad[start + i], estimate(row, factors[cols + i], row_mean_), chunk)  # noqa: F821
                    param[start + i] = step(param[start + i], u, chunk, size)  # noqa: F821
            else:
                for i in range(n):
                    u = direction(grad[start + i], factors[at + i], chunk)  # noqa: F821
                    param[start + i] = step(param[start + i], u, chunk, size)  # noqa: F821


@element
def update_factors(k, param, scalars, group_row, factors, means, tensor_rows, tensor_numel, tensor_info, row_factor,
                   row_sums, col_sums, tensor_values, chunk):
    """Stage 3 for tensor ``k`` (both targets): ``alpha``, the factors and the mean row factors."""
    param_squares = float64(0.0)
    for j in range(tensor_rows[k], tensor_rows[k + 1]):
        param_squares += row_sums[j, 0]
    tensor_values[k, 0] = alpha(param_squares, tensor_numel[k], scalars[0] * group_row[0], scalars[3],  # noqa: F821
                                scalars[5])
    n_rows, n_cols, batch = tensor_info[k, 0], tensor_info[k, 1], tensor_info[k, 2]
    if n_rows > 0:
        for j in range(tensor_rows[k], tensor_rows[k + 1]):
            at = row_factor[j]
            factors[at] = factor(factors[at], factors.dtype.type(row_sums[j, 1] / n_cols), chunk)  # noqa: F821
        first = tensor_info[k, 4]
        for c in range(first, first + batch * n_cols):
            factors[c] = factor(factors[c], factors.dtype.type(col_sums[c] / n_rows), chunk)  # noqa: F821
        for b in range(batch):
            total = float64(0.0)  # float64 in the simulator too (0.0 + a float32 is a float32 in NumPy 2)
            row = tensor_info[k, 3] + b * n_rows
            for r in range(row, row + n_rows):
                total += float64(factors[r])
            means[tensor_info[k, 5] + b] = row_mean_of(factors.dtype.type(total / n_rows), chunk)  # noqa: F821


def _bindings(rule):
    source = rule.factored
    bindings = {"prologue": rule.prologue, "update": rule.update, "factor": source.factor,
                "row_mean_of": source.row_mean, "estimate": source.estimate, "direction": source.direction,
                "alpha": source.alpha, "step_size": source.step_size, "step": source.step}
    return bindings


def kernel(rule, parallel=True):
    """The CPU kernel of a rule with :attr:`~.rule.Rule.factored`: multi-threaded, or its
    single-threaded build (the same bits). Unchecked: it trusts its arguments."""
    return _kernel(rule, bool(parallel))


@functools.cache
def _kernel(rule, parallel):
    bindings = _bindings(rule)
    update_factors_ = TARGET.element(update_factors, alpha=bindings["alpha"], factor=bindings["factor"],
                                     row_mean_of=bindings["row_mean_of"])
    names = TARGET.names(factored_step, {**bindings, "update_factors": update_factors_})
    name = f"{rule.name}{'' if parallel else '_serial'}_{_source_digest()}"
    return njit(parallel=parallel, **JIT_OPTIONS)(rebound(factored_step, names, name))


class CpuLaunch:
    """A step of a factored rule over fixed buffers: the kernel build for their size, the
    layout's tables and the float64 scratch sums, allocated once; called as
    ``launch(*buffers, scalars)`` (``factors``, the state buffer, is the optimizer's)."""

    def __init__(self, rule, size, dtype, tensors):
        from .chunks import CHUNK_SIZE

        self._kernel = _kernel(rule, size > CHUNK_SIZE)
        _, self._tensor_tiles, self.layout, self.factors = tensors
        self._tables = self.layout.tables()
        self.means = np.zeros(max(1, self.layout.means), dtype)
        self.row_sums = np.zeros((self.layout.row_start.size, 2))
        self.col_sums = np.zeros(self.layout.size)
        self.tensor_values = np.zeros((self.layout.tensor_numel.size, 2))

    def __call__(self, param, state, grad, bounds, groups, table, scalars):
        self._kernel(param, grad, groups, table, scalars, self.factors, self.means, self._tensor_tiles, *self._tables,
                     self.row_sums, self.col_sums, self.tensor_values)
