"""Adafactor: factored second moments."""

import dataclasses
import math

import numpy as np

from .. import checks as _checks
from .optimizer import Config, Optimizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdafactorConfig(Config):
    """Adafactor hyperparameters: torch.optim.Adafactor's names and defaults (``eps`` is
    ``(eps1, eps2)``; ``eps1=None`` takes the dtype's machine epsilon)."""

    lr: float = 1e-2
    beta2_decay: float = -0.8
    eps: tuple = (None, 1e-3)
    d: float = 1.0
    weight_decay: float = 0.0
    maximize: bool = False


def _beta2_decay(name, value):
    number = _checks.real_number(name, value)
    if not -math.inf < number <= 0.0:
        raise ValueError(f"{name} must be a finite number <= 0, got {name}={value!r}")
    return number


def _eps(name, value):
    if isinstance(value, str) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"{name} must be a pair (eps1, eps2), got {name}={value!r}")
    eps1 = None if value[0] is None else _checks.positive(f"{name}[0]", value[0])
    return eps1, _checks.nonnegative(f"{name}[1]", value[1])


def _d(name, value):
    number = _checks.real_number(name, value)
    if not 1.0 <= number < math.inf:
        raise ValueError(f"{name} must be a finite number >= 1, got {name}={value!r}")
    return number


_CHECKS = {"lr": _checks.nonnegative, "beta2_decay": _beta2_decay, "eps": _eps, "d": _d,
           "weight_decay": _checks.nonnegative, "maximize": _checks.boolean}
AdafactorConfig.FIELD_CHECKS = _CHECKS


class Adafactor(Optimizer):
    r"""Adafactor (Shazeer and Stern, 2018), as ``torch.optim.Adafactor`` computes it.

    .. math::

        \hat\beta_t = t^{\tau}, \quad \rho_t = \min(\gamma, 1/\sqrt t), \quad
        \alpha_t = \max(\epsilon_2, \mathrm{RMS}(\theta_{t-1}))\,\rho_t \\
        R_t, C_t = \mathrm{lerp}(R_{t-1}, C_{t-1};\ \text{row and column means of } g_t^2,\
            \hat\beta_t), \quad \hat V_t = R_t C_t / \max(\mathrm{mean}(R_t), \epsilon_1) \\
        U_t = g_t / \sqrt{\max(\hat V_t, \epsilon_1^2)}, \quad
        \theta_t = \theta_{t-1}(1 - \gamma\lambda) - \frac{\alpha_t}{\max(1, \mathrm{RMS}(U_t)/d)} U_t

    per parameter tensor: a tensor of two or more dimensions keeps a row and a column factor
    per matrix (the last two dimensions), so its state is ``R + C`` values per ``R x C``
    matrix; a vector keeps a full second moment (``lerp(V, g**2, beta)``). ``lr`` caps the
    relative step :math:`\rho_t` and scales the decoupled weight decay, as in torch; ``eps =
    (eps1, eps2)``, ``eps1=None`` the dtype's machine epsilon. ``state`` is ``{"row_var",
    "col_var", "variance"}``, each one buffer of every tensor's values in order.

    A step is one kernel call on the CPU whatever the number of tensors (six parallel stages:
    the row, column and tensor sums in float64 in one fixed order, the same bits on every
    thread count and on CUDA). :class:`~fastopt.distributed.ShardedOptimizer` gives each rank
    whole tensors (its shards cut where a tensor starts).

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import Adafactor, FlatParams
    >>> params = FlatParams({"w": (2, 3), "b": 3})
    >>> opt = Adafactor(params)
    >>> params.grad[:] = 1.0
    >>> opt.step()  # alpha = eps2 * min(lr, 1) = 1e-5 for tensors of zeros
    >>> params["b"]
    array([-1.e-05, -1.e-05, -1.e-05], dtype=float32)
    >>> {name: buffer.size for name, buffer in opt.state.items()}  # 2 + 3 for w, 3 for b
    {'row_var': 2, 'col_var': 3, 'variance': 3}
    """

    config_type = AdafactorConfig
    #: Sums over whole tensors: a shard must not cut one.
    per_tensor = True

    def __init__(self, params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0, *,
                 maximize=False, groups=(), device=None):
        config = AdafactorConfig(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay,
                                 maximize=maximize)
        super().__init__(params, config, groups, device)

    def _rule_for(self, config):
        from ..kernels.rules import RULES

        return RULES["adafactor_step"]

    def _refresh(self):
        hyper = self._hyper
        eps1, eps2 = hyper["eps"]
        eps1 = float(np.finfo(self._params.dtype).eps) if eps1 is None else eps1
        self._constants = (self._grad_sign(), hyper["beta2_decay"], eps1, eps2, hyper["d"])

    def _scalars(self, step):
        sign, decay, eps1, eps2, d = self._constants
        step = float(step)  # torch: step ** beta2_decay and 1 / step ** 0.5, in Python floats
        return (self._hyper["lr"], sign, step**decay, 1.0 / step**0.5, eps1, eps2, d)
