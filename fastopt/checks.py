"""Argument checks shared by the façade. Each names the argument and its value."""

import math
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def real_number(name, value):
    """``value`` as a float, or TypeError if it is not a real number (bools are refused)."""
    if type(value) is float:  # the common case, without the slower abstract-class check
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {name}={value!r}")
    return float(value)


def check_fields(config):
    """Validate every field of a frozen config dataclass with its class's ``check_field`` and
    store the checked values (floats as Python floats, pairs as tuples)."""
    for name in config.__dataclass_fields__:
        object.__setattr__(config, name, config.check_field(name, getattr(config, name)))


def nonnegative(name, value):
    number = real_number(name, value)
    if not (0.0 <= number < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {name}={value!r}")
    return number


def positive(name, value):
    number = real_number(name, value)
    if not (0.0 < number < math.inf):
        raise ValueError(f"{name} must be a finite number > 0, got {name}={value!r}")
    return number


def in_range(name, value, low, high, *, high_inclusive):
    """``low <= value < high`` (or ``<= high``), NaN refused."""
    number = real_number(name, value)
    inside = low <= number <= high if high_inclusive else low <= number < high
    if not inside:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must lie in [{low}, {high}{bracket}, got {name}={value!r}")
    return number


def boolean(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {name}={value!r}")
    return bool(value)


def float_dtype(name, dtype):
    """``dtype`` as a numpy dtype, or TypeError unless it is float32 or float64."""
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {name}={dtype!r}") from None
    if resolved not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {name}={resolved}")
    return resolved


def bfloat16():
    """``ml_dtypes.bfloat16``'s numpy dtype, or an ImportError that says how to install it."""
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError('bfloat16 parameters need ml_dtypes (numpy has no bfloat16): '
                          'pip install "fastopt[bfloat16]"') from None
    return np.dtype(ml_dtypes.bfloat16)


def is_bfloat16(dtype):
    """Whether ``dtype`` is ml_dtypes' bfloat16 (without importing ml_dtypes)."""
    return np.dtype(dtype).name == "bfloat16"


def param_dtype(name, dtype):
    """A parameter buffer's dtype: float32, float64 or bfloat16 (``"bfloat16"`` or
    ``ml_dtypes.bfloat16``, whose numpy dtype is returned), else TypeError."""
    if isinstance(dtype, str) and dtype == "bfloat16":
        return bfloat16()
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32, float64 or 'bfloat16', got {name}={dtype!r}") from None
    if resolved not in FLOAT_DTYPES and not is_bfloat16(resolved):
        raise TypeError(f"{name} must be float32, float64 or 'bfloat16', got {name}={resolved}")
    return resolved


def flat_buffer(name, array, *, bfloat16_ok=False):
    """Check that ``array`` can be updated in place by a kernel: 1-D, C-contiguous, writeable,
    float32 or float64 (or, ``bfloat16_ok``, bfloat16)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(array).__name__}")
    if bfloat16_ok:
        param_dtype(f"{name}.dtype", array.dtype)
    else:
        float_dtype(f"{name}.dtype", array.dtype)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous, got strides {array.strides}")
    if not array.flags.writeable:
        raise ValueError(f"{name} must be writeable, got a read-only array")
    if not array.flags.aligned:
        raise ValueError(f"{name} must be aligned to its dtype")
    return array
