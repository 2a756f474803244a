"""The fused ReLU passes of the MLP (fastopt.kernels.layers) against their float64 references,
and the MLP and Trainer with them against the unfused numpy passes they replace."""

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


SINGLE_THREADED = """
import numpy as np, fastopt
from numba.np.ufunc import parallel
x, g = np.ones((300, 8), np.float32), np.ones((300, 2), np.float32)
for activation in ("relu", "tanh"):
    model = fastopt.MLP((8, 64, 64, 2), activation=activation, dropout=0.5)
    model.forward(x, training=True, step=1)
    model.backward(g)
    model.predict(x)
print(parallel._is_initialized)
"""


def test_model_passes_never_start_numbas_thread_pool():
    """Only single-threaded builds run inside forward and backward (a parallel one would wait
    for BLAS's spinning threads, and would start the OpenMP pool, which a later fork() kills)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", SINGLE_THREADED], capture_output=True, text=True,
                            env={**__import__("os").environ, "NUMBA_NUM_THREADS": "2"}, check=True)
    assert result.stdout.strip() == "False", result.stdout + result.stderr


def test_serial_dropout_layer_draws_the_same_masks(rng):
    x = rng.normal(size=(300, 129)).astype(np.float32)  # more than one chunk
    a, b = x.copy(), x.copy()
    fastopt.Dropout(0.3, seed=5, stream=2).forward(a, step=4, offset=7)
    fastopt.Dropout(0.3, seed=5, stream=2, serial=True).forward(b, step=4, offset=7)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="serial"):
        fastopt.Dropout(0.3, seed=5, serial=1)


def test_trainer_asks_for_the_input_gradient_only_where_backward_cannot_skip_it(rng):
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    calls = []

    class Logged(fastopt.MLP):  # an override without input_grad still trains
        def backward(self, grad):
            calls.append("plain")
            return super().backward(grad)

    class Skipping(fastopt.MLP):
        def backward(self, grad, *, input_grad=True):
            calls.append(input_grad)
            return super().backward(grad, input_grad=input_grad)

    for cls in (Logged, Skipping):
        model = cls((4, 8, 2))
        fastopt.Trainer(model, fastopt.SGD(model.params, lr=0.1), fastopt.losses.softmax_cross_entropy,
                        progress=False).fit(x, y, epochs=1, batch_size=20)
    assert calls == ["plain", "plain", False, False]
