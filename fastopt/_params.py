"""Flat parameter buffers: every parameter of a model in one contiguous buffer."""

import math
import numbers
from collections.abc import Mapping

import numpy as np

from . import _checks


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
    dtype : float32 or float64
        The dtype of both buffers.

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

    def __init__(self, shapes, *, dtype=np.float32):
        layout = self._layout(shapes)
        dtype = _checks.float_dtype("dtype", dtype)
        size = sum(math.prod(shape) for _, shape in layout)
        self._adopt(layout, np.zeros(size, dtype), np.zeros(size, dtype))

    @classmethod
    def from_arrays(cls, arrays, *, dtype=np.float32):
        """Copy the values of existing arrays into a new flat buffer.

        ``arrays`` maps names to array-likes; each keeps its shape. The originals are left
        alone: use the returned object's views (``params[name]``) from now on.
        """
        if not isinstance(arrays, Mapping):
            raise TypeError(f"arrays must be a mapping of names to arrays, got {type(arrays).__name__}")
        values = {}
        for name, value in arrays.items():
            array = np.asarray(value)
            if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
                raise TypeError(f"array {name!r} must hold real numbers, got dtype {array.dtype}")
            values[name] = array
        params = cls({name: array.shape for name, array in values.items()}, dtype=dtype)
        for name, array in values.items():
            params[name] = array
        return params

    @classmethod
    def wrap(cls, data, grad, shapes):
        """Adopt existing flat buffers without copying.

        ``data`` and ``grad`` must be 1-D, C-contiguous, writeable arrays of one float dtype
        and of the size that ``shapes`` lays out.
        """
        layout = cls._layout(shapes)
        _checks.flat_buffer("data", data)
        _checks.flat_buffer("grad", grad)
        if grad.dtype != data.dtype:
            raise TypeError(f"grad must have the dtype of data ({data.dtype}), got {grad.dtype}")
        size = sum(math.prod(shape) for _, shape in layout)
        for name, buffer in (("data", data), ("grad", grad)):
            if buffer.size != size:
                raise ValueError(f"{name} must hold {size} elements for these shapes, got {buffer.size}")
        params = cls.__new__(cls)
        params._adopt(layout, data, grad)
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

    def _adopt(self, layout, data, grad):
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
        return self._data.dtype

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
        value = np.asarray(value)
        if value.shape != shape:
            raise ValueError(f"value for {name!r} must have shape {shape}, got {value.shape}")
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
        """Set every gradient to zero."""
        self._grad.fill(0)

    def __repr__(self):
        return f"FlatParams({len(self)} parameters, {self.size} elements, {self.dtype})"
