"""One optimizer step per implementation, ready to time: fastopt, best-effort numpy, torch.

Every case owns its buffers (random, never zeros) and exposes ``step()``, ``bytes`` (memory
traffic per step, float32 counts from docs/performance.md) and a ``name``.
"""

import numpy as np

import fastopt

#: Bytes moved per element and step (reads + writes), float32.
BYTES_PER_ELEMENT = {
    "sgd": 12, "sgd_nesterov": 20, "adam": 28, "adamw": 28, "adam_amsgrad": 36,
    "rmsprop": 20, "rmsprop_centered_momentum": 36,
}

FASTOPT = {
    "sgd": (fastopt.SGD, dict(lr=1e-3)),
    "sgd_nesterov": (fastopt.SGD, dict(lr=1e-3, momentum=0.9, nesterov=True)),
    "adam": (fastopt.Adam, dict(lr=1e-3)),
    "adamw": (fastopt.AdamW, dict(lr=1e-3)),
    "adam_amsgrad": (fastopt.Adam, dict(lr=1e-3, amsgrad=True)),
    "rmsprop": (fastopt.RMSProp, dict(lr=1e-3)),
    "rmsprop_centered_momentum": (fastopt.RMSProp, dict(lr=1e-3, centered=True, momentum=0.9)),
}


