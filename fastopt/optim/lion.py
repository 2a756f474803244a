"""Lion."""

import dataclasses

from .. import checks as _checks
from .adam import Beta1Momentum, _betas
from .optimizer import Config, Optimizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class LionConfig(Config):
    """Lion hyperparameters, the paper's defaults."""

    lr: float = 1e-4
    betas: tuple = (0.9, 0.99)
    weight_decay: float = 0.0
    maximize: bool = False


_CHECKS = {"lr": _checks.nonnegative, "betas": _betas, "weight_decay": _checks.nonnegative,
           "maximize": _checks.boolean}
LionConfig.FIELD_CHECKS = _CHECKS


class Lion(Beta1Momentum, Optimizer):
    r"""Lion, evolved sign momentum (Chen et al., 2023, "Symbolic Discovery of Optimization
    Algorithms", Program 1).

    .. math::

        c_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t \\
        \theta_t &= \theta_{t-1} - \gamma\,(\operatorname{sign}(c_t) + \lambda\theta_{t-1}) \\
        m_t &= \beta_2 m_{t-1} + (1-\beta_2) g_t

    Every parameter moves by :math:`\gamma` per step (plus the decay), so Lion wants a learning
    rate 3-10x smaller than AdamW's and a weight decay 3-10x larger (the paper's advice).
    The weight decay is decoupled; :math:`\operatorname{sign}(0) = 0`. A momentum schedule
    drives ``beta1``. PyTorch has no Lion; the defaults are the paper's.

    Examples
    --------
    >>> from fastopt import FlatParams, Lion
    >>> params = FlatParams({"w": 3})
    >>> opt = Lion(params, lr=0.1)
    >>> params.grad[:] = [1.0, -2.0, 0.0]
    >>> opt.step()
    >>> params["w"].round(6)
    array([-0.1,  0.1,  0. ], dtype=float32)
    """

    config_type = LionConfig

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False, groups=(),
                 device=None,
                 state_dtype=None, state_seed=0):
        config = LionConfig(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, config, groups, device, state_dtype, state_seed)

    def _rule_for(self, config):
        from ..kernels.rules import RULES

        return RULES["lion_step"]

    def _refresh(self):
        beta1, beta2 = self._hyper["betas"]
        self._constants = self._grad_sign(), 1.0 - beta1, 1.0 - beta2

    def _scalars(self, step):
        return (self._hyper["lr"], *self._constants)
