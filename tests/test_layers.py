"""The fused ReLU passes of the MLP (fastopt.kernels.layers) against their float64 references,
and the MLP and Trainer with them against the unfused numpy passes they replace."""

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastopt
from fastopt.kernels import layers
from fastopt.kernels.cpu import serial_twin

BUILDS = {"parallel": lambda kernel: kernel, "serial": serial_twin}
SHAPES = [(1, 1), (3, 7), (17, 129), (257, 33), (0, 5)]


def _specials(rng, shape, dtype):
    """Random values with zeros of both signs, NaN and infinities sprinkled in."""
    x = rng.normal(0, 2, shape).astype(dtype)
    flat = x.reshape(-1)
    if flat.size >= 8:
        where = rng.choice(flat.size, 6, replace=False)
        flat[where] = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-30], dtype)
    return x


def _same(actual, expected):
    """Equal bit for bit, except the sign of an exact zero; NaN where NaN."""
    np.testing.assert_array_equal(actual, expected)  # NaN == NaN here, and -0 == 0
    assert actual.dtype == expected.dtype


@pytest.mark.parametrize("build", list(BUILDS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_relu_bias_equals_its_reference(rng, shape, dtype, build):
    z = _specials(rng, shape, dtype)
    bias = _specials(rng, shape[1:], dtype)
    expected = z.copy()
    layers.relu_bias_reference(expected, bias)
    with np.errstate(invalid="ignore"):
        unfused = np.maximum(z + bias, 0)  # the passes it replaces
    BUILDS[build](layers.relu_bias)(z, bias)
    _same(z, expected)
    _same(z, unfused)


@pytest.mark.parametrize("build", list(BUILDS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("scale", [1.0, 1 / 0.9, 4.0])
def test_relu_dropout_backward_equals_its_reference(rng, shape, dtype, build, scale):
    delta = _specials(rng, shape, dtype)
    a = np.maximum(_specials(rng, shape, dtype), 0)
    a[rng.random(shape) < 0.3] = 0  # dropped units
    scale = dtype(scale)
    expected = delta.copy()
    layers.relu_dropout_backward_reference(expected, a, scale)
    BUILDS[build](layers.relu_dropout_backward)(delta, a, scale)
    _same(delta, expected)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(0, 40), width=st.integers(1, 70), seed=st.integers(0, 2**32 - 1),
       double=st.booleans())
def test_fused_passes_on_any_shape(rows, width, seed, double):
    rng = np.random.default_rng(seed)
    dtype = np.float64 if double else np.float32
    z, bias = rng.normal(size=(rows, width)).astype(dtype), rng.normal(size=width).astype(dtype)
    expected = np.maximum(z + bias, 0)
    layers.relu_bias(z, bias)
    _same(z, expected)
    delta = rng.normal(size=(rows, width)).astype(dtype)
    expected = np.where(z > 0, delta * dtype(1.25), 0).astype(dtype)
    layers.relu_dropout_backward(delta, z, dtype(1.25))
    _same(delta, expected)


def _unfused(model):
    model._fused = False
    return model


@pytest.mark.parametrize("dropout", [0.0, 0.25])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mlp_passes_equal_the_unfused_ones(rng, dropout, dtype):
    sizes = (13, 31, 17, 5)
    fused = fastopt.MLP(sizes, dropout=dropout, seed=3, dtype=dtype)
    plain = _unfused(fastopt.MLP(sizes, dropout=dropout, seed=3, dtype=dtype))
    assert fused._fused
    x, grad = rng.normal(size=(37, 13)), rng.normal(size=(37, 5))
    for training in (True, False):
        outputs = [m.forward(x, training=training, step=7, row_offset=3) for m in (fused, plain)]
        np.testing.assert_array_equal(*outputs)
        inputs = [m.backward(grad) for m in (fused, plain)]
        np.testing.assert_array_equal(*inputs)
        np.testing.assert_array_equal(fused.params.grad, plain.params.grad)
    assert fused.backward(grad, input_grad=False) is None
    np.testing.assert_array_equal(fused.params.grad, plain.params.grad)


def test_training_with_fused_passes_is_bitwise_the_unfused(rng):
    x = rng.normal(size=(300, 20)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1)
    runs = []
    for fuse in (True, False):
        model = fastopt.MLP((20, 32, 32, 3), dropout=0.1, seed=1)
        model._fused = fuse
        optimizer = fastopt.AdamW(model.params, lr=1e-2, weight_decay=1e-2)
        trainer = fastopt.Trainer(model, optimizer, fastopt.losses.softmax_cross_entropy, progress=False)
        history = trainer.fit(x, y, epochs=3, batch_size=32)
        runs.append((model.params.data.copy(), [h["loss"] for h in history]))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


def test_model_passes_run_on_one_kernel_thread_and_restore_the_setting(rng):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba has one thread here")
    model = fastopt.MLP((4, 8, 2), dropout=0.5)
    seen = []
    kernel = model._dropouts[0]

    class Spy:
        def forward(self, *args):
            seen.append(numba.get_num_threads())
            return kernel.forward(*args)

    model._dropouts[0] = Spy()
    numba.set_num_threads(2)
    try:
        model.forward(rng.normal(size=(3, 4)), training=True, step=1)
        assert seen == [1]
        assert numba.get_num_threads() == 2
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
