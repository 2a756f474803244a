"""Inverted dropout whose masks are a pure function of (seed, stream, step, element index)."""

import functools
import math
import numbers

import numpy as np

from .. import checks as _checks
from .. import device as _device

_U32 = 2**32


def _uint(name, value, limit):
    """``value`` as a Python int in ``[0, limit)``; bools and non-integers are refused."""
    if type(value) is not int:  # the common case skips the slower abstract-class check
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {name}={value!r}")
        value = int(value)
    if not 0 <= value < limit:
        raise ValueError(f"{name} must lie in [0, {limit}), got {name}={value!r}")
    return value


def _probability(p):
    return _checks.in_range("p", p, 0.0, 1.0, high_inclusive=True)


def _buffer(name, x):
    """``x`` as a flat view: any shape, C-contiguous, writeable, float32 or float64."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype not in _checks.FLOAT_DTYPES:
        _checks.float_dtype(f"{name}.dtype", x.dtype)  # raises, naming the dtype
    flags = x.flags
    if not flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous, got strides {x.strides}")
    if not flags.writeable:
        raise ValueError(f"{name} must be writeable, got a read-only array")
    return x if x.ndim == 1 else x.reshape(-1)


def _mask_arguments(p, seed, stream, step, offset):
    """The kernel's uint64 scalars: offset, key words, stream, step and the keep threshold."""
    offset, key0, key1, stream, threshold = _fixed_arguments(
        p, _uint("seed", seed, 2**64), _uint("stream", stream, _U32), _uint("offset", offset, 2**62))
    return offset, key0, key1, stream, np.uint64(_uint("step", step, _U32)), threshold


@functools.lru_cache(maxsize=64)
def _fixed_arguments(p, seed, stream, offset):
    """The scalars that stay the same from one training step to the next, made once: making
    a NumPy scalar takes 0.6-0.8 µs here, so the five of them cost nearly as much as the
    kernel over 1e3 elements (about 4.5 µs)."""
    return (np.uint64(offset), np.uint64(seed & (_U32 - 1)), np.uint64(seed >> 32), np.uint64(stream),
            np.uint64(math.floor((1.0 - p) * _U32)))  # exact: scaling by 2**32 is exact


def dropout(x, p, *, seed, stream=0, step=0, offset=0):
    r"""Inverted dropout of ``x`` in place: each element is zeroed with probability ``p`` and
    the others are multiplied by :math:`1/(1-p)` (rounded once to ``x``'s dtype). Returns ``x``.

    The mask depends only on ``(seed, stream, step)`` and each element's index (``offset`` is
    the index of ``x``'s first element): the same on any thread count and any device, and
    :func:`dropout_backward` regenerates it instead of storing it. Use one ``stream`` per
    layer and the training step as ``step``.

    Parameters
    ----------
    x : ndarray, float32 or float64, C-contiguous, writeable (any shape)
        or a CUDA array (numba, CuPy, PyTorch: ``__cuda_array_interface__``), updated on the
        GPU by the CUDA twin, with the same mask bit for bit.
    p : float in [0, 1]
        ``p = 0`` leaves ``x`` unchanged and ``p = 1`` zeroes it, both exactly.
    seed : int in [0, 2**64)
    stream, step : int in [0, 2**32)
    offset : int >= 0

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import dropout
    >>> x = np.ones(8, np.float32)
    >>> dropout(x, 0.5, seed=7, step=1)
    array([0., 2., 2., 2., 0., 0., 2., 0.], dtype=float32)
    """
    return _dropout(x, p, seed, stream, step, offset, False)


def _dropout(x, p, seed, stream, step, offset, serial):
    on_gpu = _device.is_cuda_array(x)
    flat = _any_buffer("x", x)
    p = _probability(p)
    arguments = _mask_arguments(p, seed, stream, step, offset)
    if p == 0.0:
        return x
    if p == 1.0:
        if on_gpu:
            _device.fill(flat, 0)
        else:
            flat.fill(0)
        return x
    _run(flat, arguments, flat.dtype.type(1.0 / (1.0 - p)), on_gpu, serial)
    return x


def _run(flat, arguments, scale, on_gpu, serial=False):
    """The dropout kernel of ``flat``'s device over it (on the CPU, the single-threaded build
    with ``serial``, else the build for its size)."""
    if on_gpu:
        from ..kernels import cuda

        cuda.launch_dropout(flat, *arguments, scale)
    else:
        kernel, for_size, serial_kernel = _cpu_kernel()
        (serial_kernel if serial else for_size(kernel, flat.size))(flat, *arguments, scale)


