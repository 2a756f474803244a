"""Random inputs for every rule's kernel: buffers, chunk tables, group tables and scalars."""

import dataclasses

import numpy as np

from fastopt.kernels.chunks import CHUNK_SIZE, chunk_table
from fastopt.kernels.rules import RULES

#: Awkward sizes: empty, one, a few, a prime above the chunk size (so a chunk boundary falls
#: mid-run and the last chunk is short), and a few million.
SIZES = [0, 1, 7, 16411, 2_000_003]
DTYPES = [np.float32, np.float64]

#: Buffers whose values share the units of a gradient (the rest hold squared gradients).
GRADIENT_UNITS = {"param", "grad", "exp_avg", "grad_avg", "momentum_buffer", "exp_inf"}


#: The rules whose kernels are element-wise (the usual kernel arguments), those with
#: per-tensor sums (kernels.tensorwise: tensor tables and scratch as well), those that
#: transform each matrix whole (kernels.matrixwise; tested in test_muon.py), and those with
#: factored state (kernels.factored; tested in test_adafactor.py).
ELEMENTWISE = sorted(name for name, rule in RULES.items() if not rule.per_tensor)
TENSORWISE = sorted(name for name, rule in RULES.items() if rule.tensorwise is not None)
MATRIXWISE = sorted(name for name, rule in RULES.items() if rule.matrixwise is not None)
FACTORED = sorted(name for name, rule in RULES.items() if rule.factored is not None)


def _scalar_values(rule, rng):
    """A value for each of ``rule``'s scalars, by name, over the ranges training reaches."""
    values = {}
    for name in rule.scalars:
        if name == "lr":
            values[name] = rng.uniform(0, 0.1)
        elif name == "grad_sign":
            values[name] = float(rng.choice([1.0, -1.0]))
        elif name == "bias_correction1":
            values[name] = rng.uniform(0.05, 1)
        elif name == "beta2":
            values[name] = float(rng.choice([0.0, rng.uniform(0, 1), 0.999]))
        elif name in ("one_minus_beta2", "one_minus_alpha") and name[len("one_minus_"):] in values:
            values[name] = 1 - values[name[len("one_minus_"):]]
        elif name == "alpha":
            # alpha = 0 makes the centered variance g**2 - g**2: zero, all rounding (tested apart).
            centered = "grad_avg" in rule.state
            values[name] = float(rng.choice([rng.uniform(0.01, 1), 0.99, 1.0] + ([] if centered else [0.0])))
        elif name == "eps":
            values[name] = 10 ** rng.uniform(-12, -2)
        elif name == "lr_decay_divisor":  # 1 + (t - 1) * lr_decay
            values[name] = 1 + rng.uniform(0, 100) * float(rng.choice([0.0, 1e-3, 1.0]))
        elif name == "bias_correction2":
            values[name] = rng.uniform(0.001, 1)
        elif name == "rect":  # 0 on the first steps (no rectification), else in (0, 1]
            values[name] = float(rng.choice([0.0, rng.uniform(0.01, 1), 1.0]))
        else:  # one_minus_beta1, bias_correction2_sqrt, momentum, buffer_decay, buffer_grad_scale
            values[name] = rng.uniform(0.01, 1)
    return values


def scalars_of(rule, values):
    """``values`` (by name) as the rule's scalar tuple of Python floats."""
    return tuple(float(values[name]) for name in rule.scalars)


def scaled_normal(rng, size):
    """Normal values whose magnitudes span 1e-6 to 1e2, so eps and cancellation both matter."""
    return rng.standard_normal(size) * 10 ** rng.uniform(-6, 2, size)


def state_row(rng, name, scale, grad_avg=None):
    """A state buffer shaped like one an optimizer builds from gradients of ``scale``.

    Second moments are at least ``(scale / 10)**2`` (plus ``grad_avg**2`` where the centered
    variance needs it), as running averages of such gradients are, so that the conditioning
    of the test data stays that of real training.
    """
    size = scale.size
    if name in ("exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum"):
        second = (0.1 * scale) ** 2 + (rng.standard_normal(size) * scale) ** 2
        return second if grad_avg is None else second + 1.01 * grad_avg**2
    if name == "exp_inf":  # a running maximum of |g| + eps
        return 0.1 * scale + np.abs(rng.standard_normal(size) * scale)
    return rng.standard_normal(size) * scale


