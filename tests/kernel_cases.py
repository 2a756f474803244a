"""Random inputs for every kernel: buffers, chunk tables, group arrays and scalars."""

import numpy as np

from fastopt.kernels import adam, rmsprop, sgd
from fastopt.kernels.chunks import chunk_table

#: Awkward sizes: empty, one, a few, a prime above the chunk size (so a chunk boundary falls
#: mid-run and the last chunk is short), and a few million.
SIZES = [0, 1, 7, 16411, 2_000_003]
DTYPES = [np.float32, np.float64]


def _sign(rng):
    return float(rng.choice([1.0, -1.0]))


def _sgd_momentum(rng):
    return [_sign(rng), rng.uniform(0, 1), rng.uniform(0, 1)]


def _adam(rng):
    beta2 = rng.choice([0.0, rng.uniform(0, 1), 0.999])
    # bias_correction1 stays float64 whatever the buffers' dtype (the kernel divides in float64).
    return [_sign(rng), rng.uniform(0.01, 1), float(beta2), float(1 - beta2), 10 ** rng.uniform(-12, -2),
            np.float64(rng.uniform(0.05, 1)), rng.uniform(0.01, 1)]


def _rmsprop(rng, centered=False):
    # alpha = 0 makes the centered variance g**2 - g**2: zero, all rounding (tested apart).
    alpha = float(rng.choice([rng.uniform(0.01, 1), 0.99, 1.0] + ([] if centered else [0.0])))
    return [_sign(rng), alpha, 1 - alpha, 10 ** rng.uniform(-12, -2)]


def _lr_and_decay(rng, n_groups):
    return rng.uniform(0, 0.1, n_groups), rng.choice([0.0, 1e-2, 0.5], n_groups)


def _step_and_shrink(rng, n_groups):
    return rng.uniform(0, 0.1, n_groups), 1 - rng.uniform(0, 0.1, n_groups)


# name: (module, mutated state buffers after param, group arrays, scalars)
KERNELS = {
    "sgd_step": (sgd, [], _lr_and_decay, lambda rng: [_sign(rng)]),
    "sgd_momentum_step": (sgd, ["momentum_buffer"], _lr_and_decay, _sgd_momentum),
    "sgd_nesterov_step": (sgd, ["momentum_buffer"], _lr_and_decay,
                          lambda rng: _sgd_momentum(rng) + [rng.uniform(0, 1)]),
    "adam_step": (adam, ["exp_avg", "exp_avg_sq"], _lr_and_decay, _adam),
    "adam_amsgrad_step": (adam, ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"], _lr_and_decay, _adam),
    "adamw_step": (adam, ["exp_avg", "exp_avg_sq"], _step_and_shrink, _adam),
    "adamw_amsgrad_step": (adam, ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"], _step_and_shrink, _adam),
    "rmsprop_step": (rmsprop, ["square_avg"], _lr_and_decay, _rmsprop),
    "rmsprop_centered_step": (rmsprop, ["square_avg", "grad_avg"], _lr_and_decay,
                              lambda rng: _rmsprop(rng, centered=True)),
    "rmsprop_momentum_step": (rmsprop, ["square_avg", "momentum_buffer"], _lr_and_decay,
                              lambda rng: _rmsprop(rng) + [rng.uniform(0, 1)]),
    "rmsprop_centered_momentum_step": (rmsprop, ["square_avg", "grad_avg", "momentum_buffer"],
                                       _lr_and_decay,
                                       lambda rng: _rmsprop(rng, centered=True) + [rng.uniform(0, 1)]),
}


def scaled_normal(rng, size):
    """Normal values whose magnitudes span 1e-6 to 1e2, so eps and cancellation both matter."""
    return rng.standard_normal(size) * 10 ** rng.uniform(-6, 2, size)


def state_buffer(rng, name, scale, grad_avg=None):
    """A state buffer shaped like one an optimizer builds from gradients of ``scale``.

    Second moments are at least ``(scale / 10)**2`` (plus ``grad_avg**2`` where the centered
    variance needs it), as running averages of such gradients are, so that the conditioning
    of the test data stays that of real training.
    """
    size = scale.size
    if name in ("exp_avg_sq", "max_exp_avg_sq", "square_avg"):
        second = (0.1 * scale) ** 2 + (rng.standard_normal(size) * scale) ** 2
        return second if grad_avg is None else second + 1.01 * grad_avg**2
    return rng.standard_normal(size) * scale


#: Buffers whose values share the units of a gradient (the rest hold squared gradients).
GRADIENT_UNITS = {"param", "grad", "exp_avg", "grad_avg", "momentum_buffer"}


def buffer_names(name):
    """Names of a kernel's mutated buffers, in argument order."""
    return ["param", *KERNELS[name][1]]


def make_case(name, size, dtype, rng, n_groups=1):
    """``(kernel, reference, mutated, args)``: the kernel runs as ``kernel(*mutated, *args)``."""
    module, state_names, groups, scalars = KERNELS[name]
    scale = 10 ** rng.uniform(-6, 2, size)
    param = rng.standard_normal(size) * scale * 10 ** rng.uniform(-1, 1, size)
    grad = rng.standard_normal(size) * scale
    grad_avg = state_buffer(rng, "grad_avg", scale) if "grad_avg" in state_names else None
    state = [grad_avg if s == "grad_avg" else state_buffer(rng, s, scale, grad_avg) for s in state_names]
    cuts = np.sort(rng.integers(0, size + 1, n_groups - 1)) if size else np.zeros(n_groups - 1, int)
    edges = [0, *cuts.tolist(), size]
    segments = [(edges[k], edges[k + 1], k) for k in range(n_groups)]
    bounds, chunk_group = chunk_table(segments)
    group_a, group_b = groups(rng, n_groups)
    mutated = [np.ascontiguousarray(b, dtype=dtype) for b in [param, *state]]
    # Adam's per-group learning rates are float64 (see fastopt.kernels.adam); np.float64
    # scalars stay float64 (the others are Python floats, cast to the dtype).
    group_a = group_a.astype(np.float64 if module is adam else dtype)
    args = [grad.astype(dtype), bounds, chunk_group, group_a, group_b.astype(dtype),
            *[s if isinstance(s, np.float64) else dtype(s) for s in scalars(rng)]]
    return getattr(module, name), getattr(module, name + "_reference"), mutated, args
