"""Philox dropout: known answers, the mask format promise, statistics, bad input."""

import numba
import numpy as np
import pytest
from scipy import stats

from fastopt import Dropout, dropout, dropout_backward, dropout_mask
from fastopt.kernels import dropout as kernels
from fastopt.kernels.cpu import serial_twin
from fastopt.kernels.philox import philox4x32_10, philox4x32_10_reference, philox_lanes

from kernel_cases import DTYPES, SIZES

# Random123's known-answer vectors: counter words, key words -> output words (docs/design.md)
KNOWN_ANSWERS = [
    ("00000000 00000000 00000000 00000000", "00000000 00000000", "6627e8d5 e169c58d bc57ac4c 9b00dbd8"),
    ("ffffffff ffffffff ffffffff ffffffff", "ffffffff ffffffff", "408f276d 41c83b0e a20bc7c6 6d5451fd"),
    ("243f6a88 85a308d3 13198a2e 03707344", "a4093822 299f31d0", "d16cfe09 94fdcceb 5001e420 24126ea1"),
]


def words(text):
    return [int(w, 16) for w in text.split()]


@numba.njit
def _scalar(c, k):
    return philox4x32_10(c[0], c[1], c[2], c[3], k[0], k[1])


@numba.njit
def _lanes(c, k):
    c0, c1, c2, c3 = c[:, 0].copy(), c[:, 1].copy(), c[:, 2].copy(), c[:, 3].copy()
    philox_lanes(c0, c1, c2, c3, k[0], k[1])
    return np.stack((c0, c1, c2, c3), axis=1)


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox_known_answers(counter, key, expected):
    c, k = np.array(words(counter), np.uint64), np.array(words(key), np.uint64)
    assert list(_scalar(c, k)) == words(expected)
    assert philox4x32_10_reference(c[None], k)[0].tolist() == words(expected)
    lanes = _lanes(np.repeat(c[None], 5, axis=0), k)
    assert all(row == words(expected) for row in lanes.tolist())


def test_batched_rounds_equal_the_scalar_form(rng):
    counters = rng.integers(0, 2**32, (300, 4), dtype=np.uint64)
    key = rng.integers(0, 2**32, 2, dtype=np.uint64)
    expected = philox4x32_10_reference(counters, key)
    np.testing.assert_array_equal(_lanes(counters, key), expected)
    np.testing.assert_array_equal([_scalar(c, key) for c in counters[:20]], expected[:20])


def _arguments(p, seed=2**40 + 12345, stream=3, step=11, offset=0):
    threshold = np.uint64(int((1 - p) * 2**32))
    return (np.uint64(offset), np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32), np.uint64(stream),
            np.uint64(step), threshold)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("offset", [0, 3, 16389])
def test_kernel_matches_the_numpy_reference_bitwise(size, dtype, offset, rng):
    p = 0.3
    x = rng.standard_normal(size).astype(dtype)
    expected = x.copy()
    serial = x.copy()
    args = _arguments(p, offset=offset)
    kernels.dropout_step(x, *args, dtype(1 / (1 - p)))
    kernels.dropout_step_reference(expected, *args, dtype(1 / (1 - p)))
    serial_twin(kernels.dropout_step)(serial, *args, dtype(1 / (1 - p)))
    assert np.array_equal(x, expected)
    assert np.array_equal(serial, expected)
    for build in (kernels.dropout_step, serial_twin(kernels.dropout_step)):
        mask = np.ones(size, np.uint8)  # the mask is dropout of ones, with a scale of 1
        build(mask, *args, np.uint8(1))
        np.testing.assert_array_equal(mask.astype(bool), kernels.mask_reference(size, *args))


def test_mask_does_not_depend_on_threads_or_chunking(rng):
    x = rng.standard_normal(300_001).astype(np.float32)
    whole = dropout(x.copy(), 0.4, seed=5, stream=1, step=2)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        single = dropout(x.copy(), 0.4, seed=5, stream=1, step=2)
    finally:
        numba.set_num_threads(threads)
    assert np.array_equal(whole, single)
    pieces = x.copy()
    for start, stop in [(0, 1), (1, 4099), (4099, 70_000), (70_000, 299_999), (299_999, 300_001)]:
        dropout(pieces[start:stop], 0.4, seed=5, stream=1, step=2, offset=start)
    assert np.array_equal(pieces, whole)


