"""Where buffers live: ``"cpu"`` (numpy arrays) or ``"cuda"`` (numba.cuda device arrays).

A CUDA buffer given by the user (a numba device array, a CuPy array, a PyTorch CUDA tensor:
anything with ``__cuda_array_interface__``) is adopted as a zero-copy numba view of the same
memory. numba-cuda is imported only when a CUDA buffer is asked for.

:func:`for_device` gives the object an optimizer holds for its device (:class:`Cpu` or
:class:`Cuda`): it allocates, cuts the buffer into the target's units of work, and builds a
rule's step and the L2 penalty, so that the optimizer never branches on the device's name.
"""

import functools

import numpy as np

from . import checks as _checks

DEVICES = ("cpu", "cuda")


def check_device(name, device):
    if device not in DEVICES:
        raise ValueError(f"{name} must be 'cpu' or 'cuda', got {name}={device!r}")
    return device


def cuda():
    """The ``numba.cuda`` module once a GPU (or the CUDA simulator) is usable; otherwise a
    RuntimeError that says what is missing."""
    try:
        from numba import cuda as module
    except ImportError as error:
        raise RuntimeError(
            "device='cuda' needs numba-cuda, which is not installed: pip install 'fastopt[cuda13]' "
            "(or [cuda12], after your driver's CUDA version)"
        ) from error
    if not module.is_available():
        raise RuntimeError(
            "device='cuda' needs an NVIDIA GPU with a working driver, and numba.cuda finds none "
            "here (numba.cuda.detect() says why); use device='cpu'"
        )
    return module


def device_of(name, array):
    """``"cpu"`` for a numpy array, ``"cuda"`` for an array with ``__cuda_array_interface__``."""
    if isinstance(array, np.ndarray):
        return "cpu"
    if is_cuda_array(array):
        return "cuda"
    raise TypeError(f"{name} must be a numpy array or a CUDA array (numba, CuPy or PyTorch, with "
                    f"__cuda_array_interface__), got {type(array).__name__}")


def is_cuda_array(array):
    """Whether ``array`` is GPU memory: a numba device array, or anything with
    ``__cuda_array_interface__`` (CuPy, PyTorch)."""
    if isinstance(array, np.ndarray):
        return False
    return getattr(array, "__cuda_ndarray__", False) or hasattr(array, "__cuda_array_interface__")


def as_numba(array):
    """A numba device array over the same memory as ``array`` (zero-copy). A 2-byte void
    (typestr ``"<V2"``) is how PyTorch describes a bfloat16 tensor, the typestr of ml_dtypes'
    bfloat16, and comes back typed so."""
    view = array if getattr(array, "__cuda_ndarray__", False) else cuda().as_cuda_array(array)
    return view.view(_checks.bfloat16()) if view.dtype == np.dtype("V2") else view


def flat_device_buffer(name, array, *, any_shape=False, bfloat16_ok=False):
    """A zero-copy numba view of a CUDA array, checked as the kernels need it: C-contiguous,
    float32 or float64 (or, ``bfloat16_ok``, bfloat16: see :func:`as_numba`), and 1-D (or, with
    ``any_shape``, any shape, returned flattened)."""
    view = as_numba(array)
    if bfloat16_ok:
        _checks.param_dtype(f"{name}.dtype", view.dtype)
    else:
        _checks.float_dtype(f"{name}.dtype", view.dtype)
    if not view.is_c_contiguous():
        raise ValueError(f"{name} must be C-contiguous, got strides {view.strides}")
    if any_shape:
        return view.reshape(view.size)
    if view.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {view.shape}")
    return view


def zeros(shape, dtype):
    """A CUDA buffer of ``shape`` zeros (filled on the device, nothing copied from the host)."""
    buffer = cuda().device_array(shape, dtype)
    fill(buffer, 0)
    return buffer


def fill(buffer, value):
    """``buffer[:] = value`` on the device; a bfloat16 buffer is filled through its uint16 bits
    (the value rounded to nearest, as numpy's assignment rounds it)."""
    from .kernels import cuda as kernels

    if buffer.size:
        kernels.launch_fill(bits(buffer.reshape(buffer.size)), bits(np.array(value, buffer.dtype))[()])


def bits(array):
    """A bfloat16 array (host or device) as its uint16 bits, any other as it is. numba-cuda
    hands a host array to the driver through Python's buffer protocol, which cannot describe
    ml_dtypes' bfloat16 ("cannot include dtype 'E' in a buffer"): bfloat16 crosses between
    host and device as uint16."""
    return array.view(np.uint16) if _checks.is_bfloat16(array.dtype) else array


