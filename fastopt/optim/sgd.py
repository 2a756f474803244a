"""Stochastic gradient descent with momentum and Nesterov momentum."""

import dataclasses

from .. import checks as _checks
from .optimizer import Optimizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class SGDConfig:
    """SGD hyperparameters, PyTorch's names and defaults."""

    lr: float = 1e-3
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    maximize: bool = False

    def __post_init__(self):
        object.__setattr__(self, "lr", _checks.nonnegative("lr", self.lr))
        object.__setattr__(self, "momentum", _checks.nonnegative("momentum", self.momentum))
        object.__setattr__(self, "dampening", _checks.in_range("dampening", self.dampening, 0.0, 1.0, high_inclusive=True))
        object.__setattr__(self, "weight_decay", _checks.nonnegative("weight_decay", self.weight_decay))
        _checks.boolean("nesterov", self.nesterov)
        _checks.boolean("maximize", self.maximize)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(
                "nesterov=True needs momentum > 0 and dampening = 0, got "
                f"momentum={self.momentum!r}, dampening={self.dampening!r}"
            )


class SGD(Optimizer):
    r"""Stochastic gradient descent, optionally with momentum, as ``torch.optim.SGD``.

    .. math::

        g_t &= \pm\nabla_\theta f(\theta_{t-1}) + \lambda\theta_{t-1} \\
        b_t &= \mu b_{t-1} + (1-\tau) g_t \quad (b_1 = g_1) \\
        \theta_t &= \theta_{t-1} - \gamma b_t
            \quad\text{or, Nesterov,}\quad \theta_t = \theta_{t-1} - \gamma(g_t + \mu b_t)

    with :math:`\gamma` = ``lr``, :math:`\mu` = ``momentum``, :math:`\tau` = ``dampening``,
    :math:`\lambda` = ``weight_decay`` (the coupled L2 term), and the gradient negated when
    ``maximize``. As in PyTorch, the momentum buffer starts as the first gradient, undamped.

    Parameters
    ----------
    params : FlatParams
    lr, momentum, dampening, weight_decay : float
    nesterov, maximize : bool, keyword-only
    groups : sequence of ParamGroup, keyword-only
    device : "cpu", "cuda" or None, keyword-only
        Checked against ``params.device`` (None: follow it). On "cuda" each step is one
        launch of the CUDA twin of the kernel, with parameters, gradients and state on the GPU.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import FlatParams, SGD
    >>> params = FlatParams({"w": 3})
    >>> opt = SGD(params, lr=0.1, momentum=0.9, nesterov=True)
    >>> params.grad[:] = 1.0
    >>> opt.step()
    >>> params["w"]
    array([-0.19, -0.19, -0.19], dtype=float32)
    """

    config_type = SGDConfig

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, *,
                 nesterov=False, maximize=False, groups=(), device=None):
        config = SGDConfig(lr=lr, momentum=momentum, dampening=dampening,
                           weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)
        super().__init__(params, config, groups, device)

    def _rule_for(self, config):
        from ..kernels.rules import RULES

        if config.momentum == 0:
            return RULES["sgd_step"]
        return RULES["sgd_nesterov_step" if config.nesterov else "sgd_momentum_step"]

    def _refresh(self):
        t = self._dtype
        config = self._config
        lr, sign = config.lr, self._grad_sign()
        if config.momentum == 0:
            self._first_scalars = self._later_scalars = (lr, sign)
            return
        # PyTorch's first buffer is the gradient itself: 0 * 0 + 1 * g.
        first = (lr, sign, t(0.0), t(1.0))
        later = (lr, sign, t(config.momentum), t(1.0 - config.dampening))
        if config.nesterov:
            first, later = first + (t(config.momentum),), later + (t(config.momentum),)
        self._first_scalars, self._later_scalars = first, later

    def _scalars(self, step):
        return self._first_scalars if step == 1 else self._later_scalars
