"""The CPU target: compile options, the primitives' CPU meaning, and the chunked kernels.

Every flag that changes how a CPU kernel is compiled lives here, so that a numerics decision is
made once for the whole library:

* ``cache=True``: a kernel is compiled on its first call with a new type signature and loaded
  from the on-disk cache in later processes; nothing is compiled eagerly at import.
* ``error_model="numpy"``: division by zero gives inf/NaN as in numpy, with no zero check per
  division (the check stops the loop vectorizer).
* ``fastmath=False``: no ``nnan``/``ninf`` flags (a NaN or inf in a gradient must reach the
  parameters) and no ``contract`` flag (LLVM may not fuse ``a*b + c`` on its own). Where a
  rule wants a fused multiply-add it writes ``fma``, here ``llvm.fma``.

A rule runs as :func:`chunked_step` with the rule's source bound in: threads take whole
chunks of the chunk table (:mod:`.chunks`), so no result depends on the thread count, and the
inner loop over a chunk has loop-invariant per-group values, so it vectorises.
"""

import functools
import hashlib
import math
from pathlib import Path

from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic

from . import primitives
from .chunks import CHUNK_SIZE
from .elements import Target, rebound
from .rule import apply

JIT_OPTIONS = dict(cache=True, error_model="numpy", fastmath=False, nogil=True)
#: Element functions: compiled into each kernel that calls them (and cached with it), where
#: LLVM inlines them. Not ``inline="always"``: Numba's IR inlining of functions that take and
#: return tuples trips the parfor pass's array analysis. ``forceinline`` (LLVM's
#: ``alwaysinline``) has them inlined in Numba's first module pass, before its loop vectoriser
#: runs: left to the inliner's cost model, a large element (AdamW's int8 decode and update) was
#: still a call when the vectoriser saw the loop, which then ran scalar in the single-threaded
#: builds (AdamW's int8 step over 8,192 elements took 3-4x its time).
ELEMENT_OPTIONS = dict(error_model="numpy", fastmath=False, nogil=True, forceinline=True)

