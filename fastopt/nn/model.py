"""A small multilayer perceptron whose weights are views into one FlatParams."""

import math

import numpy as np

from .. import checks as _checks
from .. import device as _device
from ..params import FlatParams
from . import arrays as _backend
from .dropout import Dropout
from .losses import _sigmoid as stable_sigmoid


# Each activation takes the backend (NumPy or CuPy, see fastopt.nn.arrays) and the
# pre-activation z; each derivative takes the backend, z and the activation a.

def _relu(b, z):
    return b.xp.maximum(z, 0)


def _relu_grad(b, z, a):
    return (z > 0).astype(z.dtype)


def _tanh(b, z):
    return b.xp.tanh(z)


def _tanh_grad(b, z, a):
    return 1 - a * a


def _sigmoid(b, z):
    return stable_sigmoid(z)


def _sigmoid_grad(b, z, a):
    return a * (1 - a)


def _gelu(b, z):
    return (0.5 * z * (1 + b.erf(z / math.sqrt(2)))).astype(z.dtype)


def _gelu_grad(b, z, a):
    cdf = 0.5 * (1 + b.erf(z / math.sqrt(2)))
    pdf = b.xp.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return (cdf + z * pdf).astype(z.dtype)


#: name: (function, derivative from (pre-activation, activation), gain for initialisation)
ACTIVATIONS = {
    "relu": (_relu, _relu_grad, "he"),
    "tanh": (_tanh, _tanh_grad, "glorot"),
    "sigmoid": (_sigmoid, _sigmoid_grad, "glorot"),
    "gelu": (_gelu, _gelu_grad, "he"),
}


def _layer_kernels():
    """The fused CPU passes, serial builds (imported on first use: ``import fastopt`` does not
    import Numba)."""
    global _LAYER_KERNELS
    if _LAYER_KERNELS is None:
        from ..kernels import layers
        from ..kernels.cpu import serial_twin

        _LAYER_KERNELS = serial_twin(layers.relu_bias), serial_twin(layers.relu_dropout_backward)
    return _LAYER_KERNELS


_LAYER_KERNELS = None