def random_buffer(n, seed, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(n, dtype=np.float64).astype(dtype)


class FastoptStep:
    def __init__(self, rule, n):
        cls, options = FASTOPT[rule]
        self.params = fastopt.FlatParams.wrap(random_buffer(n, 0), random_buffer(n, 1) * 1e-3, {"p": n})
        self.optimizer = cls(self.params, **options)
        self.step = self.optimizer.step


class RooflineStep:
    """In-place ``x *= s`` over ``n`` float32 with every thread: the ceiling for in-place kernels."""

    def __init__(self, n):
        from fastopt.kernels.roofline import scale_in_place

        self.x = random_buffer(n, 2)
        self.s = np.float32(1.0)  # keeps values finite over any number of steps
        self._kernel = scale_in_place

    def step(self):
        self._kernel(self.x, self.s)


class NumpyStep:
    """The fastest plain-numpy step we know: in place with ``out=``, one scratch buffer."""

    def __init__(self, rule, n):
        self.rule = rule
        self.p, self.g = random_buffer(n, 0), random_buffer(n, 1) * np.float32(1e-3)
        self.a = np.zeros(n, np.float32)
        self.b = np.zeros(n, np.float32) if rule in ("adam", "adamw", "adam_amsgrad", "rmsprop_centered_momentum") else None
        self.c = np.zeros(n, np.float32) if rule in ("adam_amsgrad", "rmsprop_centered_momentum") else None
        self.tmp = np.empty(n, np.float32)
        self.t = 0
        self.step = getattr(self, "_" + rule)

    def _sgd(self):
        np.multiply(self.g, np.float32(-1e-3), out=self.tmp)
        self.p += self.tmp

    def _sgd_nesterov(self):
        f, buf, tmp = np.float32, self.a, self.tmp
        buf *= f(0.9)
        buf += self.g
        np.multiply(buf, f(0.9), out=tmp)
        tmp += self.g
        tmp *= f(-1e-3)
        self.p += tmp

    def _adam(self, decay=None, amsgrad=False):
        f, m, v, tmp = np.float32, self.a, self.b, self.tmp
        self.t += 1
        if decay is not None:
            self.p *= f(1 - 1e-3 * decay)
        m *= f(0.9)
        np.multiply(self.g, f(0.1), out=tmp)
        m += tmp
        v *= f(0.999)
        np.multiply(self.g, self.g, out=tmp)
        tmp *= f(0.001)
        v += tmp
        if amsgrad:
            np.maximum(self.c, v, out=self.c)
            v = self.c
        np.sqrt(v, out=tmp)
        tmp *= f(1 / np.sqrt(1 - 0.999**self.t))
        tmp += f(1e-8)
        np.divide(m, tmp, out=tmp)
        tmp *= f(-1e-3 / (1 - 0.9**self.t))
        self.p += tmp

    def _adamw(self):
        self._adam(decay=1e-2)

    def _adam_amsgrad(self):
        self._adam(amsgrad=True)

    def _rmsprop(self, centered_momentum=False):
        f, sq, tmp = np.float32, self.a, self.tmp
        sq *= f(0.99)
        np.multiply(self.g, self.g, out=tmp)
        tmp *= f(0.01)
        sq += tmp
        if centered_momentum:
            avg = self.b
            avg *= f(0.99)
            avg += f(0.01) * self.g
            np.multiply(avg, avg, out=tmp)
            np.subtract(sq, tmp, out=tmp)
            np.sqrt(tmp, out=tmp)
        else:
            np.sqrt(sq, out=tmp)
        tmp += f(1e-8)
        np.divide(self.g, tmp, out=tmp)
        if centered_momentum:
            self.c *= f(0.9)
            self.c += tmp
            np.multiply(self.c, f(-1e-3), out=tmp)
        else:
            tmp *= f(-1e-3)
        self.p += tmp

    def _rmsprop_centered_momentum(self):
        self._rmsprop(centered_momentum=True)


class TorchStep:
    """``torch.optim`` at its fastest on the CPU: fused where it has it, else foreach."""

    TORCH = {
        "sgd": ("SGD", dict(lr=1e-3)),
        "sgd_nesterov": ("SGD", dict(lr=1e-3, momentum=0.9, nesterov=True)),
        "adam": ("Adam", dict(lr=1e-3)),
        "adamw": ("AdamW", dict(lr=1e-3)),
        "adam_amsgrad": ("Adam", dict(lr=1e-3, amsgrad=True)),
        "rmsprop": ("RMSprop", dict(lr=1e-3)),
        "rmsprop_centered_momentum": ("RMSprop", dict(lr=1e-3, centered=True, momentum=0.9)),
    }

    def __init__(self, rule, n, *, tensors=1, mode=None):
        import torch

        name, options = self.TORCH[rule]
        size = n // tensors
        self.params = []
        for k in range(tensors):
            p = torch.from_numpy(random_buffer(size, 10 + k)).requires_grad_()
            p.grad = torch.from_numpy(random_buffer(size, 20000 + k) * np.float32(1e-3))
            self.params.append(p)
        if mode is None:
            mode = "foreach" if name == "RMSprop" else "fused"
        self.mode = mode
        flag = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for-loop": dict(foreach=False)}[mode]
        self.optimizer = getattr(torch.optim, name)(self.params, **options, **flag)
        self.step = self.optimizer.step


def median_seconds(step, repeats, warmup=3):
    """Median wall time of ``step()`` after ``warmup`` untimed calls."""
    import time

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


class DropoutStep:
    """Inverted dropout in place over ``n`` float32, p = 0.1, a new step each call.

    ``implementation``: ``"fastopt"`` (Philox kernel), ``"numpy"`` (a fresh ``Generator.random``
    mask, then ``x *= mask``, ``x *= scale``) or ``"torch"`` (``F.dropout(x, p, inplace=True)``).
    """

    BYTES_PER_ELEMENT = 8
    P = 0.1

    def __init__(self, implementation, n):
        self.x = random_buffer(n, 3)
        self.t = 0
        if implementation == "torch":
            import torch

            tensor = torch.from_numpy(self.x)
            functional = torch.nn.functional
            self.step = lambda: functional.dropout(tensor, self.P, training=True, inplace=True)
        elif implementation == "numpy":
            self.rng = np.random.default_rng(0)
            self.mask = np.empty(n, np.float32)
            self.step = self._numpy
        else:
            self.step = self._fastopt

    def _fastopt(self):
        self.t += 1
        fastopt.dropout(self.x, self.P, seed=1234, stream=0, step=self.t)

    def _numpy(self):
        self.rng.random(self.x.size, dtype=np.float32, out=self.mask)
        np.less(self.mask, np.float32(1 - self.P), out=self.mask, casting="unsafe")
        self.x *= self.mask
        self.x *= np.float32(1 / (1 - self.P))