@dataclasses.dataclass
class Case:
    """One call of a rule's kernel: ``kernel(*case.arguments())``."""

    rule: object
    param: np.ndarray
    state: np.ndarray
    grad: np.ndarray
    bounds: np.ndarray
    groups: np.ndarray
    table: np.ndarray
    scalars: tuple

    def arguments(self):
        return self.param, self.state, self.grad, self.bounds, self.groups, self.table, self.scalars

    def copy(self):
        return dataclasses.replace(self, param=self.param.copy(), state=self.state.copy(), grad=self.grad.copy())

    def mutated(self):
        """The buffers a step changes: ``param`` and each state row, with their names."""
        return {"param": self.param, **{name: self.state[k] for k, name in enumerate(self.rule.state)}}

    def with_table(self, segments, chunk_size):
        """The same case over another cut of the same groups (the GPU's tiles, say)."""
        bounds, groups = chunk_table(segments, chunk_size=chunk_size)
        return dataclasses.replace(self, bounds=bounds, groups=groups)


def make_case(name, size, dtype, rng, n_groups=1, chunk_size=CHUNK_SIZE):
    """Random data for rule ``name``: ``(case, segments)``."""
    rule = RULES[name]
    scale = 10 ** rng.uniform(-6, 2, size)
    param = rng.standard_normal(size) * scale * 10 ** rng.uniform(-1, 1, size)
    grad = rng.standard_normal(size) * scale
    grad_avg = state_row(rng, "grad_avg", scale) if "grad_avg" in rule.state else None
    rows = [grad_avg if s == "grad_avg" else state_row(rng, s, scale, grad_avg) for s in rule.state]
    cuts = np.sort(rng.integers(0, size + 1, n_groups - 1)) if size else np.zeros(n_groups - 1, int)
    edges = [0, *cuts.tolist(), size]
    segments = [(edges[k], edges[k + 1], k) for k in range(n_groups)]
    bounds, groups = chunk_table(segments, chunk_size=chunk_size)
    table = np.stack([rng.uniform(0, 2, n_groups), rng.choice([0.0, 1e-2, 0.5], n_groups)], axis=1)
    state = np.array(rows, dtype=dtype).reshape(len(rule.state), size)
    case = Case(rule, param.astype(dtype), state, grad.astype(dtype), bounds, groups, table,
                scalars_of(rule, _scalar_values(rule, rng)))
    return case, segments


@dataclasses.dataclass
class TensorCase(Case):
    """One call of a rule with per-tensor sums: the kernel arguments, then the tensor tables
    and the scratch sums (``kernels.tensorwise.kernel(rule)(*case.arguments())``)."""

    tile_tensor: np.ndarray = None
    tensor_tiles: np.ndarray = None
    partial: np.ndarray = None
    sums: np.ndarray = None

    def arguments(self):
        return (*super().arguments(), self.tile_tensor, self.tensor_tiles, self.partial, self.sums)

    def copy(self):
        return dataclasses.replace(super().copy(), partial=self.partial.copy(), sums=self.sums.copy())


def make_tensor_case(name, sizes, dtype, rng, skipped=()):
    """Random data for rule ``name`` over tensors of ``sizes`` (each its own group, but for
    tensors 1 and 2 which share one, and the tensors in ``skipped``, of group -1): ``(case,
    segments)``, its tiles of ``TENSOR_TILE`` (read when called) starting at each tensor."""
    from fastopt.kernels import chunks

    base, _ = make_case(name, int(sum(sizes)), dtype, rng)
    edges = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    group_of = [min(k, 1) if k <= 2 else k - 1 for k in range(len(sizes))]
    segments = [(int(edges[k]), int(edges[k + 1]), -1 if k in skipped else group_of[k]) for k in range(len(sizes))]
    bounds, groups = chunks.chunk_table(segments, chunks.TENSOR_TILE, merge=False)
    tile_tensor, tensor_tiles = chunks.tensor_tiles(segments)
    n_groups = max(group_of) + 1
    table = np.stack([rng.uniform(0.2, 2, n_groups), rng.choice([0.0, 1e-2, 0.5], n_groups)], axis=1)
    case = TensorCase(base.rule, base.param, base.state, base.grad, bounds, groups, table, base.scalars,
                      tile_tensor, tensor_tiles, np.zeros((tile_tensor.size, 2)), np.zeros((tensor_tiles.size - 1, 2)))
    return case, segments


