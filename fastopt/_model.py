"""A small multilayer perceptron whose weights are views into one FlatParams."""

import math

import numpy as np

from . import _checks
from ._dropout import Dropout
from ._params import FlatParams


def _relu(z):
    return np.maximum(z, 0)


def _relu_grad(z, a):
    return (z > 0).astype(z.dtype)


def _tanh_grad(z, a):
    return 1 - a * a


def _sigmoid(z):
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype)


def _sigmoid_grad(z, a):
    return a * (1 - a)


def _gelu(z):
    from scipy.special import erf

    return (0.5 * z * (1 + erf(z / math.sqrt(2)))).astype(z.dtype)


def _gelu_grad(z, a):
    from scipy.special import erf

    cdf = 0.5 * (1 + erf(z / math.sqrt(2)))
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return (cdf + z * pdf).astype(z.dtype)


#: name: (function, derivative from (pre-activation, activation), gain for initialisation)
ACTIVATIONS = {
    "relu": (_relu, _relu_grad, "he"),
    "tanh": (np.tanh, _tanh_grad, "glorot"),
    "sigmoid": (_sigmoid, _sigmoid_grad, "glorot"),
    "gelu": (_gelu, _gelu_grad, "he"),
}


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

    The parameters are ``layer{k}.weight`` (in, out) and ``layer{k}.bias`` in :attr:`params`.
    ``forward`` keeps what ``backward`` needs; ``backward`` writes :attr:`params.grad`.
    """

    def __init__(self, sizes, *, activation="relu", dropout=0.0, seed=0, dtype=np.float32):
        sizes = tuple(sizes)
        if len(sizes) < 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in sizes):
            raise ValueError(f"sizes must be two or more ints >= 1, got sizes={sizes!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got activation={activation!r}")
        self.dropout_p = _checks.in_range("dropout", dropout, 0.0, 1.0, high_inclusive=False)
        self.sizes, self.activation, self.seed = tuple(int(s) for s in sizes), activation, int(seed)
        shapes = {}
        for k, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
            shapes[f"layer{k}.weight"] = (fan_in, fan_out)
            shapes[f"layer{k}.bias"] = (fan_out,)
        self.params = FlatParams(shapes, dtype=dtype)
        self._function, self._derivative, scheme = ACTIVATIONS[activation]
        rng = np.random.default_rng(seed)
        for k, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
            bound = math.sqrt(6.0 / fan_in) if scheme == "he" else math.sqrt(6.0 / (fan_in + fan_out))
            self.params[f"layer{k}.weight"] = rng.uniform(-bound, bound, (fan_in, fan_out))
        self._dropouts = [Dropout(self.dropout_p, seed=self.seed, stream=k) for k in range(len(sizes) - 2)]
        self._cache = None

    @property
    def config(self):
        return {"sizes": list(self.sizes), "activation": self.activation, "dropout": self.dropout_p,
                "seed": self.seed, "dtype": str(self.params.dtype)}

    def _layers(self):
        return [(self.params[f"layer{k}.weight"], self.params[f"layer{k}.bias"]) for k in range(len(self.sizes) - 1)]

    def forward(self, x, *, training=False, step=0, row_offset=0):
        """The output (logits for classification) of a batch ``x`` of shape ``(n, sizes[0])``.

        ``row_offset`` says where ``x`` starts within the whole batch when a data-parallel rank
        handles a slice of it: the dropout masks are then those of the same rows of the whole
        batch, so N ranks drop exactly what one process would.
        """
        x = np.asarray(x, dtype=self.params.dtype)
        if x.ndim != 2 or x.shape[1] != self.sizes[0]:
            raise ValueError(f"x must have shape (n, {self.sizes[0]}), got {x.shape}")
        cache = [x]
        a = x
        layers = self._layers()
        for k, (weight, bias) in enumerate(layers):
            z = a @ weight
            z += bias
            if k == len(layers) - 1:
                cache.append((z, None))
                a = z
                break
            a = self._function(z)
            if training and self.dropout_p > 0:
                a = self._dropouts[k].forward(np.ascontiguousarray(a), step, row_offset * a.shape[1])
            cache.append((z, a))
        self._cache = (cache, training, step, row_offset)
        return a

    def backward(self, grad_output):
        """Back-propagate d cost / d output through the last :meth:`forward`; fills
        ``params.grad`` and returns d cost / d input."""
        if self._cache is None:
            raise RuntimeError("backward needs a forward pass first")
        cache, training, step, row_offset = self._cache
        layers = self._layers()
        delta = np.asarray(grad_output, dtype=self.params.dtype)
        for k in range(len(layers) - 1, -1, -1):
            weight, _ = layers[k]
            a_in = cache[k] if k == 0 else cache[k][1]
            np.matmul(a_in.T, delta, out=self.params.grad_of(f"layer{k}.weight"))
            delta.sum(axis=0, out=self.params.grad_of(f"layer{k}.bias"))
            delta = delta @ weight.T
            if k > 0:
                z, a = cache[k]
                if training and self.dropout_p > 0:
                    delta = self._dropouts[k - 1].backward(np.ascontiguousarray(delta), step,
                                                           row_offset * delta.shape[1])
                    a = self._function(z)  # the derivative needs the activation before dropout
                delta *= self._derivative(z, a)
        return delta

    def predict(self, x, batch_size=1024):
        """Outputs for ``x`` in evaluation mode, in batches."""
        x = np.asarray(x)
        return np.concatenate([self.forward(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]) \
            if len(x) else np.empty((0, self.sizes[-1]), self.params.dtype)