@functools.cache
def _cpu_kernel():
    """The CPU kernel, the chooser of its serial or parallel build and its serial build,
    imported once on first use (an import in the function body costs 2 µs a call; ``import
    fastopt`` does not import Numba)."""
    from ..kernels import dropout
    from ..kernels.cpu import for_size, serial_twin

    return dropout.dropout_step, for_size, serial_twin(dropout.dropout_step)


def _any_buffer(name, x):
    if _device.is_cuda_array(x):
        return _device.flat_device_buffer(name, x, any_shape=True)
    return _buffer(name, x)


def dropout_backward(grad, p, *, seed, stream=0, step=0, offset=0):
    """The gradient of :func:`dropout` in place: the same mask, regenerated from the same
    ``(seed, stream, step, offset)``, applied to ``grad``. Returns ``grad``."""
    return dropout(grad, p, seed=seed, stream=stream, step=step, offset=offset)


def dropout_mask(size, p, *, seed, stream=0, step=0, offset=0, packed=False, device="cpu"):
    """The keep mask :func:`dropout` uses for ``size`` elements: a uint8 array of 1 (kept) and
    0 (dropped), or with ``packed=True`` the same bits packed eight to a byte, little-endian
    (``np.unpackbits(m, count=size, bitorder="little")`` unpacks it). With ``device="cuda"``
    the (unpacked) mask is made on the GPU and returned as a numba device array.

    The mask is dropout itself, run over a buffer of ones with a scale of 1, so it cannot
    differ from the mask :func:`dropout` applies."""
    size = _uint("size", size, 2**62)
    p = _probability(p)
    arguments = _mask_arguments(p, seed, stream, step, offset)
    _device.check_device("device", device)
    on_gpu = device == "cuda"
    if on_gpu and packed:
        raise ValueError("packed=True is not available with device='cuda' yet; unpacked masks are")
    mask = _device.cuda().device_array(size, np.uint8) if on_gpu else np.empty(size, np.uint8)
    if on_gpu:
        _device.fill(mask, 0 if p == 1.0 else 1)
    else:
        mask.fill(0 if p == 1.0 else 1)
    if 0.0 < p < 1.0 and size:
        _run(mask, arguments, np.uint8(1), on_gpu)
    return np.packbits(mask, bitorder="little") if packed else mask


class Dropout:
    """A dropout layer: :func:`dropout` in training mode, the identity in evaluation mode.

    Parameters
    ----------
    p : float in [0, 1]
    seed : int in [0, 2**64)
    stream : int in [0, 2**32)
        One per layer, so that layers sharing a seed draw independent masks.
    serial : bool, keyword-only
        On the CPU, always the single-threaded kernel (the same masks and values). Right
        between BLAS matrix products, whose threads keep spinning for a while after each call:
        there a multi-threaded kernel waits for the cores (see :class:`~fastopt.MLP`).

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import Dropout
    >>> layer = Dropout(0.25, seed=1, stream=3)
    >>> h = np.ones((2, 4), np.float32)
    >>> out = layer.forward(h, step=10)          # in place: out is h
    >>> grad = np.ones_like(h)
    >>> _ = layer.backward(grad, step=10)        # the same mask, regenerated
    >>> bool(np.array_equal(grad, h))
    True
    >>> layer.eval().forward(np.ones(3, np.float32), step=11)
    array([1., 1., 1.], dtype=float32)
    """

    def __init__(self, p, *, seed, stream=0, serial=False):
        self.p = _probability(p)
        _uint("seed", seed, 2**64)
        _uint("stream", stream, _U32)
        self.seed, self.stream = int(seed), int(stream)
        self.serial = _checks.boolean("serial", serial)
        self.training = True

    def train(self, mode=True):
        self.training = _checks.boolean("mode", mode)
        return self

    def eval(self):
        return self.train(False)

    def forward(self, x, step, offset=0):
        """Drop elements of ``x`` in place (training mode) and return it; ``offset`` places
        ``x`` in a larger buffer (see :func:`dropout`)."""
        if not self.training:
            _any_buffer("x", x)
            return x
        return _dropout(x, self.p, self.seed, self.stream, step, offset, self.serial)

    __call__ = forward

    def backward(self, grad, step, offset=0):
        """Apply the forward pass's mask of ``step`` (and ``offset``) to ``grad`` in place and
        return it."""
        if not self.training:
            _any_buffer("grad", grad)
            return grad
        return _dropout(grad, self.p, self.seed, self.stream, step, offset, self.serial)

    def __repr__(self):
        serial = ", serial=True" if self.serial else ""
        return f"Dropout(p={self.p}, seed={self.seed}, stream={self.stream}{serial}, training={self.training})"