#: Each parallel kernel's Python function and compile options, for :func:`serial_twin`.
_SOURCES = {}
_SERIAL_TWINS = {}


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` with one rounding (``llvm.fma``), for float32 or float64 of one type.

    Mixed types are refused at compile time instead of being silently promoted, so a float64
    scalar can never turn a float32 kernel into float64 arithmetic.
    """
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        llvm_type = context.get_value_type(signature.return_type)
        function_type = ir.FunctionType(llvm_type, [llvm_type] * 3)
        function = builder.module.declare_intrinsic("llvm.fma", [llvm_type], function_type)
        return builder.call(function, args)

    return a(a, b, c), codegen


@intrinsic
def float_bits(typingctx, x):
    """The bits of a float32 as a uint32 (an LLVM ``bitcast``)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(x), codegen


@intrinsic
def bits_float(typingctx, bits):
    """The float32 whose bits are the low 32 bits of an integer (an LLVM ``bitcast``; Numba
    widens 32-bit integer arithmetic to 64 bits)."""
    if not (isinstance(bits, types.Integer) and bits.bitwidth >= 32):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


def inline_helper(function):
    """Compile a CPU-only helper that Numba inlines into the kernels that call it."""
    return njit(inline="always", **ELEMENT_OPTIONS)(function)


#: The CPU's meaning of the primitives: ``llvm.fma``, a plain multiply (nothing contracts it
#: without the ``contract`` flag), ``math.sqrt`` (``sqrtss``/``sqrtsd``, correctly rounded),
#: and bit casts.
TARGET = Target("cpu", {"fma": fma, "mul": inline_helper(primitives.mul), "sqrt": math.sqrt,
                        "float_bits": float_bits, "bits_float": bits_float},
                njit(**ELEMENT_OPTIONS))


def chunked_step(param, state, grad, bounds, groups, table, scalars):
    """One step of a rule over the chunk table; ``prologue`` and ``apply`` are bound per rule.
    A chunk of group -1 is left alone (parameters that do not step this time)."""
    for c in prange(groups.size):
        if groups[c] >= 0:
            chunk = prologue(param, table[groups[c]], scalars)  # noqa: F821
            for i in range(bounds[c], bounds[c + 1]):
                apply(param, state, grad, i, chunk)


@functools.cache
def _source_digest():
    """A digest of every kernel source file. It is part of every cached kernel's name, so
    Numba's on-disk cache (keyed by a function's file and bytecode, not by the functions it
    calls or what its globals mean) never serves a kernel built from an older version of a
    rule, a primitive, Philox or a loop."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def rule_kernel(rule, parallel=True):
    """The CPU kernel of ``rule``: multi-threaded, or (``parallel=False``) its single-threaded
    build, which computes the same bits (its ``prange`` runs as ``range``). Built once.
    Unchecked: it trusts its arguments (sizes, dtypes, tables), which the optimizers check."""
    return _rule_kernel(rule, bool(parallel))


@functools.cache
def _rule_kernel(rule, parallel):
    if rule.tensorwise is not None:
        raise ValueError(f"rule {rule.name!r} sums over tensors: its kernel is kernels.tensorwise.kernel")
    if rule.matrixwise is not None:
        raise ValueError(f"rule {rule.name!r} transforms matrices: its kernels are kernels.matrixwise.kernels")
    names = TARGET.names(chunked_step, {"prologue": rule.prologue,
                                        "apply": TARGET.element(apply, **rule.element_bindings())})
    name = f"{rule.name}{'' if parallel else '_serial'}_{_source_digest()}"
    return njit(parallel=parallel, **JIT_OPTIONS)(rebound(chunked_step, names, name))


def rule_kernel_for_size(rule, size):
    """The build of ``rule``'s kernel to call over ``size`` elements (see :func:`for_size`)."""
    return _rule_kernel(rule, size > CHUNK_SIZE)


def parallel_kernel(function):
    """Compile ``function`` as a multi-threaded CPU kernel (``prange`` loops run in parallel)."""
    return _parallel(function, JIT_OPTIONS)


def reduction_kernel(function):
    """Compile a multi-threaded CPU reduction.

    The one opt-out from ``fastmath=False``: ``reassoc`` alone, so that a sum is split over
    SIMD lanes (measured 2.1x faster at 1e8 float32 elements). It adds no ``nnan``/``ninf``:
    a NaN or inf still reaches the result. No update kernel uses this.
    """
    return _parallel(function, {**JIT_OPTIONS, "fastmath": {"reassoc"}})


def _parallel(function, options):
    kernel = njit(parallel=True, **options)(_cached_name(function, function.__name__))
    _SOURCES[kernel] = function, options
    return kernel


def _cached_name(function, name):
    """A copy of ``function`` named ``name`` plus the kernel sources' digest (see
    :func:`_source_digest`): what Numba's on-disk cache keys the compiled kernel by."""
    return rebound(function, {}, f"{name}_{_source_digest()}")


def serial_twin(kernel):
    """The single-threaded build of a parallel kernel: the same Python function compiled
    without ``parallel=True`` (its ``prange`` runs as ``range``), so the same chunks get the
    same arithmetic and the results are the same bits. Compiled on first use.

    It is compiled from a copy of the function under a name of its own (``*_serial``):
    Numba keys its on-disk cache by function, not by compile flags, so one function compiled
    both ways would load one build's cache entry for the other.
    """
    twin = _SERIAL_TWINS.get(kernel)
    if twin is None:
        function, options = _SOURCES[kernel]
        twin = _SERIAL_TWINS[kernel] = njit(**options)(_cached_name(function, function.__name__ + "_serial"))
    return twin


def for_size(kernel, size):
    """The build of ``kernel`` to call over ``size`` elements: the serial twin when they fit
    in one chunk (one unit of parallel work, so starting the thread pool is all the parallel
    build adds: SGD over 1e3 float32 3.9 -> 1.3 µs, Adam 5.5 -> 2.7 µs, measured), else the
    parallel kernel."""
    return serial_twin(kernel) if size <= CHUNK_SIZE else kernel


__all__ = [
    "JIT_OPTIONS", "TARGET", "chunked_step", "fma", "for_size", "inline_helper", "parallel_kernel",
    "reduction_kernel", "rule_kernel", "rule_kernel_for_size", "serial_twin",
]
