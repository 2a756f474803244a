"""The array library a model computes with: NumPy on the CPU, CuPy on the GPU.

The model's matrix products and elementwise functions go through a backend's ``xp`` (the
``numpy`` or ``cupy`` module); the optimizer step and dropout are fastopt's own kernels, which
take the same memory as numba views. A model on the GPU keeps its weights as CuPy views of its
``FlatParams`` device buffers (zero-copy, through ``__cuda_array_interface__``), so the matrix
products read what the optimizer wrote and write the gradients the optimizer reads.

CuPy is optional and imported only when a model is put on the GPU.
"""

import numpy as np


class NumpyBackend:
    """Host arrays: the views of a CPU ``FlatParams`` are used as they are."""

    device = "cpu"
    xp = np

    @staticmethod
    def erf(z):
        from scipy.special import erf

        return erf(z)

    @staticmethod
    def asarray(array, dtype=None):
        return np.asarray(array, dtype=dtype)

    @staticmethod
    def to_host(array):
        return np.asarray(array)

    @staticmethod
    def kernel_view(array):
        return array


class CupyBackend:
    """CuPy arrays on the current GPU."""

    device = "cuda"

    def __init__(self):
        from .. import device as _device

        self._cuda = _device.cuda()  # first: without a GPU, installing CuPy would not help
        try:
            import cupy
            import cupyx.scipy.special
        except ImportError as error:
            raise RuntimeError(
                "a model on device='cuda' computes with CuPy, which is not installed: pip install "
                "'fastopt[cuda13]' (or [cuda12], after your driver's CUDA version), which brings it"
            ) from error
        self.xp = cupy
        self.erf = cupyx.scipy.special.erf

    def asarray(self, array, dtype=None):
        """A CuPy array of ``array`` (a host array is copied to the GPU; a device one, such as a
        view of a ``FlatParams`` device buffer, is not)."""
        return self.xp.asarray(array, dtype=dtype)

    def to_host(self, array):
        return self.xp.asnumpy(array)

    def kernel_view(self, array):
        # CuPy and numba both launch on the legacy default stream here, which orders the two
        # libraries' kernels, so the view needs no host-side synchronisation (sync=True, the
        # default, would block on every call).
        return self._cuda.as_cuda_array(array, sync=False)


_BACKENDS = {"cpu": NumpyBackend}


def for_device(device):
    """The backend for ``"cpu"`` or ``"cuda"`` (built on first use)."""
    backend = _BACKENDS.get(device)
    if backend is None:
        backend = _BACKENDS[device] = CupyBackend()
    return backend


def namespace(array):
    """``cupy`` for a CuPy array, otherwise ``numpy`` (for losses called on either)."""
    if type(array).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np