def test_forward_then_backward_multiplies_by_the_regenerated_mask(rng):
    x = rng.standard_normal((64, 33)).astype(np.float32)
    grad = rng.standard_normal((64, 33)).astype(np.float32)
    keep = dropout_mask(x.size, 0.2, seed=9, stream=4, step=77).reshape(x.shape).astype(bool)
    scale = np.float32(1 / 0.8)
    expected_x = np.where(keep, x * scale, 0)
    expected_grad = np.where(keep, grad * scale, 0)
    dropout(x, 0.2, seed=9, stream=4, step=77)
    dropout_backward(grad, 0.2, seed=9, stream=4, step=77)
    assert np.array_equal(x, expected_x) and np.array_equal(grad, expected_grad)


def test_packed_mask_unpacks_to_the_byte_mask():
    mask = dropout_mask(1001, 0.5, seed=1, step=3)
    packed = dropout_mask(1001, 0.5, seed=1, step=3, packed=True)
    assert packed.size == 126
    np.testing.assert_array_equal(np.unpackbits(packed, count=1001, bitorder="little"), mask)


def test_p_zero_and_one_are_exact():
    x = np.array([1.5, np.nan, -np.inf, 3.0], np.float32)
    assert np.array_equal(dropout(x.copy(), 0.0, seed=1), x, equal_nan=True)
    assert not dropout(x.copy(), 1.0, seed=1).any()
    assert dropout_mask(5, 0.0, seed=1).tolist() == [1] * 5 and dropout_mask(5, 1.0, seed=1).tolist() == [0] * 5


def test_kept_values_are_scaled_once_and_dropped_values_are_zero(rng):
    x = rng.standard_normal(10_000).astype(np.float32)
    out = dropout(x.copy(), 0.3, seed=3)
    kept = out != 0
    assert np.array_equal(out[kept], x[kept] * np.float32(1 / 0.7))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kept_fraction_is_binomial(p):
    n = 10_000_000
    kept = int(dropout_mask(n, p, seed=2024, stream=1, step=1).sum(dtype=np.int64))
    mean, sd = n * (1 - p), np.sqrt(n * p * (1 - p))
    assert abs(kept - mean) < 5 * sd


@numba.njit
def _words_of(n_batches, key0, key1, stream, step):
    c0, c1, c2, c3, buffer = kernels._lanes()
    out = np.empty(n_batches * buffer.size, np.uint64)
    for b in range(n_batches):
        kernels._words(np.uint64(b) * kernels.LANES, c0, c1, c2, c3, buffer, stream, step, key0, key1)
        out[b * buffer.size:(b + 1) * buffer.size] = buffer
    return out


def test_words_are_uniform():
    # the words the dropout kernel compares, for 2**20 elements: chi-square over 1024 bins
    w = _words_of(4096, np.uint64(77), np.uint64(0), np.uint64(5), np.uint64(9))
    assert w.max() < 2**32
    counts = np.bincount((w >> np.uint64(22)).astype(np.int64), minlength=1024)
    assert stats.chisquare(counts).pvalue > 1e-6
    low = np.bincount((w & np.uint64(1023)).astype(np.int64), minlength=1024)  # low bits too
    assert stats.chisquare(low).pvalue > 1e-6


@pytest.mark.parametrize("other", [dict(stream=8, step=100), dict(stream=7, step=101), dict(stream=7, step=100, seed=43)])
def test_neighbouring_streams_and_steps_are_uncorrelated(other):
    n = 1_000_000
    base = dict(seed=42, stream=7, step=100)
    a = dropout_mask(n, 0.5, **base).astype(np.float64)
    b = dropout_mask(n, 0.5, **{**base, **other}).astype(np.float64)
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(n)
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < 5 / np.sqrt(n)  # nor neighbouring elements


