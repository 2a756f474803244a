"""Flat parameter buffers: every parameter of a model in one contiguous buffer."""

import math
import numbers
from collections.abc import Mapping

import numpy as np

from . import checks as _checks
from . import device as _device


def _shape(name, shape):
    if isinstance(shape, numbers.Integral):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"shape of {name!r} must be an int or a tuple of ints, got {shape!r}") from None
    for dim in dims:
        if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, numbers.Integral) or dim < 0:
            raise ValueError(f"shape of {name!r} must hold ints >= 0, got {shape!r}")
    return tuple(int(d) for d in dims)


class FlatParams:
    """All parameters of a model in one contiguous 1-D buffer, and a gradient buffer.

    Each named parameter is a view (with its shape) into :attr:`data`, and its gradient the
    view at the same place in :attr:`grad`. An optimizer then updates every parameter with one
    kernel call, however many tensors the model has.

    Parameters
    ----------
    shapes : mapping of str to int or tuple of int
        Parameter names and shapes, laid out in this order. Values start at zero.
    dtype : float32, float64 or "bfloat16"
        The dtype of both buffers. ``"bfloat16"`` (or ``ml_dtypes.bfloat16``; numpy has no
        bfloat16 of its own: ``pip install "fastopt[bfloat16]"``) keeps 2 bytes a parameter
        and a gradient: the optimizers step in float32 and write each new value back rounded
        stochastically (see :class:`~fastopt.optim.optimizer.Optimizer`), on the CPU or the GPU.
    device : "cpu" or "cuda"
        Where the buffers live: numpy arrays, or numba.cuda device arrays on the current GPU
        (an optimizer over them then runs its CUDA kernel). :meth:`to` moves them.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import FlatParams
    >>> params = FlatParams({"weight": (3, 2), "bias": 2})
    >>> params["weight"].shape, params.size
    ((3, 2), 8)
    >>> params["bias"][:] = 1.0
    >>> params.data
    array([0., 0., 0., 0., 0., 0., 1., 1.], dtype=float32)
    """

    def __init__(self, shapes, *, dtype=np.float32, device="cpu"):
        layout = self._layout(shapes)
        dtype = _checks.param_dtype("dtype", dtype)
        _device.check_device("device", device)
        size = sum(math.prod(shape) for _, shape in layout)
        zeros = np.zeros if device == "cpu" else _device.zeros
        self._adopt(layout, zeros(size, dtype), zeros(size, dtype), device)

    @classmethod
    def from_arrays(cls, arrays, *, dtype=np.float32, device="cpu"):
        """Copy the values of existing host arrays into a new flat buffer (on ``device``).

        ``arrays`` maps names to array-likes; each keeps its shape. The originals are left
        alone: use the returned object's views (``params[name]``) from now on.
        """
        _device.check_device("device", device)
        if not isinstance(arrays, Mapping):
            raise TypeError(f"arrays must be a mapping of names to arrays, got {type(arrays).__name__}")
        values = {}
        for name, value in arrays.items():
            array = np.asarray(value)
            if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
                    or _checks.is_bfloat16(array.dtype)):
                raise TypeError(f"array {name!r} must hold real numbers, got dtype {array.dtype}")
            values[name] = array
        params = cls({name: array.shape for name, array in values.items()}, dtype=dtype)
        for name, array in values.items():
            params[name] = array
        return params.to(device)

    @classmethod
    def wrap(cls, data, grad, shapes):
        """Adopt existing flat buffers without copying.

        ``data`` and ``grad`` must be 1-D, C-contiguous, writeable arrays of one dtype
        (float32, float64 or bfloat16) and of the size that ``shapes`` lays out: both numpy
        arrays, or both CUDA arrays (numba device arrays, CuPy arrays, PyTorch CUDA tensors:
        anything with ``__cuda_array_interface__``; a bfloat16 one says ``"<V2"``, as torch
        does), which are used in place, so that an optimizer updates the user's own GPU memory.
        """
        layout = cls._layout(shapes)
        for name, array in (("data", data), ("grad", grad)):
            if isinstance(array, np.ndarray) and type(array) is not np.ndarray and not isinstance(array, np.memmap):
                raise TypeError(f"{name} must be a plain numpy array (or a memmap), got a {type(array).__name__}: "
                                "its mask or matrix rules would not reach the kernels")
        device = _device.device_of("data", data)
        if _device.device_of("grad", grad) != device:
            raise TypeError(f"data and grad must live on the same device: data is a {device} array, "
                            f"grad a {_device.device_of('grad', grad)} array")
        if device == "cpu":
            _checks.flat_buffer("data", data, bfloat16_ok=True)
            _checks.flat_buffer("grad", grad, bfloat16_ok=True)
        else:
            data = _device.flat_device_buffer("data", data, bfloat16_ok=True)
            grad = _device.flat_device_buffer("grad", grad, bfloat16_ok=True)
        if grad.dtype != data.dtype:
            raise TypeError(f"grad must have the dtype of data ({data.dtype}), got {grad.dtype}")
        size = sum(math.prod(shape) for _, shape in layout)
        for name, buffer in (("data", data), ("grad", grad)):
            if buffer.size != size:
                raise ValueError(f"{name} must hold {size} elements for these shapes, got {buffer.size}")
        params = cls.__new__(cls)
        params._adopt(layout, data, grad, device)
        return params

    @staticmethod
    def _layout(shapes):
        if not isinstance(shapes, Mapping):
            raise TypeError(f"shapes must be a mapping of names to shapes, got {type(shapes).__name__}")
        layout = []
        for name, shape in shapes.items():
            if not isinstance(name, str):
                raise TypeError(f"parameter names must be str, got {name!r}")
            layout.append((name, _shape(name, shape)))
        return tuple(layout)

    def _adopt(self, layout, data, grad, device="cpu"):
        self._device = device
        self._data = data
        self._grad = grad
        self._layout_spec = layout
        self._slices = {}
        offset = 0
        for name, shape in layout:
            size = math.prod(shape)
            self._slices[name] = (offset, offset + size, shape)
            offset += size

    # -- the buffers ---------------------------------------------------------------------------

    @property
    def data(self):
        """The flat parameter buffer (1-D, C-contiguous)."""
        return self._data

    @property
    def grad(self):
        """The flat gradient buffer, laid out like :attr:`data`."""
        return self._grad

    @property
    def dtype(self):
        return np.dtype(self._data.dtype)

    @property
    def device(self):
        """``"cpu"`` or ``"cuda"``."""
        return self._device

    def to(self, device):
        """These parameters and gradients on ``device``: ``self`` if they are there already,
        else a copy (as ``torch.Tensor.to``). Build optimizers over the result."""
        _device.check_device("device", device)
        if device == self._device:
            return self
        if device == "cuda":
            data, grad = _device.to_device(self._data), _device.to_device(self._grad)
        else:
            data, grad = _device.host_copy(self._data), _device.host_copy(self._grad)
        params = type(self).__new__(type(self))
        params._adopt(self._layout_spec, data, grad, device)
        return params

    @property
    def size(self):
        """The total number of parameters."""
        return self._data.size

    @property
    def layout(self):
        """``((name, shape), ...)`` in buffer order."""
        return self._layout_spec

    @property
    def names(self):
        return tuple(name for name, _ in self._layout_spec)

    def segment(self, name):
        """``(start, stop)`` of a parameter in the flat buffers."""
        start, stop, _ = self._slice(name)
        return start, stop

    def _slice(self, name):
        try:
            return self._slices[name]
        except KeyError:
            raise KeyError(f"no parameter named {name!r}; the names are {list(self._slices)}") from None

    # -- views ---------------------------------------------------------------------------------

    def __getitem__(self, name):
        start, stop, shape = self._slice(name)
        return self._data[start:stop].reshape(shape)

    def __setitem__(self, name, value):
        start, stop, shape = self._slice(name)
        if self._device == "cuda" and _device.is_cuda_array(value):
            source = _device.as_numba(value)
            if tuple(source.shape) != shape:
                raise ValueError(f"value for {name!r} must have shape {shape}, got {tuple(source.shape)}")
            if source.dtype != self.dtype:
                raise TypeError(f"value for {name!r} must have dtype {self.dtype} (a device array is copied as it "
                                f"is, not converted), got {source.dtype}")
            _device.copy_into(self._data[start:stop], source.reshape(stop - start))
            return
        value = np.asarray(value)
        if value.shape != shape:
            raise ValueError(f"value for {name!r} must have shape {shape}, got {value.shape}")
        if self._device == "cuda":
            _device.copy_into(self._data[start:stop], np.asarray(value.reshape(-1), dtype=self.dtype))
        else:
            self._data[start:stop] = value.reshape(-1)

    def grad_of(self, name):
        """The gradient view of a parameter, with its shape."""
        start, stop, shape = self._slice(name)
        return self._grad[start:stop].reshape(shape)

    def views(self):
        """``{name: view}`` of every parameter."""
        return {name: self[name] for name in self.names}

    def grad_views(self):
        """``{name: view}`` of every gradient."""
        return {name: self.grad_of(name) for name in self.names}

    def __contains__(self, name):
        return name in self._slices

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self._layout_spec)

    def zero_grad(self):
        """Set every gradient to zero (on the device, for CUDA buffers)."""
        if self._device == "cuda":
            _device.fill(self._grad, 0)
        else:
            self._grad.fill(0)

    def __repr__(self):
        where = ", cuda" if self._device == "cuda" else ""
        return f"FlatParams({len(self)} parameters, {self.size} elements, {self.dtype}{where})"
