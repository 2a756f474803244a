"""Timed cases shared by ``fastopt bench``, ``bench/`` (pytest-benchmark) and ``bench/bars.py``.

One step per implementation: fastopt, best-effort numpy, torch (when installed), and the
in-place ``x *= s`` roofline. Every case owns its buffers (random, never zeros) and exposes
``step()``; bytes moved per element are in :data:`BYTES_PER_ELEMENT`.
"""

import os

import numpy as np

import fastopt

#: Bytes moved per element and step (reads + writes), float32.
BYTES_PER_ELEMENT = {
    "sgd": 12, "sgd_nesterov": 20, "adam": 28, "adamw": 28, "adam_amsgrad": 36,
    "rmsprop": 20, "rmsprop_centered_momentum": 36, "adagrad": 20, "adamax": 28, "nadam": 28, "radam": 28,
    "lion": 20, "lamb": 40,
    # Adafactor over a matrix (see shape_of): p read twice and written, g read four times
    "adafactor": 28,
}

FASTOPT = {
    "sgd": (fastopt.SGD, dict(lr=1e-3)),
    "sgd_nesterov": (fastopt.SGD, dict(lr=1e-3, momentum=0.9, nesterov=True)),
    "adam": (fastopt.Adam, dict(lr=1e-3)),
    "adamw": (fastopt.AdamW, dict(lr=1e-3)),
    "adam_amsgrad": (fastopt.Adam, dict(lr=1e-3, amsgrad=True)),
    "rmsprop": (fastopt.RMSProp, dict(lr=1e-3)),
    "rmsprop_centered_momentum": (fastopt.RMSProp, dict(lr=1e-3, centered=True, momentum=0.9)),
    "adagrad": (fastopt.Adagrad, dict(lr=1e-2)),
    "adamax": (fastopt.Adamax, dict(lr=2e-3)),
    "nadam": (fastopt.NAdam, dict(lr=2e-3)),
    "radam": (fastopt.RAdam, dict(lr=1e-3)),
    "lion": (fastopt.Lion, dict(lr=1e-4)),
    "lamb": (fastopt.LAMB, dict(lr=1e-3)),
    "adafactor": (fastopt.Adafactor, dict(lr=1e-2)),
}
#: Rules timed over a matrix, not a vector: Adafactor factors the second moment of a tensor of
#: two or more dimensions (a vector keeps a full one).
MATRIX_RULES = ("adafactor",)