def host_copy(buffer):
    """A host (numpy) copy of a CPU or CUDA buffer."""
    if isinstance(buffer, np.ndarray):
        return buffer.copy()
    return bits(buffer).copy_to_host().view(buffer.dtype)


def copy_into(buffer, values):
    """Write ``values`` (host, or device for a CUDA ``buffer``) into a CPU or CUDA ``buffer`` of
    the same size and, on the device, the same dtype."""
    if isinstance(buffer, np.ndarray):
        np.copyto(buffer, values)
    else:
        if not is_cuda_array(values):
            values = np.ascontiguousarray(values)
        bits(buffer).copy_to_device(bits(values))


def to_device(array):
    """A CUDA copy of a host array (a device array is returned as it is)."""
    if isinstance(array, np.ndarray):
        return cuda().to_device(bits(array)).view(array.dtype)
    return array


class Cpu:
    """Host buffers and the CPU kernels: chunks of :data:`~fastopt.kernels.chunks.CHUNK_SIZE`
    that threads take whole; buffers of one chunk or less run a kernel's serial build (same
    bits, no thread start)."""

    name = "cpu"

    @staticmethod
    def zeros(shape, dtype):
        return np.zeros(shape, dtype)

    @staticmethod
    def work_table(segments, tensors=False, blocks=False):
        from .kernels.chunks import TENSOR_TILE, chunk_table

        if blocks:  # int8 state's quantization blocks
            from .kernels.quantized import block_table

            return block_table(segments)
        return chunk_table(segments, TENSOR_TILE, merge=False) if tensors else chunk_table(segments)

    @staticmethod
    def tensor_table(segments):
        from .kernels.chunks import tensor_tiles

        return tensor_tiles(segments)

    @staticmethod
    def resident(array):
        return array

    @staticmethod
    def rule_step(rule, arguments, stream=0, tensors=None):
        from .kernels import cpu

        if rule.tensorwise is not None:
            from .kernels import tensorwise

            return tensorwise.CpuLaunch(rule, arguments[0].size, tensors)
        if rule.matrixwise is not None:
            from .kernels import matrixwise

            return matrixwise.CpuLaunch(rule, arguments[0].size, arguments[0].dtype, tensors)
        if rule.factored is not None:
            from .kernels import factored

            return factored.CpuLaunch(rule, arguments[0].size, arguments[0].dtype, tensors)
        return cpu.rule_kernel_for_size(rule, arguments[0].size)

    @staticmethod
    def penalty(param, bounds, groups, table, column, bfloat16=False):
        from .kernels import penalty
        from .kernels.cpu import for_size

        kernel = penalty.l2_penalty_bfloat16() if bfloat16 else penalty.l2_penalty
        return functools.partial(for_size(kernel, param.size), param, bounds, groups, table, column)


class Cuda:
    """Device buffers and the CUDA kernels: tiles of :data:`~fastopt.kernels.cuda.TILE_SIZE`,
    one block per tile at a time; the tables are copied to the device when built (the group
    table again when a weight decay changes), and a step's launch is specialised and
    configured once."""

    name = "cuda"

    def __init__(self):
        cuda()  # says what is missing when there is no usable GPU

    zeros = staticmethod(zeros)

    @staticmethod
    def work_table(segments, tensors=False, blocks=False):
        from .kernels import cuda as kernels
        from .kernels.chunks import TENSOR_TILE, chunk_table

        if blocks:  # int8 state's quantization blocks
            from .kernels.quantized import block_table

            tables = block_table(segments)
        else:
            tables = chunk_table(segments, TENSOR_TILE, merge=False) if tensors else kernels.tile_table(segments)
        return tuple(to_device(table) for table in tables)

    @staticmethod
    def tensor_table(segments):
        from .kernels.chunks import tensor_tiles

        return tuple(to_device(table) for table in tensor_tiles(segments))

    resident = staticmethod(to_device)

    @staticmethod
    def rule_step(rule, arguments, stream=0, tensors=None):
        from .kernels import cuda as kernels

        if rule.tensorwise is not None:
            return kernels.TensorwiseLaunch(rule, arguments, tensors, stream)
        if rule.matrixwise is not None:
            return kernels.MatrixwiseLaunch(rule, arguments, tensors, stream)
        if rule.factored is not None:
            return kernels.FactoredLaunch(rule, arguments, tensors, stream)
        return kernels.rule_launch(rule, arguments, stream)

    @staticmethod
    def penalty(param, bounds, groups, table, column, bfloat16=False):
        from .kernels import cuda as kernels

        return kernels.Penalty(param, bounds, groups, table, column, bfloat16)


@functools.cache
def for_device(device):
    """The :class:`Cpu` or :class:`Cuda` object for ``"cpu"`` or ``"cuda"``."""
    return Cpu() if check_device("device", device) == "cpu" else Cuda()
