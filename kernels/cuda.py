"""The CUDA target: the primitives' CUDA meaning, the tiled rule kernels and their launch
shape, and the dropout, L2-penalty and fill kernels.

A rule runs as :func:`tiled_step` with the rule's source bound in, the same source the CPU
compiles. The work decomposition is the GPU's own: the buffer is cut into tiles of
:data:`TILE_SIZE` elements that never straddle a parameter group (the façade builds the tile
table once), one block takes a tile at a time (a grid-stride loop over tiles) and its threads
take consecutive elements, so every load and store of a warp is coalesced. At 1e6 parameters
that is 489 tiles, enough blocks to fill every SM of an H100 or H200 (132); small buffers get a
small grid, without NumbaPerformanceWarning (filtered when a launch is configured, once).

Everything a step may change reaches a kernel as a launch scalar (the rule's ``scalars``
tuple of float64), so a new learning rate costs no host-to-device copy and no
synchronisation.

Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the primitives are the plain-Python
definitions of :mod:`.primitives` (a correctly rounded fma, a dtype-preserving square root),
and element functions run as Python; the kernels and their launches are the same.
"""

import functools
import math
import warnings

from llvmlite import ir
from numba import config, cuda, float32, float64, uint32, uint64

from . import primitives
from .chunks import chunk_table
from .dropout import drop
from .elements import Target, element, rebound
from .penalty import square
from .philox import MASK32, SHIFT32, philox_source
from .rule import apply, finish, land, matrix_bindings, measure, stage
from .factored import COLUMN_BLOCK
from .tensorwise import LANES, add_tiles
from . import quantized
from .quantized import BLOCK as QUANTIZED_BLOCK
from .quantized import (PARAM_STREAM, STATE_STREAM, apply_rounded, encode, encoded_tensorwise_bindings,
                        int8_bindings, inverse, magnitude_bits, rounded_bindings)

SIMULATOR = bool(config.ENABLE_CUDASIM)

#: Threads per block for every kernel (a power of two; the tests make it small).
THREADS_PER_BLOCK = 256
#: Elements per tile, a block's unit of work in a rule kernel (the tests make it small).
TILE_SIZE = 2048
#: Blocks per SM a grid may have before blocks loop over the tiles (several waves).
BLOCKS_PER_SM = 32
#: The most blocks of any launch where the device cannot be asked (the simulator).
MAX_BLOCKS = 65535
#: Shared-memory slots per block: launches use at most this many threads per block.
MAX_THREADS = 1024
#: Philox words a block of dropout stages in shared memory (four per thread).
MAX_WORDS = 4 * MAX_THREADS


if SIMULATOR:
    _PRIMITIVES = {name: getattr(primitives, name) for name in primitives.NAMES}

    def _compile_element(function):
        return function  # the simulator runs kernels as Python; so are their callees
else:
    from numba.cuda import types as cuda_types
    from numba.cuda.extending import intrinsic

    @intrinsic
    def _mul_rn(typingctx, a, b):
        """``a * b`` as ``mul.rn``, which neither NVVM nor ptxas fuses into an FMA."""
        if not (isinstance(a, cuda_types.Float) and a == b):
            return None
        name = "llvm.nvvm.mul.rn.f" if a == cuda_types.float32 else "llvm.nvvm.mul.rn.d"

        def codegen(context, builder, signature, args):
            llvm_type = context.get_value_type(signature.return_type)
            function = builder.module.globals.get(name) or ir.Function(
                builder.module, ir.FunctionType(llvm_type, [llvm_type, llvm_type]), name)
            return builder.call(function, args)

        return a(a, b), codegen

    _compile_element = cuda.jit(device=True, inline=True)

    @_compile_element
    def _fma(a, b, c):
        return cuda.fma(a, b, c)  # numba-cuda types cuda.fma only as an attribute of cuda

    from numba import int32
    from numba.cuda import libdevice

    @_compile_element
    def _float_bits(x):
        return uint32(libdevice.float_as_int(x))

    @_compile_element
    def _bits_float(bits):
        return libdevice.int_as_float(int32(uint32(bits)))

    _PRIMITIVES = {"fma": _fma, "mul": _mul_rn, "sqrt": math.sqrt, "float_bits": _float_bits,
                   "bits_float": _bits_float}

#: ``cuda.fma`` (``fma.rn``), ``mul.rn``, ``math.sqrt`` (``sqrt.rn``) and libdevice's bit casts;
#: plain Python under the simulator.
TARGET = Target("cuda", _PRIMITIVES, _compile_element)

_square = TARGET.element(square)
_drop = TARGET.element(drop)
_philox = TARGET.element(philox_source)
_add_tiles = TARGET.element(add_tiles)


# -- launch shapes --------------------------------------------------------------------------------


def max_blocks():
    """The largest grid a launch gets: :data:`BLOCKS_PER_SM` per SM of the current device."""
    if SIMULATOR:
        return MAX_BLOCKS
    return min(MAX_BLOCKS, cuda.get_current_device().MULTIPROCESSOR_COUNT * BLOCKS_PER_SM)


def blocks_for(units):
    """Blocks for ``units`` units of work (tiles, or blocks' worth of items): one each, up to
    :func:`max_blocks`, at least one."""
    return max(1, min(int(units), max_blocks()))