class MLP:
    """Dense layers with an activation between them and optional dropout after each hidden one.

    Parameters
    ----------
    sizes : sequence of int
        Input width, hidden widths, output width, e.g. ``(64, 128, 10)``.
    activation : "relu", "tanh", "sigmoid" or "gelu"
    dropout : float in [0, 1)
        Dropout after each hidden activation (Philox masks, stream = layer index).
    seed : int
        Seeds the initialisation (He for relu/gelu, Glorot for tanh/sigmoid, uniform) and the
        dropout masks.
    dtype : float32 or float64
    device : "cpu" or "cuda"
        ``"cuda"`` keeps the parameters on the GPU and computes with CuPy (an optional
        dependency; ``fastopt[cuda13]`` brings it): the matrix products and activations are
        CuPy's, the optimizer step and dropout fastopt's CUDA kernels, with the CPU's masks.
        The initial weights are the CPU's, copied.

    The parameters are ``layer{k}.weight`` (in, out) and ``layer{k}.bias`` in :attr:`params`.
    ``forward`` keeps what ``backward`` needs; ``backward`` writes :attr:`params.grad`.
    """

    def __init__(self, sizes, *, activation="relu", dropout=0.0, seed=0, dtype=np.float32, device="cpu"):
        sizes = tuple(sizes)
        if len(sizes) < 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in sizes):
            raise ValueError(f"sizes must be two or more ints >= 1, got sizes={sizes!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got activation={activation!r}")
        self.dropout_p = _checks.in_range("dropout", dropout, 0.0, 1.0, high_inclusive=False)
        _device.check_device("device", device)
        dtype = _checks.float_dtype("dtype", dtype)  # the model computes in its dtype: not bfloat16
        self.sizes, self.activation, self.seed = tuple(int(s) for s in sizes), activation, int(seed)
        shapes = {}
        for k, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
            shapes[f"layer{k}.weight"] = (fan_in, fan_out)
            shapes[f"layer{k}.bias"] = (fan_out,)
        params = FlatParams(shapes, dtype=dtype)
        self._function, self._derivative, scheme = ACTIVATIONS[activation]
        rng = np.random.default_rng(seed)
        for k, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
            bound = math.sqrt(6.0 / fan_in) if scheme == "he" else math.sqrt(6.0 / (fan_in + fan_out))
            params[f"layer{k}.weight"] = rng.uniform(-bound, bound, (fan_in, fan_out))
        self.backend = _backend.for_device(device)
        self.params = params.to(device)
        # The backend's views of the weights and their gradients, made once: the optimizer
        # updates the same memory in place.
        view = self.backend.asarray
        self._layers = [(view(self.params[f"layer{k}.weight"]), view(self.params[f"layer{k}.bias"]))
                        for k in range(len(sizes) - 1)]
        self._grads = [(view(self.params.grad_of(f"layer{k}.weight")), view(self.params.grad_of(f"layer{k}.bias")))
                       for k in range(len(sizes) - 1)]
        # Every Numba kernel of a CPU forward or backward (dropout, the fused ReLU passes) is a
        # single-threaded build. Between BLAS matrix products, whose threads keep spinning for a
        # while after each call, a multi-threaded kernel waits for the cores: measured on 2
        # cores, a 256-512-512-10 forward over 256 rows with dropout took 20.3 ms with two
        # kernel threads and 1.7 ms with one, its backward 16.9 and 2.8 ms.
        self._dropouts = [Dropout(self.dropout_p, seed=self.seed, stream=k, serial=True) for k in range(len(sizes) - 2)]
        self._cache = None
        # ReLU on the CPU: the bias, the ReLU and (backward) its derivative and the dropout mask
        # in fused passes (fastopt.kernels.layers); other activations and CuPy take numpy's.
        self._fused = activation == "relu" and self.backend.device == "cpu"
        self._dropout_scale = self.params.dtype.type(1.0 / (1.0 - self.dropout_p))

    @property
    def device(self):
        return self.params.device

    @property
    def config(self):
        """What a checkpoint must match to be loaded into this model (the device is free:
        a checkpoint written on the GPU resumes on the CPU and the reverse)."""
        return {"sizes": list(self.sizes), "activation": self.activation, "dropout": self.dropout_p,
                "seed": self.seed, "dtype": str(self.params.dtype)}

    def _dropout(self, k, array, step, offset, backward=False):
        xp = self.backend.xp
        array = xp.ascontiguousarray(array)
        layer = self._dropouts[k]
        (layer.backward if backward else layer.forward)(self.backend.kernel_view(array), step, offset)
        return array  # changed in place

    def forward(self, x, *, training=False, step=0, row_offset=0):
        """The output (logits for classification) of a batch ``x`` of shape ``(n, sizes[0])``:
        a NumPy array, or a CuPy array on the GPU (where ``x`` may be either).

        ``row_offset`` says where ``x`` starts within the whole batch when a data-parallel rank
        handles a slice of it: the dropout masks are then those of the same rows of the whole
        batch, so N ranks drop exactly what one process would.
        """
        x = self.backend.asarray(x, dtype=self.params.dtype)
        if x.ndim != 2 or x.shape[1] != self.sizes[0]:
            raise ValueError(f"x must have shape (n, {self.sizes[0]}), got {x.shape}")
        cache = [x]
        a = x
        for k, (weight, bias) in enumerate(self._layers):
            z = a @ weight
            if k == len(self._layers) - 1:
                z += bias
                cache.append((z, None))
                a = z
                break
            if self._fused:
                _layer_kernels()[0](z, bias)  # z becomes max(z + b, 0), in place
                a = z
            else:
                z += bias
                a = self._function(self.backend, z)
            if training and self.dropout_p > 0:
                a = self._dropout(k, a, step, row_offset * a.shape[1])
            cache.append((None if self._fused else z, a))
        self._cache = (cache, training, step, row_offset)
        return a

    def backward(self, grad_output, *, input_grad=True):
        """Back-propagate d cost / d output through the last :meth:`forward`; fills
        ``params.grad`` and returns d cost / d input, or None with ``input_grad=False`` (the
        trainer's choice: the first layer's ``delta @ W.T``, a tenth of a step's arithmetic
        for a 256-512-512-10 MLP, is then not computed)."""
        if self._cache is None:
            raise RuntimeError("backward needs a forward pass first")
        cache, training, step, row_offset = self._cache
        xp = self.backend.xp
        delta = self.backend.asarray(grad_output, dtype=self.params.dtype)
        for k in range(len(self._layers) - 1, -1, -1):
            weight, _ = self._layers[k]
            grad_weight, grad_bias = self._grads[k]
            a_in = cache[k] if k == 0 else cache[k][1]
            xp.matmul(a_in.T, delta, out=grad_weight)
            delta.sum(axis=0, out=grad_bias)
            if k == 0 and not input_grad:
                return None
            delta = delta @ weight.T
            if k > 0 and self._fused:
                # ReLU's derivative times the dropout mask, read from the layer's output
                scale = self._dropout_scale if training and self.dropout_p > 0 else delta.dtype.type(1.0)
                _layer_kernels()[1](delta, cache[k][1], scale)
            elif k > 0:
                z, a = cache[k]
                if training and self.dropout_p > 0:
                    delta = self._dropout(k - 1, delta, step, row_offset * delta.shape[1], backward=True)
                    a = self._function(self.backend, z)  # the derivative needs the activation before dropout
                delta *= self._derivative(self.backend, z, a)
        return delta

    def predict(self, x, batch_size=1024):
        """Outputs for ``x`` in evaluation mode, in batches, as a NumPy array (on either device)."""
        outputs = [self.backend.to_host(self.forward(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
        return np.concatenate(outputs) if outputs else np.empty((0, self.sizes[-1]), self.params.dtype)
