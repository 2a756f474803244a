"""Muon: momentum orthogonalised by Newton-Schulz, for 2-D parameters."""

import dataclasses
import math
import numbers

from .. import checks as _checks
from .optimizer import Config, Optimizer

#: torch.optim.Muon's quintic Newton-Schulz coefficients and step count.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")
NS_DTYPES = (None, "bfloat16")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MuonConfig(Config):
    """Muon hyperparameters: torch.optim.Muon's names and defaults, and ``ns_dtype`` (None: the
    iteration in the parameters' dtype; ``"bfloat16"``: rounded to bfloat16 as torch's)."""

    lr: float = 1e-3
    weight_decay: float = 0.1
    momentum: float = 0.95
    nesterov: bool = True
    ns_coefficients: tuple = NS_COEFFICIENTS
    eps: float = 1e-7
    ns_steps: int = NS_STEPS
    adjust_lr_fn: str | None = None
    ns_dtype: str | None = None


def _coefficients(name, value):
    if isinstance(value, str) or not hasattr(value, "__len__") or len(value) != 3:
        raise ValueError(f"{name} must be three numbers (a, b, c), got {name}={value!r}")
    numbers_ = tuple(_checks.real_number(f"{name}[{k}]", v) for k, v in enumerate(value))
    if not all(math.isfinite(v) for v in numbers_):
        raise ValueError(f"{name} must be finite, got {name}={value!r}")
    return numbers_


def _steps(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < 100:
        raise ValueError(f"{name} must be an int in [0, 100) (torch's bound), got {name}={value!r}")
    return int(value)


def _choice(options):
    def check(name, value):
        if value not in options:
            raise ValueError(f"{name} must be one of {options}, got {name}={value!r}")
        return value

    return check


_CHECKS = {"lr": _checks.nonnegative, "weight_decay": _checks.nonnegative, "momentum": _checks.nonnegative,
           "nesterov": _checks.boolean, "ns_coefficients": _coefficients, "eps": _checks.positive,
           "ns_steps": _steps, "adjust_lr_fn": _choice(ADJUST_LR_FNS), "ns_dtype": _choice(NS_DTYPES)}
MuonConfig.FIELD_CHECKS = _CHECKS


class Muon(Optimizer):
    r"""Muon, momentum orthogonalised by a Newton-Schulz iteration, as ``torch.optim.Muon``, for
    2-D parameters (hidden layers' weight matrices).

    .. math::

        B_t &= \mu B_{t-1} + (1-\mu) g_t, \qquad
            \tilde B_t = \mu B_t + (1-\mu) g_t \ \text{(Nesterov)} \ \text{or}\ B_t \\
        O_t &= \mathrm{NS}^{(a,b,c)}_k(\tilde B_t;\ \epsilon) \\
        \theta_t &= \theta_{t-1}(1 - \gamma\lambda) - \gamma\, r(A, B)\, O_t

    per ``A x B`` matrix, with torch's quintic iteration (``ns_coefficients``, ``ns_steps``)
    and its ``adjust_lr_fn``: ``r = sqrt(max(1, A/B))`` (None or "original") or ``0.2
    sqrt(max(A, B))`` ("match_rms_adamw", to reuse AdamW's learning rate and decay). The weight
    decay is decoupled.

    A step is three stages whatever the number of matrices: one kernel call for the momentum
    (into a scratch buffer), the iteration on BLAS (NumPy; CuPy on CUDA) with matrices of one
    shape stacked into one batched product, and one kernel call for the step. The iteration
    runs in the parameters' dtype; ``ns_dtype="bfloat16"`` rounds every product and sum to
    bfloat16 as torch.optim.Muon does (it always does; in float32 the orthogonalised update
    of fastopt's default differs from torch's by about bfloat16's resolution, 0.4 %).

    Every parameter must be 2-D: give biases, norms, embeddings and the output layer to another
    optimizer over another :class:`~fastopt.FlatParams` (the usual split: Muon for hidden
    matrices, AdamW for the rest). :class:`~fastopt.distributed.ShardedOptimizer` gives each
    rank whole matrices (its shards cut where a tensor starts).

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import FlatParams, Muon
    >>> params = FlatParams({"w": (2, 2)}, dtype=np.float64)
    >>> opt = Muon(params, lr=0.1, weight_decay=0.0, momentum=0.0, nesterov=False)
    >>> params.grad[:] = [3.0, 0.0, 0.0, 4.0]
    >>> opt.step()  # the gradient's singular values 3 and 4 both taken near 1 (torch's 5 steps)
    >>> params["w"].round(4)
    array([[-0.0723,  0.    ],
           [ 0.    , -0.1119]])
    """

    config_type = MuonConfig
    _rule_fields = frozenset({"nesterov"})
    #: Whole matrices per step: a shard must not cut one.
    per_tensor = True

    def __init__(self, params, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=NS_COEFFICIENTS, eps=1e-7, ns_steps=NS_STEPS, adjust_lr_fn=None, *,
                 ns_dtype=None, groups=(), device=None):
        config = MuonConfig(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                            ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
                            ns_dtype=ns_dtype)
        for name, shape in getattr(params, "layout", ()):
            if len(shape) != 2:
                raise ValueError(
                    f"Muon takes 2-D parameters only; {name!r} has shape {tuple(shape)}: give it to another "
                    "optimizer over another FlatParams (the usual split: Muon for the hidden weight matrices, "
                    "AdamW for biases, norms, embeddings and the output layer)")
        super().__init__(params, config, groups, device)

    def _rule_for(self, config):
        from ..kernels.rules import RULES

        return RULES["muon_nesterov_step" if config.nesterov else "muon_step"]

    def _refresh(self):
        hyper = self._hyper
        momentum = hyper["momentum"]
        self._constants = (momentum, 1.0 - momentum, 1.0 if hyper["adjust_lr_fn"] == "match_rms_adamw" else 0.0,
                           *hyper["ns_coefficients"], hyper["eps"], float(hyper["ns_steps"]),
                           1.0 if hyper["ns_dtype"] == "bfloat16" else 0.0)

    def _scalars(self, step):
        return (self._hyper["lr"], *self._constants)