def test_dropout_layer_modes():
    layer = Dropout(0.5, seed=1, stream=2)
    x = np.ones(1000, np.float32)
    layer(x, step=0)
    assert set(np.unique(x)) == {0.0, 2.0}
    y = np.ones(10, np.float32)
    assert layer.eval().forward(y, step=1) is y and (y == 1).all()
    assert layer.train().training


BAD = [
    (lambda: dropout(np.ones(3, np.float32), -0.1, seed=1), ValueError, r"p=-0\.1"),
    (lambda: dropout(np.ones(3, np.float32), 1.5, seed=1), ValueError, r"p=1\.5"),
    (lambda: dropout(np.ones(3, np.float32), float("nan"), seed=1), ValueError, "p=nan"),
    (lambda: dropout(np.ones(6, np.float32)[::2], 0.5, seed=1), ValueError, "C-contiguous"),
    (lambda: dropout(np.ones(3, np.int32), 0.5, seed=1), TypeError, "dtype"),
    (lambda: dropout([1.0, 2.0], 0.5, seed=1), TypeError, "numpy array"),
    (lambda: dropout(np.ones(3, np.float32), 0.5, seed=-1), ValueError, "seed=-1"),
    (lambda: dropout(np.ones(3, np.float32), 0.5, seed=2**64), ValueError, "seed=18446744073709551616"),
    (lambda: dropout(np.ones(3, np.float32), 0.5, seed=1.5), TypeError, "seed=1.5"),
    (lambda: dropout(np.ones(3, np.float32), 0.5, seed=1, stream=2**32), ValueError, "stream="),
    (lambda: dropout(np.ones(3, np.float32), 0.5, seed=1, step=-1), ValueError, "step=-1"),
    (lambda: dropout(np.ones(3, np.float32), 0.5, seed=1, offset=-4), ValueError, "offset=-4"),
    (lambda: dropout_mask(-1, 0.5, seed=1), ValueError, "size=-1"),
    (lambda: Dropout(1.2, seed=1), ValueError, r"p=1\.2"),
    (lambda: Dropout(0.2, seed=None), TypeError, "seed=None"),
]


@pytest.mark.parametrize("make, error, message", BAD)
def test_bad_input_is_refused_and_the_buffer_untouched(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_read_only_buffer_is_refused_untouched():
    x = np.ones(4, np.float32)
    x.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        dropout(x, 0.5, seed=1)
    assert (x == 1).all()


def test_buffer_untouched_when_an_argument_is_bad():
    x = np.ones(4, np.float32)
    with pytest.raises(ValueError):
        dropout(x, 0.5, seed=1, step=2**32)
    assert (x == 1).all()


CUDA_SIMULATOR_SCRIPT = """
import numpy as np
from numba import cuda
from fastopt.kernels.philox import philox_source

philox = cuda.jit(device=True)(philox_source)

@cuda.jit
def kernel(counters, key, out):
    i = cuda.grid(1)
    if i < counters.shape[0]:
        out[i, 0], out[i, 1], out[i, 2], out[i, 3] = philox(
            counters[i, 0], counters[i, 1], counters[i, 2], counters[i, 3], key[0], key[1])

for counter, key, expected in CASES:
    out = np.zeros((1, 4), np.uint64)
    kernel[1, 2](np.array([counter], np.uint64), np.array(key, np.uint64), out)
    assert out[0].tolist() == expected, (out[0].tolist(), expected)
print("ok")
"""


def test_philox_compiles_as_a_cuda_device_function_in_the_simulator():
    """The scalar form is the one a numba.cuda kernel calls: run it as a device function under
    the CUDA simulator (a real GPU build is the CUDA backend's job) against the known answers."""
    import os
    import subprocess
    import sys

    cases = [(words(c), words(k), words(e)) for c, k, e in KNOWN_ANSWERS]
    script = f"CASES = {cases!r}\n" + CUDA_SIMULATOR_SCRIPT
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