@dataclasses.dataclass
class MatrixCase(Case):
    """One step of a rule that transforms each matrix whole: the kernel arguments, the tile
    tables, the matrices and the scratch buffer (stage 1 ``first(*case.arguments(), case.work)``,
    the transform, stage 3 ``second(case.param, case.work, ..., case.tile_tensor, dims)``)."""

    tile_tensor: np.ndarray = None
    tensor_tiles: np.ndarray = None
    matrices: object = None
    work: np.ndarray = None

    def copy(self):
        return dataclasses.replace(super().copy(), work=self.work.copy())

    def shapes(self):
        """``(start, rows, cols)`` of each matrix (the reference's)."""
        starts = np.concatenate([[0], np.cumsum([r * c for r, c in self.layout_shapes])]).astype(int)
        return [(int(s), r, c) for s, (r, c) in zip(starts, self.layout_shapes)]

    layout_shapes: tuple = ()


def make_matrix_case(name, shapes, dtype, rng, skipped=()):
    """Random data for matrix rule ``name`` over matrices of ``shapes`` (grouped as
    :func:`make_tensor_case` groups tensors; those in ``skipped`` of group -1), tiles of
    ``TENSOR_TILE`` (read when called)."""
    from fastopt.kernels.matrixwise import Matrices

    sizes = [r * c for r, c in shapes]
    tensor, segments = make_tensor_case(name, sizes, dtype, rng, skipped)
    layout = [(f"m{k}", shape) for k, shape in enumerate(shapes)]
    matrices = Matrices(layout, [start for start, _, _ in segments])
    values = {name: rng.uniform(0, 1) for name in tensor.rule.scalars}
    values.update(lr=rng.uniform(0, 0.1), momentum=float(rng.choice([0.0, 0.5, 0.95])),
                  match_rms_adamw=float(rng.integers(0, 2)), a=3.4445, b=-4.7750, c=2.0315, eps=1e-7, ns_steps=float(rng.integers(0, 6)), bfloat16=0.0)
    values["one_minus_momentum"] = 1.0 - values["momentum"]
    case = MatrixCase(tensor.rule, tensor.param, tensor.state, tensor.grad, tensor.bounds, tensor.groups,
                      tensor.table, scalars_of(tensor.rule, values), tensor.tile_tensor, tensor.tensor_tiles,
                      matrices, np.zeros(tensor.param.size, dtype), tuple(tuple(s) for s in shapes))
    return case, segments


@dataclasses.dataclass
class FactoredCase(Case):
    """One step of a rule with factored state: the kernel arguments (``state`` has no rows),
    the tile tables, the :class:`~fastopt.kernels.factored.FactorLayout` and its state buffer
    (``factors``), and the matrices' shapes."""

    tile_tensor: np.ndarray = None
    tensor_tiles: np.ndarray = None
    layout: object = None
    factors: np.ndarray = None
    shapes: tuple = ()

    def copy(self):
        return dataclasses.replace(super().copy(), factors=self.factors.copy())

    def tensors(self):
        """The ``tensors`` argument of the launches."""
        return self.tile_tensor, self.tensor_tiles, self.layout, self.factors

    def mutated(self):
        return {"param": self.param, "factors": self.factors}


def make_factored_case(name, shapes, dtype, rng, skipped=()):
    """Random data for factored rule ``name`` over tensors of ``shapes`` (grouped as
    :func:`make_tensor_case` groups tensors; those in ``skipped`` of group -1): factors as
    running means of squared gradients of the same scale, and random step scalars."""
    import math

    from fastopt.kernels.factored import FactorLayout

    sizes = [math.prod(shape) for shape in shapes]
    tensor, segments = make_tensor_case(name, sizes, dtype, rng, skipped)
    layout = FactorLayout([(f"t{k}", shape) for k, shape in enumerate(shapes)], [start for start, _, _ in segments])
    factors = ((0.1 + rng.standard_normal(layout.size) ** 2) * 10 ** rng.uniform(-4, 0)).astype(dtype)
    step = int(rng.integers(1, 1000))
    values = {"lr": rng.uniform(0, 0.1), "grad_sign": float(rng.choice([1.0, -1.0])),
              "one_minus_beta2": step ** rng.uniform(-1, 0), "inverse_sqrt_step": 1 / step**0.5,
              "eps1": float(np.finfo(dtype).eps) * float(rng.choice([1.0, 1e3])), "eps2": float(rng.choice([0.0, 1e-3])),
              "d": float(rng.choice([1.0, 2.5]))}
    case = FactoredCase(tensor.rule, tensor.param, np.zeros((0, tensor.param.size), dtype), tensor.grad, tensor.bounds,
                        tensor.groups, tensor.table, scalars_of(tensor.rule, values), tensor.tile_tensor,
                        tensor.tensor_tiles, layout, factors, tuple(tuple(s) for s in shapes))
    return case, segments