def shape_of(rule, n):
    """The shape of the one parameter a case steps: ``(1000, n // 1000)`` for the rules in
    :data:`MATRIX_RULES` (where 1000 divides ``n``), else ``(n,)``."""
    if rule in MATRIX_RULES and n >= 1000 and n % 1000 == 0:
        return (1000, n // 1000)
    return (n,)


def random_buffer(n, seed, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(n, dtype=np.float64).astype(dtype)


class FastoptStep:
    def __init__(self, rule, n, **extra):
        cls, options = FASTOPT[rule]
        self.params = fastopt.FlatParams.wrap(random_buffer(n, 0), random_buffer(n, 1) * 1e-3, {"p": shape_of(rule, n)})
        self.optimizer = cls(self.params, **options, **extra)
        self.step = self.optimizer.step


class RooflineStep:
    """In-place ``x *= s`` over ``n`` float32 with every thread (one below a chunk's worth,
    as fastopt's kernels do): the ceiling for in-place kernels."""

    def __init__(self, n):
        from fastopt.kernels.cpu import for_size
        from fastopt.kernels.roofline import scale_in_place

        self.x = random_buffer(n, 2)
        self.s = np.float32(1.0)  # keeps values finite over any number of steps
        self._kernel = for_size(scale_in_place, n)

    def step(self):
        self._kernel(self.x, self.s)


class NumpyStep:
    """The fastest plain-numpy step we know: in place with ``out=``, one scratch buffer."""

    def __init__(self, rule, n):
        self.rule = rule
        self.p, self.g = random_buffer(n, 0), random_buffer(n, 1) * np.float32(1e-3)
        self.a = np.zeros(n, np.float32)
        self.b = np.zeros(n, np.float32) if rule in ("adam", "adamw", "adam_amsgrad", "rmsprop_centered_momentum",
                                                     "adamax", "nadam", "radam", "lamb") else None
        self.c = (np.zeros(n, np.float32) if rule in ("adam_amsgrad", "rmsprop_centered_momentum", "nadam")
                  else None)
        self.tmp = np.empty(n, np.float32)
        self.tmp2 = np.empty(n, np.float32) if rule == "nadam" else None
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

    def _moments(self):
        """Adam's moments in place: ``m`` (``a``) and ``v`` (``b``), beta1 0.9, beta2 0.999."""
        f, m, v, tmp = np.float32, self.a, self.b, self.tmp
        m *= f(0.9)
        np.multiply(self.g, f(0.1), out=tmp)
        m += tmp
        v *= f(0.999)
        np.multiply(self.g, self.g, out=tmp)
        tmp *= f(0.001)
        v += tmp

    def _adam(self, decay=None, amsgrad=False):
        f, m, v, tmp = np.float32, self.a, self.b, self.tmp
        self.t += 1
        if decay is not None:
            self.p *= f(1 - 1e-3 * decay)
        self._moments()
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

    def _adagrad(self):
        f, total, tmp = np.float32, self.a, self.tmp
        np.multiply(self.g, self.g, out=tmp)
        total += tmp
        np.sqrt(total, out=tmp)
        tmp += f(1e-10)
        np.divide(self.g, tmp, out=tmp)
        tmp *= f(-1e-2)
        self.p += tmp

    def _adamax(self):
        f, m, u, tmp = np.float32, self.a, self.b, self.tmp
        self.t += 1
        m *= f(0.9)
        np.multiply(self.g, f(0.1), out=tmp)
        m += tmp
        u *= f(0.999)
        np.abs(self.g, out=tmp)
        tmp += f(1e-8)
        np.maximum(u, tmp, out=u)
        np.divide(m, u, out=tmp)
        tmp *= f(-2e-3 / (1 - 0.9**self.t))
        self.p += tmp

    def _nadam(self):
        from fastopt.optim.nadam import momentum_factor

        f, m, v, tmp = np.float32, self.a, self.b, self.tmp
        self.t += 1
        if self.t == 1:
            self.mu_product = 1.0
        mu, mu_next = momentum_factor(0.9, 4e-3, self.t), momentum_factor(0.9, 4e-3, self.t + 1)
        self.mu_product *= mu
        self._moments()
        denom = self.c
        np.multiply(v, f(1 / (1 - 0.999**self.t)), out=denom)
        np.sqrt(denom, out=denom)
        denom += f(1e-8)
        np.multiply(self.g, f(-2e-3 * (1 - mu) / (1 - self.mu_product)), out=tmp)
        np.multiply(m, f(-2e-3 * mu_next / (1 - self.mu_product * mu_next)), out=self.tmp2)
        tmp += self.tmp2
        np.divide(tmp, denom, out=tmp)
        self.p += tmp

    def _radam(self):
        from fastopt.optim.radam import rectification

        f, m, v, tmp = np.float32, self.a, self.b, self.tmp
        self.t += 1
        self._moments()
        bc2_sqrt, rect = rectification(0.999, self.t)
        step_size = -1e-3 / (1 - 0.9**self.t)
        if rect > 0:
            np.sqrt(v, out=tmp)
            tmp += f(1e-8)
            np.divide(m, tmp, out=tmp)
            tmp *= f(step_size * bc2_sqrt * rect)
        else:
            np.multiply(m, f(step_size), out=tmp)
        self.p += tmp

    def _lamb(self):
        f, m, v, tmp = np.float32, self.a, self.b, self.tmp
        self.t += 1
        self._moments()
        np.multiply(v, f(1 / (1 - 0.999**self.t)), out=tmp)
        np.sqrt(tmp, out=tmp)
        tmp += f(1e-6)
        np.divide(m, tmp, out=tmp)
        tmp *= f(1 / (1 - 0.9**self.t))
        theta_norm, u_norm = float(np.linalg.norm(self.p)), float(np.linalg.norm(tmp))
        ratio = theta_norm / u_norm if theta_norm > 0 and u_norm > 0 else 1.0
        tmp *= f(-1e-3 * ratio)
        self.p += tmp

    def _lion(self):
        f, m, tmp = np.float32, self.a, self.tmp
        np.subtract(self.g, m, out=tmp)
        tmp *= f(0.1)
        tmp += m
        np.sign(tmp, out=tmp)
        tmp *= f(-1e-4)
        self.p += tmp
        np.subtract(self.g, m, out=tmp)
        tmp *= f(0.01)
        m += tmp


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
        "adagrad": ("Adagrad", dict(lr=1e-2)),
        "adamax": ("Adamax", dict(lr=2e-3)),
        "nadam": ("NAdam", dict(lr=2e-3)),
        "radam": ("RAdam", dict(lr=1e-3)),
        "adafactor": ("Adafactor", dict(lr=1e-2)),
    }
    #: Where torch has a fused CPU kernel (the rest run foreach, its fastest there).
    FUSED = ("SGD", "Adam", "AdamW", "Adagrad")

    def __init__(self, rule, n, *, tensors=1, mode=None):
        import torch

        name, options = self.TORCH[rule]
        size = n // tensors
        self.params = []
        shape = shape_of(rule, size)
        for k in range(tensors):
            p = torch.from_numpy(random_buffer(size, 10 + k).reshape(shape)).requires_grad_()
            p.grad = torch.from_numpy(random_buffer(size, 20000 + k).reshape(shape) * np.float32(1e-3))
            self.params.append(p)
        if mode is None:
            mode = "fused" if name in self.FUSED else "foreach"
        self.mode = mode
        flag = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for-loop": dict(foreach=False)}[mode]
        self.optimizer = getattr(torch.optim, name)(self.params, **options, **flag)
        self.step = self.optimizer.step


class StateDtypeStep:
    """One AdamW step over ``n`` float32 parameters with its state in fewer bytes: fastopt
    with ``state_dtype`` float32, int8 or bfloat16, torch's fused AdamW (float32 state), and,
    where installed, bitsandbytes' and torchao's 8-bit AdamW on the CPU (blocks of 256 and
    128, their defaults). ``bytes`` is what a step moves per parameter (fastopt's reads and
    writes, as :data:`BYTES_PER_ELEMENT`); ``state_bytes`` the state a parameter keeps.
    ``device="cuda"``: fastopt's and torch's fused steps on the GPU (``fastopt.bench.gpu``)."""

    IMPLEMENTATIONS = ("fastopt float32", "fastopt int8", "fastopt bfloat16", "torch fused", "bitsandbytes 8-bit",
                       "torchao 8-bit")
    #: The contenders over bfloat16 parameters (and float32 ones for scale): fastopt with
    #: bfloat16 state (the default) and with float32 state, torch's fused AdamW over bfloat16
    #: parameters (bfloat16 state, rounded to nearest), and torchao's compiled AdamW with
    #: ``bf16_stochastic_round=True`` (the parameters rounded stochastically, its state bfloat16).
    BFLOAT16_IMPLEMENTATIONS = ("fastopt float32", "torch fused", "fastopt bf16 params", "fastopt bf16 params f32 state",
                                "fastopt bf16 params int8 state", "torch fused bf16 params", "torchao bf16 params")
    #: Reads + writes per parameter: p 8, g 4, and each state row read and written (bfloat16
    #: parameters: p 4, g 2).
    BYTES = {"fastopt float32": 28, "fastopt int8": 16, "fastopt bfloat16": 20, "torch fused": 28,
             "fastopt bf16 params": 14, "fastopt bf16 params f32 state": 22, "torch fused bf16 params": 14,
             "torchao bf16 params": 14, "fastopt bf16 params int8 state": 10}
    STATE_BYTES = {"fastopt float32": 8.0, "fastopt int8": 2 + 8 / 2048, "fastopt bfloat16": 4.0,
                   "torch fused": 8.0, "bitsandbytes 8-bit": 2 + 8 / 256, "torchao 8-bit": 2 + 8 / 128,
                   "fastopt bf16 params": 4.0, "fastopt bf16 params f32 state": 8.0, "torch fused bf16 params": 4.0,
                   "torchao bf16 params": 4.0, "fastopt bf16 params int8 state": 2 + 8 / 2048}
    #: fastopt's (parameter dtype, state_dtype) of each of its contenders.
    FASTOPT = {"fastopt float32": ("float32", None), "fastopt int8": ("float32", "int8"),
               "fastopt bfloat16": ("float32", "bfloat16"), "fastopt bf16 params": ("bfloat16", None),
               "fastopt bf16 params f32 state": ("bfloat16", "float32"),
               "fastopt bf16 params int8 state": ("bfloat16", "int8")}

    def __init__(self, implementation, n, device="cpu"):
        self.implementation = implementation
        if implementation.startswith("fastopt"):
            param_dtype, state_dtype = self.FASTOPT[implementation]
            data, grad = random_buffer(n, 0), random_buffer(n, 1) * np.float32(1e-3)
            if param_dtype == "bfloat16":
                from ..checks import bfloat16

                data, grad = data.astype(bfloat16()), grad.astype(bfloat16())
            if device == "cuda":
                from .. import device as _device

                data, grad = _device.to_device(data), _device.to_device(grad)
            self.params = fastopt.FlatParams.wrap(data, grad, {"p": n})
            self.optimizer = fastopt.AdamW(self.params, lr=1e-3, state_dtype=state_dtype)
            self.step = self.optimizer.step
            return
        import torch

        if device == "cuda":
            self.timer = "torch"  # fastopt.bench.gpu.event_ms times it with torch's events
        bf16 = implementation in ("torch fused bf16 params", "torchao bf16 params")
        dtype = torch.bfloat16 if bf16 else torch.float32
        p = torch.from_numpy(random_buffer(n, 10)).to(device, dtype).requires_grad_()
        p.grad = torch.from_numpy(random_buffer(n, 11) * np.float32(1e-3)).to(device, dtype)
        self.params = [p]
        if implementation == "torchao bf16 params":
            from torchao.optim import _AdamW

            self.optimizer = _AdamW(self.params, lr=1e-3, bf16_stochastic_round=True)
        elif implementation.startswith("torch fused"):
            self.optimizer = torch.optim.AdamW(self.params, lr=1e-3, fused=True)
        elif implementation == "bitsandbytes 8-bit":
            import bitsandbytes

            # min_8bit_size=0: every tensor quantized (its default keeps tensors under 4096 in float32)
            self.optimizer = bitsandbytes.optim.AdamW8bit(self.params, lr=1e-3, min_8bit_size=0)
        else:
            from torchao.optim import AdamW8bit

            self.optimizer = AdamW8bit(self.params, lr=1e-3)
        self.step = self.optimizer.step

    @staticmethod
    def available(implementation):
        """Whether the library an implementation needs is installed."""
        import importlib.util

        module = {"torch fused": "torch", "torch fused bf16 params": "torch", "bitsandbytes 8-bit": "bitsandbytes",
                  "torchao 8-bit": "torchao", "torchao bf16 params": "torchao", "fastopt bf16 params": "ml_dtypes",
                  "fastopt bf16 params f32 state": "ml_dtypes", "fastopt bf16 params int8 state": "ml_dtypes"}.get(
            implementation)
        return module is None or importlib.util.find_spec(module) is not None


def muon_shapes(n):
    """Muon's matrices for ``n`` parameters: pairs of a 500 x 1000 and a 1000 x 500 matrix
    (a wide and a tall one, as a transformer's MLP has), ``n // 1e6`` pairs (at least one)."""
    return [(500, 1000), (1000, 500)] * max(1, n // 10**6)


def muon_flops(shapes, steps=5):
    """Floating-point operations of the Newton-Schulz iteration over ``shapes``: per step of an
    ``A x B`` matrix (``A <= B`` once transposed) ``X X^T``, ``G G`` and ``(bG + cGG) X``."""
    total = 0
    for rows, cols in shapes:
        a, b = min(rows, cols), max(rows, cols)
        total += steps * (4 * a * a * b + 2 * a**3)
    return total


class MuonStep:
    """One Muon step over :func:`muon_shapes` float32 matrices: ``"fastopt"`` (the iteration in
    float32), ``"fastopt-bf16"`` (in bfloat16, as torch's) or ``"torch"`` (torch.optim.Muon,
    which iterates in bfloat16)."""

    IMPLEMENTATIONS = ("fastopt", "fastopt-bf16", "torch")

    def __init__(self, implementation, n):
        self.shapes = muon_shapes(n)
        arrays = {f"m{k}": random_buffer(r * c, k).reshape(r, c) for k, (r, c) in enumerate(self.shapes)}
        if implementation == "torch":
            import torch

            self.params = [torch.from_numpy(a).requires_grad_() for a in arrays.values()]
            for k, p in enumerate(self.params):
                p.grad = torch.from_numpy(random_buffer(p.numel(), 100 + k).reshape(p.shape))
            self.optimizer = torch.optim.Muon(self.params, lr=1e-3)
        else:
            self.params = fastopt.FlatParams.from_arrays(arrays)
            self.params.grad[:] = random_buffer(self.params.size, 100)
            self.optimizer = fastopt.Muon(self.params, lr=1e-3,
                                          ns_dtype="bfloat16" if implementation == "fastopt-bf16" else None)
        self.step = self.optimizer.step


def calls_per_sample(n):
    """Calls per timed sample (a pytest-benchmark round, a sample of the report): ten below
    1e4 elements, so that a sample lasts tens of microseconds and the timer's resolution
    does not decide the result. No more than that: every call is a step on the same
    gradient, and after about 1,100 of them (alpha 0.99) centered RMSProp's
    ``v - avg**2`` falls below float32's resolution and turns negative (the suite stays
    under 400 steps of it per case)."""
    return max(1, 10**4 // n)


def median_seconds(step, repeats, warmup=3, inner=1):
    """Median wall time of one ``step()`` after ``warmup`` untimed calls; each of the
    ``repeats`` samples times ``inner`` calls in a row (for steps of a few microseconds)."""
    import time

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            step()
        times.append((time.perf_counter() - start) / inner)
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


# -- the `fastopt bench` report ------------------------------------------------------------------

#: The report's fixed set: kernel name -> (bytes per element, {implementation: factory(n)}).
REPORT_KERNELS = {
    "adam": (BYTES_PER_ELEMENT["adam"], {
        "fastopt": lambda n: FastoptStep("adam", n), "numpy": lambda n: NumpyStep("adam", n),
        "torch": lambda n: TorchStep("adam", n)}),
    "sgd_nesterov": (BYTES_PER_ELEMENT["sgd_nesterov"], {
        "fastopt": lambda n: FastoptStep("sgd_nesterov", n), "numpy": lambda n: NumpyStep("sgd_nesterov", n),
        "torch": lambda n: TorchStep("sgd_nesterov", n)}),
    "rmsprop": (BYTES_PER_ELEMENT["rmsprop"], {
        "fastopt": lambda n: FastoptStep("rmsprop", n), "numpy": lambda n: NumpyStep("rmsprop", n),
        "torch": lambda n: TorchStep("rmsprop", n)}),
    "dropout": (DropoutStep.BYTES_PER_ELEMENT, {
        name: (lambda n, name=name: DropoutStep(name, n)) for name in ("fastopt", "numpy", "torch")}),
}
#: What ``fastopt bench`` times unless told (``--kernels``): the rules above and dropout.
DEFAULT_KERNELS = tuple(REPORT_KERNELS)
#: The rules added on the one-source spec, on request (torch has no Lion or LAMB: numpy is
#: their peer).
REPORT_KERNELS.update({rule: (BYTES_PER_ELEMENT[rule], {
    "fastopt": lambda n, rule=rule: FastoptStep(rule, n), "numpy": lambda n, rule=rule: NumpyStep(rule, n),
    **({"torch": lambda n, rule=rule: TorchStep(rule, n)} if rule in TorchStep.TORCH else {})})
    for rule in ("adagrad", "adamax", "nadam", "radam", "lion", "lamb")})
#: Adafactor over a matrix, against torch (numpy has no step of it here).
REPORT_KERNELS["adafactor"] = (BYTES_PER_ELEMENT["adafactor"], {
    "fastopt": lambda n: FastoptStep("adafactor", n), "torch": lambda n: TorchStep("adafactor", n)})

#: AdamW with its state or parameters in fewer bytes, on request: fastopt's int8 and bfloat16
#: state against torch's fused AdamW (float32 state), and over bfloat16 parameters against
#: torch's fused AdamW over bfloat16 parameters: ``{kernel: (fastopt's, torch's)}``, the
#: implementations of :class:`StateDtypeStep` (on the CPU or, in ``fastopt.bench.gpu``, the GPU).
STATE_DTYPE_KERNELS = {"adamw_int8": ("fastopt int8", "torch fused"),
                       "adamw_bf16": ("fastopt bfloat16", "torch fused"),
                       "adamw_bf16_params": ("fastopt bf16 params", "torch fused bf16 params")}
REPORT_KERNELS.update({kernel: ({"fastopt": StateDtypeStep.BYTES[mine], "torch": StateDtypeStep.BYTES[peer]}, {
    "fastopt": lambda n, mine=mine: StateDtypeStep(mine, n), "torch": lambda n, peer=peer: StateDtypeStep(peer, n)})
    for kernel, (mine, peer) in STATE_DTYPE_KERNELS.items()})
#: LAMB with int8 or bfloat16 state against numpy's float32 LAMB (torch has none): p read
#: twice and written, g read twice, two rows of state read twice and written (int8: 1 byte
#: each, and absmax, 1/512 of that; bfloat16: 2 bytes each).
REPORT_KERNELS.update({f"lamb_{name}": ({"fastopt": 20 + 6 * size, "numpy": BYTES_PER_ELEMENT["lamb"]}, {
    "fastopt": lambda n, kind=kind: FastoptStep("lamb", n, state_dtype=kind), "numpy": lambda n: NumpyStep("lamb", n)})
    for name, kind, size in (("int8", "int8", 1), ("bf16", "bfloat16", 2))})


def _torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _repeats(n):
    return max(5, min(200, int(2e7 // max(n, 1))))


def report(sizes, kernels=None, rounds=3):
    """Time the fixed set on this machine: one row per (kernel, size, implementation).

    The implementations of one kernel and size take turns ``rounds`` times (noise falls on
    all alike); each row has the median time, GB/s, the percentage of the in-place roofline
    (``x *= s`` over the same size, measured in this run) and, for fastopt, the speed-up
    against each peer. GPU rows come from :func:`fastopt.bench.gpu.gpu_report`.
    """
    kernels = list(DEFAULT_KERNELS) if kernels is None else list(kernels)
    implementations = ["fastopt", "numpy"] + (["torch"] if _torch_available() else [])
    rows = []
    for n in sizes:
        roof_step = RooflineStep(n)
        roofline = 8 * n / median_seconds(roof_step.step, _repeats(n), inner=calls_per_sample(n)) / 1e9
        del roof_step
        for kernel in kernels:
            bytes_per_element, factories = REPORT_KERNELS[kernel]
            steps = {name: factories[name](n).step for name in implementations if name in factories}
            times = {name: [] for name in steps}
            for _ in range(rounds):
                for name, step in steps.items():
                    times[name].append(median_seconds(step, max(1, _repeats(n) // rounds), warmup=1,
                                                      inner=calls_per_sample(n)))
            del steps
            medians = {name: float(np.median(t)) for name, t in times.items()}
            rows += report_rows(kernel, n, "cpu", bytes_per_element, medians, roofline)
    return rows


def report_rows(kernel, n, device, bytes_per_element, medians, roofline):
    """One report row per implementation from ``{implementation: median seconds}``; fastopt's
    row carries its speed-up against each peer. ``bytes_per_element``: what each moves, one
    number for all or ``{implementation: bytes}``."""
    rows = []
    for name, seconds in medians.items():
        moved = bytes_per_element[name] if isinstance(bytes_per_element, dict) else bytes_per_element
        gbps = moved * n / seconds / 1e9
        row = {"kernel": kernel, "size": n, "device": device, "implementation": name,
               "ms": seconds * 1e3, "gbps": gbps, "roofline_gbps": roofline,
               "pct_roofline": 100 * gbps / roofline}
        if name == "fastopt":
            row["speedup"] = {peer: medians[peer] / seconds for peer in medians if peer != name}
        rows.append(row)
    return rows


def format_table(rows):
    """The report as a fixed-width text table."""
    peers = sorted({peer for row in rows for peer in row.get("speedup", {})})
    header = (f"{'kernel':<17} {'size':>8} {'device':<6} {'implementation':<14} {'ms':>10} "
              f"{'GB/s':>7} {'% roof':>7} " + " ".join(f"{'vs ' + p:>9}" for p in peers))
    lines = [header, "-" * len(header)]
    for row in rows:
        speedups = " ".join(f"{'x%.2f' % row['speedup'][p]:>9}" if p in row.get("speedup", {}) else f"{'':>9}"
                            for p in peers)
        lines.append(f"{row['kernel']:<17} {row['size']:>8.0e} {row['device']:<6} {row['implementation']:<14} "
                     f"{row['ms']:>10.4f} {row['gbps']:>7.1f} {row['pct_roofline']:>7.1f} {speedups}")
    return "\n".join(lines)


def plot_report(rows, path):
    """GB/s against size per kernel, one line per implementation, the roofline dashed."""
    from ..train.plot import _pyplot

    plt = _pyplot()
    kernels = list(dict.fromkeys(row["kernel"] for row in rows))
    figure, axes = plt.subplots(1, len(kernels), figsize=(3.6 * len(kernels), 3.6), layout="constrained",
                                squeeze=False)
    for axis, kernel in zip(axes[0], kernels):
        mine = [row for row in rows if row["kernel"] == kernel]
        sizes = sorted({row["size"] for row in mine})
        roof = {row["size"]: row["roofline_gbps"] for row in mine}
        axis.plot(sizes, [roof[s] for s in sizes], "k--", label="x *= s roofline")
        for name in dict.fromkeys(row["implementation"] for row in mine):
            points = sorted((row["size"], row["gbps"]) for row in mine if row["implementation"] == name)
            axis.plot(*zip(*points), marker="o", label=f"{name} ({mine[0]['device']})")
        axis.set_xscale("log")
        axis.set_title(kernel)
        axis.set_xlabel("elements")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("GB/s (bytes read + written)")
    axes[0][0].legend(fontsize="small")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


class TrainerStep:
    """One training step (forward, backward, AdamW) of a 256-512-512-10 MLP on a batch of 256,
    dropout 0.1: ``"fastopt"`` (MLP + AdamW, kernels on one thread as in the Trainer) or
    ``"torch"`` (the same network, fused AdamW), on ``device`` ("cuda": the batch is on the GPU
    already; the caller synchronises)."""

    SIZES = (256, 512, 512, 10)
    BATCH = 256

    def __init__(self, implementation, device="cpu"):
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((self.BATCH, self.SIZES[0]), dtype=np.float32)
        self.y = rng.integers(0, self.SIZES[-1], self.BATCH)
        self.t = 0
        if implementation == "torch":
            import torch

            layers = []
            for k, (a, b) in enumerate(zip(self.SIZES, self.SIZES[1:])):
                layers.append(torch.nn.Linear(a, b))
                if k < len(self.SIZES) - 2:
                    layers += [torch.nn.ReLU(), torch.nn.Dropout(0.1)]
            model = torch.nn.Sequential(*layers).to(device)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
            loss = torch.nn.CrossEntropyLoss()
            xt, yt = torch.from_numpy(self.x).to(device), torch.from_numpy(self.y).to(device)

            def step():
                optimizer.zero_grad(set_to_none=True)
                loss(model(xt), yt).backward()
                optimizer.step()

            self.step = step
        else:
            from ..nn.losses import cost_gradient, softmax_cross_entropy

            self.model = fastopt.MLP(self.SIZES, dropout=0.1, seed=0, device=device)
            self.x, self.y = self.model.backend.asarray(self.x), self.model.backend.asarray(self.y)
            self.optimizer = fastopt.AdamW(self.model.params, lr=1e-3)
            self._loss, self._gradient = softmax_cross_entropy, cost_gradient
            self.step = self._fastopt

    def _fastopt(self):
        import numba

        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            self.t += 1
            outputs = self.model.forward(self.x, training=True, step=self.t)
            self.model.backward(self._gradient(self._loss, outputs, self.y))
            self.optimizer.step()
        finally:
            numba.set_num_threads(threads)


# -- what the pytest-benchmark suite in bench/ shares --------------------------------------------

#: Sizes the suite runs: 1e3 to 1e7 by default; FASTOPT_BENCH_MAX_SIZE=1e8 adds 1e8 (~5 GB).
SUITE_SIZES = [n for n in (10**3, 10**4, 10**5, 10**6, 10**7, 10**8)
               if n <= int(float(os.environ.get("FASTOPT_BENCH_MAX_SIZE", "1e7")))]


def record(benchmark, bytes_per_step, roofline):
    """Attach bytes moved, GB/s and the percentage of the same run's roofline to a result."""
    seconds = benchmark.stats.stats.median
    gbps = bytes_per_step / seconds / 1e9
    benchmark.extra_info.update(
        bytes=bytes_per_step, gbps=round(gbps, 2), roofline_gbps=round(roofline, 2),
        pct_roofline=round(100 * gbps / roofline, 1),
    )
