"""Where buffers live: ``"cpu"`` (numpy arrays) or ``"cuda"`` (numba.cuda device arrays).

A CUDA buffer given by the user (a numba device array, a CuPy array, a PyTorch CUDA tensor:
anything with ``__cuda_array_interface__``) is adopted as a zero-copy numba view of the same
memory. numba-cuda is imported only when a CUDA buffer is asked for.
"""

import numpy as np

from . import _checks

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
    """A numba device array over the same memory as ``array`` (zero-copy)."""
    if getattr(array, "__cuda_ndarray__", False):
        return array
    return cuda().as_cuda_array(array)


def flat_device_buffer(name, array, *, any_shape=False):
    """A zero-copy numba view of a CUDA array, checked as the kernels need it: C-contiguous,
    float32 or float64, and 1-D (or, with ``any_shape``, any shape, returned flattened)."""
    view = as_numba(array)
    _checks.float_dtype(f"{name}.dtype", view.dtype)
    if not view.is_c_contiguous():
        raise ValueError(f"{name} must be C-contiguous, got strides {view.strides}")
    if any_shape:
        return view.reshape(view.size)
    if view.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {view.shape}")
    return view


def zeros(size, dtype):
    """A CUDA buffer of ``size`` zeros (filled on the device, nothing copied from the host)."""
    buffer = cuda().device_array(size, dtype)
    fill(buffer, 0)
    return buffer


def fill(buffer, value):
    from .kernels import buffers_cuda

    if buffer.size:
        buffers_cuda.launch_fill(buffer, buffer.dtype.type(value))


def host_copy(buffer):
    """A host (numpy) copy of a CPU or CUDA buffer."""
    return buffer.copy() if isinstance(buffer, np.ndarray) else buffer.copy_to_host()


def copy_into(buffer, values):
    """Write host ``values`` into a CPU or CUDA ``buffer`` of the same size."""
    if isinstance(buffer, np.ndarray):
        np.copyto(buffer, values)
    else:
        buffer.copy_to_device(np.ascontiguousarray(values))


def to_device(array):
    """A CUDA copy of a host array (a device array is returned as it is)."""
    if isinstance(array, np.ndarray):
        return cuda().to_device(array)
    return array