def configure(kernel, blocks, threads=None, stream=0):
    """``kernel[blocks, threads, stream]`` without numba-cuda's low-occupancy warning: a small
    buffer gets a small grid on purpose (and ``filterwarnings = error`` would make it an error)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return kernel[blocks, threads or THREADS_PER_BLOCK, stream]


def tile_table(segments):
    """The tile table of ``(start, stop, group)`` segments: :func:`~.chunks.chunk_table` with
    :data:`TILE_SIZE` (read when called)."""
    return chunk_table(segments, chunk_size=TILE_SIZE)


def launch_shape(size):
    """``{"tiles", "blocks", "threads", "elements_per_thread"}`` of a rule kernel over ``size``
    elements in one group (what ``bench/gpu_check.sh`` prints)."""
    tiles = -(-int(size) // TILE_SIZE)
    blocks = blocks_for(tiles)
    return {"size": int(size), "tiles": tiles, "blocks": blocks, "threads": THREADS_PER_BLOCK,
            "elements_per_thread": -(-int(size) // (blocks * THREADS_PER_BLOCK)) if size else 0}


# -- update rules ---------------------------------------------------------------------------------


def tiled_step(param, state, grad, bounds, groups, table, scalars):
    """One step of a rule over the tile table; ``prologue`` and ``apply`` are bound per rule.
    A tile of group -1 is left alone (parameters that do not step this time)."""
    for t in range(cuda.blockIdx.x, groups.size, cuda.gridDim.x):
        if groups[t] >= 0:
            chunk = prologue(param, table[groups[t]], scalars)  # noqa: F821
            for i in range(bounds[t] + uint64(cuda.threadIdx.x), bounds[t + 1], uint64(cuda.blockDim.x)):
                apply(param, state, grad, i, chunk)


@functools.cache
def rule_kernel(rule):
    """The CUDA kernel of ``rule`` (compiled on first launch for the argument types).
    Unchecked: it trusts its arguments, which the optimizers check."""
    if rule.tensorwise is not None:
        raise ValueError(f"rule {rule.name!r} sums over tensors: launch it with TensorwiseLaunch")
    if rule.matrixwise is not None:
        raise ValueError(f"rule {rule.name!r} transforms matrices: launch it with MatrixwiseLaunch")
    names = TARGET.names(tiled_step, {"prologue": rule.prologue,
                                      "apply": TARGET.element(apply, **rule.element_bindings())})
    return cuda.jit(rebound(tiled_step, names, rule.name))


def rule_launch(rule, arguments, stream=0):
    """``rule``'s kernel specialised for the types of ``arguments`` (the kernel's, in order)
    and configured for their tile table (and ``stream``), once: a step then launches it with no
    type resolution (the scalars' types do not change between steps, only their values)."""
    kernel = rule_kernel(rule)
    if not SIMULATOR:
        kernel = kernel.specialize(*arguments)
    return configure(kernel, blocks_for(arguments[4].size), stream=stream)


# -- rules with per-tensor sums (see kernels/tensorwise.py for the order the sums take) ----------


@cuda.jit(device=True, inline=True)
def _lanes_tree(lanes, tid):
    """``lanes[:, 0]`` becomes the sum of each row of ``lanes`` by the fixed tree (LANES threads)."""
    cuda.syncthreads()
    half = LANES // 2
    while half > 0:
        if tid < half:
            lanes[0, tid] += lanes[0, tid + half]
            lanes[1, tid] += lanes[1, tid + half]
        cuda.syncthreads()
        half //= 2


@cuda.jit(device=True, inline=True)
def _tile_sums(lanes, tid, first, second, out, t):
    """Row ``t`` of ``out``: each thread's two sums (``first``, ``second``) added by the fixed
    tree (a tile's, or Adafactor's row's)."""
    lanes[0, tid] = first
    lanes[1, tid] = second
    _lanes_tree(lanes, tid)
    if tid == 0:
        out[t, 0] = lanes[0, 0]
        out[t, 1] = lanes[1, 0]
    cuda.syncthreads()


def tensorwise_norms(param, state, grad, bounds, groups, table, scalars, partial):
    """The first pass: a block of ``LANES`` threads per tile; thread ``j`` adds the squares of
    elements ``j, j + LANES, ...`` of the tile in order, then the block adds by the fixed tree."""
    lanes = cuda.shared.array((2, LANES), float64)
    tid = cuda.threadIdx.x
    for t in range(cuda.blockIdx.x, groups.size, cuda.gridDim.x):
        if groups[t] >= 0:
            chunk = prologue(param, table[groups[t]], scalars)  # noqa: F821
            param_squares = float64(0.0)
            direction_squares = float64(0.0)
            for i in range(bounds[t] + uint64(tid), bounds[t + 1], uint64(LANES)):
                p, u = measure(param, state, grad, i, chunk)  # noqa: F821
                param_squares += square(p)  # noqa: F821
                direction_squares += square(u)  # noqa: F821
            _tile_sums(lanes, tid, param_squares, direction_squares, partial, t)


@cuda.jit
def tensorwise_sums(groups, tensor_tiles, partial, sums):
    """Per tensor (a thread each, the grid striding over them), its tiles' sums in tile order."""
    for k in range(cuda.grid(1), tensor_tiles.size - 1, cuda.gridsize(1)):
        _add_tiles(k, groups, tensor_tiles, partial, sums)


def tensorwise_apply(param, state, bounds, groups, table, scalars, tile_tensor, sums):
    """The second pass: per tile its tensor's ratio and step size, then every element."""
    for t in range(cuda.blockIdx.x, groups.size, cuda.gridDim.x):
        if groups[t] >= 0:
            chunk = prologue(param, table[groups[t]], scalars)  # noqa: F821
            k = tile_tensor[t]
            step_size = scale(param, table[groups[t]], scalars, ratio(sums[k, 0], sums[k, 1]))  # noqa: F821
            for i in range(bounds[t] + uint64(cuda.threadIdx.x), bounds[t + 1], uint64(cuda.blockDim.x)):
                finish(param, state, i, chunk, step_size)  # noqa: F821


@functools.cache
def tensorwise_kernels(rule):
    """The first and second pass of a rule with per-tensor sums, compiled from its source."""
    norms = TARGET.names(tensorwise_norms, {"prologue": rule.prologue, "square": square,
                                            "measure": TARGET.element(measure, **rule.element_bindings())})
    steps = TARGET.names(tensorwise_apply, {"prologue": rule.prologue, "ratio": rule.tensorwise.ratio,
                                            "scale": rule.tensorwise.scale,
                                            "finish": TARGET.element(finish, **rule.finish_bindings())})
    return (cuda.jit(rebound(tensorwise_norms, norms, rule.name + "_norms")),
            cuda.jit(rebound(tensorwise_apply, steps, rule.name + "_apply")))


class TensorwiseLaunch:
    """A step of a per-tensor rule over fixed buffers: three launches (the first pass, the
    per-tensor sums, the second pass) with the tensor tables and scratch sums on the device,
    allocated once; called as ``launch(*buffers, scalars)``."""

    def __init__(self, rule, arguments, tensors, stream=0):
        import numpy as np

        self._tile_tensor, self._tensor_tiles = tensors
        tiles, tensors_count = arguments[4].size, self._tensor_tiles.size - 1
        self.partial = cuda.device_array((max(1, tiles), 2), np.float64)
        self.sums = cuda.device_array((max(1, tensors_count), 2), np.float64)
        norms, steps = tensorwise_kernels(rule)
        self._norms = configure(norms, blocks_for(tiles), LANES, stream)
        self._sums = configure(tensorwise_sums, blocks_for(-(-tensors_count // THREADS_PER_BLOCK)), stream=stream)
        self._steps = configure(steps, blocks_for(tiles), stream=stream)
        self._empty = tiles == 0

    def __call__(self, param, state, grad, bounds, groups, table, scalars):
        if self._empty:
            return
        self._norms(param, state, grad, bounds, groups, table, scalars, self.partial)
        self._sums(groups, self._tensor_tiles, self.partial, self.sums)
        self._steps(param, state, bounds, groups, table, scalars, self._tile_tensor, self.sums)


# -- rules that transform each matrix whole (see kernels/matrixwise.py) ---------------------------


def matrix_stage(param, state, grad, bounds, groups, table, scalars, work):
    """Stage 1: a block per tile, the direction of each element into ``work``."""
    for t in range(cuda.blockIdx.x, groups.size, cuda.gridDim.x):
        if groups[t] >= 0:
            chunk = prologue(param, table[groups[t]], scalars)  # noqa: F821
            for i in range(bounds[t] + uint64(cuda.threadIdx.x), bounds[t + 1], uint64(cuda.blockDim.x)):
                stage(param, state, grad, work, i, chunk)  # noqa: F821


def matrix_land(param, work, bounds, groups, table, scalars, tile_tensor, dims):
    """Stage 3: per tile its tensor's step size, then every element from ``work``."""
    for t in range(cuda.blockIdx.x, groups.size, cuda.gridDim.x):
        if groups[t] >= 0:
            chunk = prologue(param, table[groups[t]], scalars)  # noqa: F821
            k = tile_tensor[t]
            step_size = scale(param, table[groups[t]], scalars, dims[k, 0], dims[k, 1])  # noqa: F821
            for i in range(bounds[t] + uint64(cuda.threadIdx.x), bounds[t + 1], uint64(cuda.blockDim.x)):
                land(param, work, i, chunk, step_size)  # noqa: F821


@functools.cache
def matrix_kernels(rule):
    """Stages 1 and 3 of a rule with ``matrixwise``, compiled from its source."""
    staged, landed = matrix_bindings(rule)
    first = TARGET.names(matrix_stage, {"prologue": rule.prologue, "stage": TARGET.element(stage, **staged)})
    second = TARGET.names(matrix_land, {"prologue": rule.prologue, "scale": rule.matrixwise.scale,
                                        "land": TARGET.element(land, **landed)})
    return (cuda.jit(rebound(matrix_stage, first, rule.name + "_stage")),
            cuda.jit(rebound(matrix_land, second, rule.name + "_land")))


class MatrixwiseLaunch:
    """A step of a matrix rule over fixed buffers: stage 1, the matrix products on CuPy (on the
    launch's stream) over a scratch buffer on the device, and stage 3; the scratch buffer and
    the tensor tables allocated once. CuPy is needed (``pip install cupy-cuda13x``): numba has
    no matrix products. Every matrix is transformed, also one whose tensor skips this step
    (its result is not used): deciding which step would read the tile table back to the host."""

    def __init__(self, rule, arguments, tensors, stream=0):
        try:
            import cupy
        except ImportError as error:
            raise RuntimeError(f"rule {rule.name!r} runs its matrix products on CuPy on CUDA, which is not "
                               "installed: pip install cupy-cuda13x (or cupy-cuda12x)") from error
        param = arguments[0]
        self._tile_tensor, _, self.matrices = tensors
        self._dims = cuda.to_device(self.matrices.dims)
        self.work = cuda.device_array(max(1, param.size), param.dtype)
        self._work = cupy.asarray(self.work)[:param.size]
        self._transform = rule.matrixwise.transform
        self._cupy_stream = cupy.cuda.ExternalStream(int(stream)) if stream else None  # int: the handle
        first, second = matrix_kernels(rule)
        tiles = arguments[4].size
        self._first = configure(first, blocks_for(tiles), stream=stream)
        self._second = configure(second, blocks_for(tiles), stream=stream)
        self._empty = tiles == 0

    def __call__(self, param, state, grad, bounds, groups, table, scalars):
        if self._empty:
            return
        self._first(param, state, grad, bounds, groups, table, scalars, self.work)
        if self._cupy_stream is None:
            self.matrices.transform(self._work, self._transform, scalars)
        else:
            with self._cupy_stream:
                self.matrices.transform(self._work, self._transform, scalars)
        self._second(param, self.work, bounds, groups, table, scalars, self._tile_tensor, self._dims)


# -- rules with factored state (see kernels/factored.py for the stages and the order of the sums) --


def factored_rows(param, grad, groups, table, scalars, factors, tensor_tiles, row_start, row_length, row_tensor,
                  row_factor, row_cols, row_sums):
    """Stage 1: a block of ``LANES`` threads per row; thread ``j`` adds the squares of elements
    ``j, j + LANES, ...`` in order, then the block adds by the fixed tree."""
    lanes = cuda.shared.array((2, LANES), float64)
    tid = cuda.threadIdx.x
    for j in range(cuda.blockIdx.x, row_start.size, cuda.gridDim.x):
        group = groups[tensor_tiles[row_tensor[j]]]
        if group >= 0:
            chunk = prologue(param, table[group], scalars)  # noqa: F821
            param_squares = float64(0.0)
            grad_squares = float64(0.0)
            start = row_start[j]
            factored = row_cols[j] >= 0
            for i in range(start + tid, start + row_length[j], LANES):
                param_squares += square(param[i])  # noqa: F821
                if factored:
                    grad_squares += square(grad[i])  # noqa: F821
                else:
                    at = row_factor[j] + (i - start)
                    factors[at] = update(factors[at], grad[i], chunk)  # noqa: F821
            _tile_sums(lanes, tid, param_squares, grad_squares, row_sums, j)


def factored_columns(grad, groups, tensor_tiles, block_start, block_width, block_stride, block_rows, block_out,
                     block_tensor, col_sums):
    """Stage 2: a thread per column, its squares down the rows in order."""
    for index in range(cuda.grid(1), block_start.size * COLUMN_BLOCK, cuda.gridsize(1)):
        b = index // COLUMN_BLOCK
        c = index % COLUMN_BLOCK
        if c < block_width[b] and groups[tensor_tiles[block_tensor[b]]] >= 0:
            total = float64(0.0)
            for r in range(block_rows[b]):
                total += square(grad[block_start[b] + r * block_stride[b] + c])  # noqa: F821
            col_sums[block_out[b] + c] = total


def factored_tensors(param, groups, table, scalars, factors, means, tensor_tiles, tensor_rows, tensor_numel,
                     tensor_info, row_factor, row_sums, col_sums, tensor_values):
    """Stage 3: a thread per tensor (the grid striding over them)."""
    for k in range(cuda.grid(1), tensor_numel.size, cuda.gridsize(1)):
        group = groups[tensor_tiles[k]]
        if group >= 0:
            chunk = prologue(param, table[group], scalars)  # noqa: F821
            update_factors(k, param, scalars, table[group], factors, means, tensor_rows, tensor_numel,  # noqa: F821
                           tensor_info, row_factor, row_sums, col_sums, tensor_values, chunk)


def factored_directions(param, grad, groups, table, scalars, factors, means, tensor_tiles, row_start, row_length,
                        row_tensor, row_factor, row_cols, row_mean, row_sums):
    """Stage 4: a block per row, the squares of ``U`` by lanes and the tree."""
    lanes = cuda.shared.array((2, LANES), float64)
    tid = cuda.threadIdx.x
    for j in range(cuda.blockIdx.x, row_start.size, cuda.gridDim.x):
        group = groups[tensor_tiles[row_tensor[j]]]
        if group >= 0:
            chunk = prologue(param, table[group], scalars)  # noqa: F821
            total = float64(0.0)
            start = row_start[j]
            for i in range(start + tid, start + row_length[j], LANES):
                total += square(row_direction(grad, factors, means, i, i - start, row_factor[j], row_cols[j],  # noqa: F821
                                              row_mean[j], chunk))
            lanes[0, tid] = total
            lanes[1, tid] = 0.0
            _lanes_tree(lanes, tid)
            if tid == 0:
                row_sums[j, 1] = lanes[0, 0]
            cuda.syncthreads()


def factored_step_sizes(groups, scalars, tensor_tiles, tensor_rows, tensor_numel, row_sums, tensor_values):
    """Stage 5: a thread per tensor, its rows' sums in row order."""
    for k in range(cuda.grid(1), tensor_numel.size, cuda.gridsize(1)):
        if groups[tensor_tiles[k]] >= 0:
            total = float64(0.0)
            for j in range(tensor_rows[k], tensor_rows[k + 1]):
                total += row_sums[j, 1]
            tensor_values[k, 1] = step_size(tensor_values[k, 0], total, tensor_numel[k], scalars[6])  # noqa: F821


def factored_apply(param, grad, groups, table, scalars, factors, means, tensor_tiles, row_start, row_length,
                   row_tensor, row_factor, row_cols, row_mean, tensor_values):
    """Stage 6: a block per row, ``U`` again and the step."""
    for j in range(cuda.blockIdx.x, row_start.size, cuda.gridDim.x):
        k = row_tensor[j]
        group = groups[tensor_tiles[k]]
        if group >= 0:
            chunk = prologue(param, table[group], scalars)  # noqa: F821
            size = param.dtype.type(tensor_values[k, 1])
            start = row_start[j]
            for i in range(start + cuda.threadIdx.x, start + row_length[j], cuda.blockDim.x):
                u = row_direction(grad, factors, means, i, i - start, row_factor[j], row_cols[j], row_mean[j],  # noqa: F821
                                  chunk)
                param[i] = step(param[i], u, chunk, size)  # noqa: F821


@functools.cache
def factored_kernels(rule):
    """The six stages of a rule with factored state, compiled from its source."""
    from .factored import _bindings, row_direction, update_factors

    bindings = _bindings(rule)
    bindings["square"] = square
    bindings["row_direction"] = TARGET.element(row_direction, estimate=bindings["estimate"],
                                               direction=bindings["direction"])
    bindings["update_factors"] = TARGET.element(update_factors, alpha=bindings["alpha"], factor=bindings["factor"],
                                                row_mean_of=bindings["row_mean_of"])
    kernels = []
    for function in (factored_rows, factored_columns, factored_tensors, factored_directions, factored_step_sizes,
                     factored_apply):
        names = TARGET.names(function, bindings)
        kernels.append(cuda.jit(rebound(function, names, f"{rule.name}_{function.__name__}")))
    return tuple(kernels)


class FactoredLaunch:
    """A step of a factored rule over fixed buffers: six launches, with the layout's tables and
    the scratch sums on the device, allocated once; called as ``launch(*buffers, scalars)``."""

    def __init__(self, rule, arguments, tensors, stream=0):
        import numpy as np

        _, self._tensor_tiles, layout, self.factors = tensors
        param = arguments[0]
        tables = [cuda.to_device(table) for table in layout.tables()]
        (self._row_start, self._row_length, self._row_tensor, self._row_factor, self._row_cols, self._row_mean,
         *self._blocks, self._tensor_rows, self._tensor_numel, self._tensor_info) = tables
        rows, tensors_count = layout.row_start.size, layout.tensor_numel.size
        self.means = cuda.device_array(max(1, layout.means), param.dtype)
        self.row_sums = cuda.device_array((max(1, rows), 2), np.float64)
        self.col_sums = cuda.device_array(max(1, layout.size), np.float64)
        self.tensor_values = cuda.device_array((max(1, tensors_count), 2), np.float64)
        first, columns, per_tensor, directions, sizes, apply_ = factored_kernels(rule)
        self._rows = configure(first, blocks_for(rows), LANES, stream)
        self._columns = configure(columns, blocks_for(-(-layout.block_start.size * COLUMN_BLOCK // THREADS_PER_BLOCK)),
                                  stream=stream)
        self._per_tensor = configure(per_tensor, blocks_for(-(-tensors_count // THREADS_PER_BLOCK)), stream=stream)
        self._directions = configure(directions, blocks_for(rows), LANES, stream)
        self._sizes = configure(sizes, blocks_for(-(-tensors_count // THREADS_PER_BLOCK)), stream=stream)
        self._apply = configure(apply_, blocks_for(rows), stream=stream)
        self._empty = rows == 0

    def __call__(self, param, state, grad, bounds, groups, table, scalars):
        if self._empty:
            return
        rows = (self._row_start, self._row_length, self._row_tensor, self._row_factor, self._row_cols)
        self._rows(param, grad, groups, table, scalars, self.factors, self._tensor_tiles, *rows, self.row_sums)
        self._columns(grad, groups, self._tensor_tiles, *self._blocks, self.col_sums)
        self._per_tensor(param, groups, table, scalars, self.factors, self.means, self._tensor_tiles, self._tensor_rows,
                         self._tensor_numel, self._tensor_info, self._row_factor, self.row_sums, self.col_sums,
                         self.tensor_values)
        self._directions(param, grad, groups, table, scalars, self.factors, self.means, self._tensor_tiles, *rows,
                         self._row_mean, self.row_sums)
        self._sizes(groups, scalars, self._tensor_tiles, self._tensor_rows, self._tensor_numel, self.row_sums,
                    self.tensor_values)
        self._apply(param, grad, groups, table, scalars, self.factors, self.means, self._tensor_tiles, *rows,
                    self._row_mean, self.tensor_values)


# -- the L2 penalty -------------------------------------------------------------------------------


@cuda.jit
def tile_penalties(param, bounds, groups, table, column, partial):
    """``partial[t] = lambda / 2 * sum(x**2)`` over tile ``t``, summed in float64 over the
    block (a tree), with ``lambda = table[group, column]``."""
    sums = cuda.shared.array(MAX_THREADS, float64)
    tid = cuda.threadIdx.x
    for t in range(cuda.blockIdx.x, groups.size, cuda.gridDim.x):
        total = float64(0.0)
        for i in range(bounds[t] + uint64(tid), bounds[t + 1], uint64(cuda.blockDim.x)):
            total += _square(param[i])
        partial[t] = 0.5 * table[groups[t], column] * _block_sum(sums, total)


@cuda.jit(device=True, inline=True)
def _block_sum(sums, value):
    """The sum of every thread's ``value`` over the block, by a fixed tree (blockDim a power
    of two); every thread gets it."""
    tid = cuda.threadIdx.x
    sums[tid] = value
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if tid < stride:
            sums[tid] += sums[tid + stride]
        cuda.syncthreads()
        stride //= 2
    total = sums[0]
    cuda.syncthreads()
    return total


@cuda.jit
def sum_partials(partial, out):
    """``out[0] = sum(partial)`` with one block: each thread adds a contiguous run, then a tree.
    The order is fixed by the launch, so the result is the same on every call."""
    sums = cuda.shared.array(MAX_THREADS, float64)
    threads = cuda.blockDim.x
    per_thread = (partial.size + threads - 1) // threads
    total = float64(0.0)
    for k in range(cuda.threadIdx.x * per_thread, min(partial.size, (cuda.threadIdx.x + 1) * per_thread)):
        total += partial[k]
    total = _block_sum(sums, total)
    if cuda.threadIdx.x == 0:
        out[0] = total


@functools.cache
def tile_penalties_bfloat16():
    """:func:`tile_penalties` of bfloat16 parameters, given as their uint16 bits (the square
    of each value widened to float32, as the CPU's ``l2_penalty_bfloat16``)."""
    from .penalty import _square_bits
    from .quantized import bfloat16_value

    square_of_bits = TARGET.element(_square_bits, bfloat16_value=bfloat16_value)
    source = tile_penalties.py_func
    return cuda.jit(rebound(source, {"_square": square_of_bits}, "tile_penalties_bfloat16"))


class Penalty:
    """The L2 penalty of one optimizer's buffer on the device, with its scratch allocated once:
    two launches and one 8-byte copy back per call. ``bfloat16``: ``param`` holds bfloat16
    parameters' uint16 bits."""

    def __init__(self, param, bounds, groups, table, column, bfloat16=False):
        import numpy as np

        self._arguments = (param, bounds, groups, table, column)
        self._partial = cuda.device_array(max(1, groups.size), np.float64)
        self._total = cuda.device_array(1, np.float64)
        self._host = cuda.pinned_array(1, np.float64) if not SIMULATOR else np.zeros(1)
        self._used = self._partial[:groups.size]
        self._tiles = configure(tile_penalties_bfloat16() if bfloat16 else tile_penalties, blocks_for(groups.size))
        self._sum = configure(sum_partials, 1)
        self._empty = groups.size == 0

    def __call__(self):
        if self._empty:
            return 0.0
        self._tiles(*self._arguments, self._partial)
        self._sum(self._used, self._total)
        self._total.copy_to_host(self._host)
        return float(self._host[0])


# -- int8 and bfloat16 state (see kernels/quantized.py) -----------------------------------------------


def int8_tiles(param, codes, absmax, grad, bounds, groups, table, scalars, key0, key1, step, offset):
    """One step of a rule with int8 state: a block per quantization block (a tile); its threads
    decode, update and keep the new values in shared memory, then per row take the maximum by a
    tree over the threads (a power of two) and encode. The maximum is exact, so the codes are
    the CPU's. Over bfloat16 parameters (``PARAM_WORDS``) each thread runs its element's Philox
    counter of :data:`~.quantized.PARAM_STREAM` (the CPU's words) to round the parameter."""
    scratch = cuda.shared.array((3, QUANTIZED_BLOCK), float32)
    lanes = cuda.shared.array(MAX_THREADS, uint32)
    scales = cuda.local.array(3, float32)
    like = cuda.local.array(1, float32)
    rows = codes.shape[0]
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    for t in range(cuda.blockIdx.x, groups.size, cuda.gridDim.x):
        if groups[t] >= 0:
            chunk = prologue(like, table[groups[t]], scalars)  # noqa: F821
            start = bounds[t]
            n = bounds[t + 1] - start
            _block_scales_into(scales, absmax, t, rows)
            for j in range(uint64(tid), n, uint64(threads)):
                i = start + j
                pword = uint32(0)
                if PARAM_WORDS:  # noqa: F821
                    pword = _element_word(offset + i, uint64(PARAM_STREAM), step, key0, key1)
                p, values = update(value(param, i), decode(codes, scales, i), value(grad, i), chunk)  # noqa: F821
                put(param, i, p, pword)  # noqa: F821
                keep(scratch, j, values)  # noqa: F821
            encode_block(scratch, lanes, codes, absmax, t, start, n, tid, threads)  # noqa: F821


def encode_block(scratch, lanes, codes, absmax, t, start, n, tid, threads):
    """Block ``t``'s new state, which its threads kept in ``scratch``, encoded: per row the
    maximum magnitude by a tree over the threads (a power of two; exact, so the codes are the
    CPU's), the new absmax and the codes; ``encode_row`` is bound per rule (see
    :func:`_block_encoder`: a device function, as it synchronises the block)."""
    cuda.syncthreads()
    for k in range(codes.shape[0]):
        lanes[tid] = row_maximum(scratch, k, n, tid, threads)
        cuda.syncthreads()
        half = threads // 2
        while half > 0:
            if tid < half:
                lanes[tid] = max(lanes[tid], lanes[tid + half])
            cuda.syncthreads()
            half //= 2
        top = bits_float(lanes[0])  # noqa: F821
        encode_row(k, scratch, codes, start, n, tid, threads, inverse(top))  # noqa: F821
        cuda.syncthreads()  # every thread has read lanes[0] before it changes
        if tid == 0:
            absmax[k, t] = top


@element
def _no_encoding(scratch, lanes, codes, absmax, t, start, n, tid, threads):
    """bfloat16: each element's state was stored as it stepped."""


@element
def _block_scales_into(scales, absmax, t, rows):
    for k in range(rows):
        scales[k] = absmax[k, t]


@element
def _no_scales_into(scales, absmax, t, rows):
    """bfloat16: no scales."""


def encoded_tensorwise_norms(param, state, absmax, grad, bounds, groups, table, scalars, partial):
    """The first pass of a per-tensor rule over int8 or bfloat16 state (the CPU's
    :func:`~.quantized.encoded_tensorwise_step`): a block of ``LANES`` threads per tile; thread
    ``j`` adds the squares of elements ``j, j + LANES, ...`` (the direction from the decoded
    state; nothing written), then the fixed tree."""
    lanes = cuda.shared.array((2, LANES), float64)
    scales = cuda.local.array(3, float32)
    like = cuda.local.array(1, float32)
    rows = state.shape[0]
    tid = cuda.threadIdx.x
    for t in range(cuda.blockIdx.x, groups.size, cuda.gridDim.x):
        if groups[t] >= 0:
            chunk = prologue(like, table[groups[t]], scalars)  # noqa: F821
            scales_into(scales, absmax, t, rows)  # noqa: F821
            param_squares = float64(0.0)
            direction_squares = float64(0.0)
            for i in range(bounds[t] + uint64(tid), bounds[t + 1], uint64(LANES)):
                u = direction_at(param, state, scales, grad, i, chunk)  # noqa: F821
                param_squares += square(param[i])  # noqa: F821
                direction_squares += square(u)  # noqa: F821
            _tile_sums(lanes, tid, param_squares, direction_squares, partial, t)


def encoded_tensorwise_apply(param, state, absmax, grad, bounds, groups, table, scalars, key0, key1, step, offset,
                             tile_tensor, sums):
    """The second pass over int8 or bfloat16 state: per tile its tensor's step size and every
    element's step; bfloat16 (``WORDS``) stores each new state rounded with the element's
    Philox words of :data:`~.quantized.STATE_STREAM` (the CPU's words), int8 keeps it in shared
    memory and encodes the block (``finish_block``: :func:`encode_block`). The scratch shapes
    (``SCRATCH``, ``MAXIMA``) are the int8 block's, or a slot for bfloat16."""
    scratch = cuda.shared.array(SCRATCH, float32)  # noqa: F821
    lanes = cuda.shared.array(MAXIMA, uint32)  # noqa: F821
    scales = cuda.local.array(3, float32)
    like = cuda.local.array(1, float32)
    rows = state.shape[0]
    third = WORDS and rows > 2  # noqa: F821
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    for t in range(cuda.blockIdx.x, groups.size, cuda.gridDim.x):
        if groups[t] >= 0:
            chunk = prologue(like, table[groups[t]], scalars)  # noqa: F821
            start = bounds[t]
            n = bounds[t + 1] - start
            scales_into(scales, absmax, t, rows)  # noqa: F821
            tensor = tile_tensor[t]
            step_size = scale(like, table[groups[t]], scalars, ratio(sums[tensor, 0], sums[tensor, 1]))  # noqa: F821
            for j in range(uint64(tid), n, uint64(threads)):
                i = start + j
                word, word2 = uint32(0), uint32(0)
                if WORDS:  # noqa: F821
                    word = _element_word(offset + i, uint64(STATE_STREAM), step, key0, key1)
                if third:
                    word2 = _element_word(offset + i, uint64(STATE_STREAM + 1), step, key0, key1)
                step_at(param, state, scratch, grad, scales, i, j, chunk, step_size, word, word2)  # noqa: F821
            finish_block(scratch, lanes, state, absmax, t, start, n, tid, threads)  # noqa: F821


@functools.cache
def encoded_tensorwise_kernels(rule, kind):
    """The two passes of a rule with per-tensor sums over ``kind`` (``"int8"`` or
    ``"bfloat16"``) state, from the CPU's source."""
    bindings = encoded_tensorwise_bindings(TARGET, rule, kind)
    if kind == "int8":
        blocks = {"scales_into": _block_scales_into, "SCRATCH": (3, QUANTIZED_BLOCK), "MAXIMA": MAX_THREADS,
                  "finish_block": _block_encoder(rule)}
    else:
        blocks = {"scales_into": _no_scales_into, "SCRATCH": (1, 1), "MAXIMA": 1, "finish_block": _no_encoding}
    tag = "int8" if kind == "int8" else "bf16"
    norms = TARGET.names(encoded_tensorwise_norms, {**bindings, **blocks, "square": square})
    steps = TARGET.names(encoded_tensorwise_apply, {**bindings, **blocks})
    return (cuda.jit(rebound(encoded_tensorwise_norms, norms, f"{rule.name}_{tag}_norms")),
            cuda.jit(rebound(encoded_tensorwise_apply, steps, f"{rule.name}_{tag}_apply")))


class EncodedTensorwiseLaunch:
    """A step of a per-tensor rule over ``kind`` state and fixed buffers: the first pass, the
    per-tensor sums and the second pass (:data:`THREADS_PER_BLOCK` threads, a power of two, as
    the int8 maximum's tree needs), with the tensor tables and scratch sums on the device;
    called as ``launch(param, state, absmax, grad, bounds, groups, table, scalars, key0, key1,
    step, offset)``."""

    def __init__(self, rule, kind, tiles, tensors, stream=0):
        import numpy as np

        self._tile_tensor, self._tensor_tiles = tensors[:2]
        tensors_count = self._tensor_tiles.size - 1
        self.partial = cuda.device_array((max(1, tiles), 2), np.float64)
        self.sums = cuda.device_array((max(1, tensors_count), 2), np.float64)
        norms, steps = encoded_tensorwise_kernels(rule, kind)
        self._norms = configure(norms, blocks_for(tiles), LANES, stream)
        self._sums = configure(tensorwise_sums, blocks_for(-(-tensors_count // THREADS_PER_BLOCK)), stream=stream)
        self._steps = configure(steps, blocks_for(tiles), THREADS_PER_BLOCK, stream)
        self._empty = tiles == 0

    def __call__(self, param, state, absmax, grad, bounds, groups, table, scalars, key0, key1, step, offset):
        if self._empty:
            return
        self._norms(param, state, absmax, grad, bounds, groups, table, scalars, self.partial)
        self._sums(groups, self._tensor_tiles, self.partial, self.sums)
        self._steps(param, state, absmax, grad, bounds, groups, table, scalars, key0, key1, step, offset,
                    self._tile_tensor, self.sums)


@element
def row_maximum(scratch, k, n, tid, threads):
    """A thread's share of row ``k``'s maximum magnitude bits (elements ``tid, tid + threads, ...``)."""
    largest = uint32(0)
    for j in range(uint64(tid), n, uint64(threads)):
        largest = max(largest, magnitude_bits(scratch[k, j]))
    return largest


@element
def encode_row_of(scratch, k, codes, start, n, tid, threads, scale):
    """A thread's share of row ``k``'s codes; ``ENCODE`` and ``SIGN`` are bound per row."""
    for j in range(uint64(tid), n, uint64(threads)):
        codes[k, start + j] = encode(scratch[k, j] * scale, ENCODE, SIGN)  # noqa: F821


@element
def _encode_row(k, scratch, codes, start, n, tid, threads, scale):
    if k == 0:
        row0(scratch, k, codes, start, n, tid, threads, scale)  # noqa: F821
    elif k == 1:
        row1(scratch, k, codes, start, n, tid, threads, scale)  # noqa: F821
    else:
        row2(scratch, k, codes, start, n, tid, threads, scale)  # noqa: F821


@element
def _element_word(whole, stream, step, key0, key1):
    """Element ``whole``'s Philox word of ``stream``: word ``whole % 4`` of counter
    ``whole // 4`` (the CPU's words, as dropout counts them)."""
    j = whole >> uint64(2)
    w0, w1, w2, w3 = _philox(j & MASK32, j >> SHIFT32, stream, step, key0, key1)
    lane = whole & uint64(3)
    if lane == uint64(0):
        return uint32(w0)
    if lane == uint64(1):
        return uint32(w1)
    if lane == uint64(2):
        return uint32(w2)
    return uint32(w3)


def rounded_tiles(param, state, grad, bounds, groups, table, scalars, key0, key1, step, offset):
    """One step of a rule that rounds stochastically (bfloat16 state, bfloat16 parameters or
    both; ``STATE_WORDS`` and ``PARAM_WORDS`` say which) over the tile table: each thread runs
    the Philox counters of its element (``(offset + i) // 4``, word ``(offset + i) % 4``: the
    CPU's words) and rounds. The chunk's constants are float32 (``like``: the prologue reads
    only its dtype)."""
    two_streams = state.shape[0] > 2
    like = cuda.local.array(1, float32)
    for t in range(cuda.blockIdx.x, groups.size, cuda.gridDim.x):
        if groups[t] >= 0:
            chunk = prologue(like, table[groups[t]], scalars)  # noqa: F821
            for i in range(bounds[t] + uint64(cuda.threadIdx.x), bounds[t + 1], uint64(cuda.blockDim.x)):
                whole = offset + i
                word, word2, pword = uint32(0), uint32(0), uint32(0)
                if STATE_WORDS:  # noqa: F821
                    word = _element_word(whole, uint64(STATE_STREAM), step, key0, key1)
                    if two_streams:
                        word2 = _element_word(whole, uint64(STATE_STREAM + 1), step, key0, key1)
                if PARAM_WORDS:  # noqa: F821
                    pword = _element_word(whole, uint64(PARAM_STREAM), step, key0, key1)
                apply_rounded(param, state, grad, i, chunk, word, word2, pword)  # noqa: F821


@functools.cache
def _block_encoder(rule):
    """:func:`encode_block` for ``rule``'s rows: a device function (not an element, which the
    simulator runs as plain Python without its ``cuda.syncthreads``)."""
    names = TARGET.names(encode_block, {"encode_row": _encode_rows(rule)})
    return cuda.jit(device=True, inline=True)(rebound(encode_block, names, rule.name + "_encode_block"))


def _encode_rows(rule):
    """``encode_row(k, ...)``: row ``k``'s share of a thread's codes, each row's map bound in."""
    rows = [TARGET.element(encode_row_of, ENCODE=encode_constants, SIGN=sign)
            for _, _, encode_constants, sign in quantized.row_codecs(rule.state)]
    rows += rows[:1] * (3 - len(rows))  # rows a rule lacks are never called
    return TARGET.element(_encode_row, row0=rows[0], row1=rows[1], row2=rows[2])


@functools.cache
def int8_kernel(rule, bfloat16_params=False):
    """The CUDA kernel of an element-wise ``rule`` with int8 state over float32 or bfloat16
    parameters (the CPU's element source)."""
    names = TARGET.names(int8_tiles, {"prologue": rule.prologue, **int8_bindings(TARGET, rule, bfloat16_params),
                                      "encode_block": _block_encoder(rule)})
    return cuda.jit(rebound(int8_tiles, names, rule.name + "_int8" + ("_bf16p" if bfloat16_params else "")))


def bfloat16_kernel(rule):
    """The CUDA kernel of an element-wise ``rule`` with bfloat16 state over float32 parameters."""
    return rounded_kernel(rule, "bfloat16", False)


@functools.cache
def rounded_kernel(rule, state_kind, bfloat16_params):
    """The CUDA kernel of an element-wise ``rule`` with ``state_kind`` state (``"bfloat16"`` or
    None: float32) over float32 or (``bfloat16_params``) bfloat16 parameters, the CPU's
    :func:`~.quantized.rounded_kernel` from the same source."""
    apply = TARGET.element(apply_rounded, **rounded_bindings(TARGET, rule, state_kind, bfloat16_params))
    state_words = state_kind == "bfloat16" and len(rule.state) > 0
    names = TARGET.names(rounded_tiles, {"prologue": rule.prologue, "apply_rounded": apply,
                                         "STATE_WORDS": state_words, "PARAM_WORDS": bool(bfloat16_params)})
    name = f"{rule.name}_{'bf16' if state_words else 'f32'}{'_bf16p' if bfloat16_params else ''}"
    return cuda.jit(rebound(rounded_tiles, names, name))


def quantized_launch(kind, rule, tiles, stream=0, bfloat16_params=False):
    """The configured CUDA kernel of ``rule`` with ``kind`` state (``"int8"``, ``"bfloat16"``
    or None: float32) over float32 or bfloat16 parameters and ``tiles`` tiles (the
    quantization blocks for int8, the tile table otherwise): :data:`THREADS_PER_BLOCK` threads
    a block, a power of two, as the int8 maximum's tree needs."""
    if kind == "int8":
        kernel = int8_kernel(rule, bool(bfloat16_params))
    else:
        kernel = rounded_kernel(rule, kind, bool(bfloat16_params))
    return configure(kernel, blocks_for(tiles), THREADS_PER_BLOCK, stream)


# -- dropout --------------------------------------------------------------------------------------

@cuda.jit
def dropout_step(x, offset, key0, key1, stream, step, threshold, scale):
    """Inverted dropout of ``x`` in place: the CPU kernel's mask, element for element.

    A block takes ``blockDim`` consecutive Philox counters at a time: each thread runs one
    counter and puts its four words in shared memory, then each thread takes every
    ``blockDim``-th of the block's ``4 * blockDim`` elements, so consecutive threads read and
    write consecutive elements (coalesced) instead of four elements each, four apart.
    """
    words = cuda.shared.array(MAX_WORDS, uint32)
    size = uint64(x.size)
    threads = uint64(cuda.blockDim.x)
    tid = uint64(cuda.threadIdx.x)
    first = offset // uint64(4)
    stop = (offset + size + uint64(3)) // uint64(4)
    for base in range(first + uint64(cuda.blockIdx.x) * threads, stop, uint64(cuda.gridDim.x) * threads):
        counter = base + tid
        if counter < stop:
            w0, w1, w2, w3 = _philox(counter & MASK32, counter >> SHIFT32, stream, step, key0, key1)
            words[4 * tid], words[4 * tid + 1], words[4 * tid + 2], words[4 * tid + 3] = w0, w1, w2, w3
        cuda.syncthreads()
        for lane in range(4):
            local = uint64(lane) * threads + tid
            element_index = base * uint64(4) + local
            if element_index >= offset and element_index - offset < size:
                _drop(x, element_index - offset, uint64(words[local]), threshold, scale)
        cuda.syncthreads()


def launch_dropout(x, offset, key0, key1, stream, step, threshold, scale):
    """:func:`dropout_step` over ``x`` with a grid for its Philox counters."""
    counters = 0 if x.size == 0 else (int(offset) + x.size + 3) // 4 - int(offset) // 4
    _configured(dropout_step, blocks_for(-(-counters // THREADS_PER_BLOCK)), THREADS_PER_BLOCK)(
        x, offset, key0, key1, stream, step, threshold, scale)


@functools.lru_cache(maxsize=256)
def _configured(kernel, blocks, threads):
    return configure(kernel, blocks, threads)


# -- buffers --------------------------------------------------------------------------------------


@cuda.jit
def fill(x, value):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        x[i] = value


def launch_fill(x, value):
    """``x[:] = value`` on the device (``x`` 1-D)."""
    _configured(fill, blocks_for(-(-x.size // THREADS_PER_BLOCK)), THREADS_PER_BLOCK)(x, value)


