"""Stochastic gradient descent with momentum and Nesterov momentum."""

import dataclasses

from .. import checks as _checks
from .optimizer import Config, Optimizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class SGDConfig(Config):
    """SGD hyperparameters, PyTorch's names and defaults."""

    lr: float = 1e-3
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    maximize: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not nesterov_allows(self.nesterov, self.momentum, self.dampening):
            raise ValueError(
                "nesterov=True needs momentum > 0 and dampening = 0, got "
                f"momentum={self.momentum!r}, dampening={self.dampening!r}"
            )


def _dampening(name, value):
    return _checks.in_range(name, value, 0.0, 1.0, high_inclusive=True)


def nesterov_allows(nesterov, momentum, dampening):
    return not nesterov or (momentum > 0 and dampening == 0)


_CHECKS = {"lr": _checks.nonnegative, "momentum": _checks.nonnegative, "dampening": _dampening,
           "weight_decay": _checks.nonnegative, "nesterov": _checks.boolean, "maximize": _checks.boolean}
SGDConfig.FIELD_CHECKS = _CHECKS


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
    _rule_fields = frozenset({"nesterov"})

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, *,
                 nesterov=False, maximize=False, groups=(), device=None,
                 state_dtype=None, state_seed=0):
        config = SGDConfig(lr=lr, momentum=momentum, dampening=dampening,
                           weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)
        super().__init__(params, config, groups, device, state_dtype, state_seed)

    def _rule_for(self, config):
        from ..kernels.rules import RULES

        if config.momentum == 0:
            return RULES["sgd_step"]
        return RULES["sgd_nesterov_step" if config.nesterov else "sgd_momentum_step"]

    def _keeps_rule(self, values):
        hyper = {**self._hyper, **values}
        return ((hyper["momentum"] > 0) == (self._hyper["momentum"] > 0)
                and nesterov_allows(hyper["nesterov"], hyper["momentum"], hyper["dampening"]))

    def _refresh(self):
        hyper = self._hyper
        momentum, sign = hyper["momentum"], self._grad_sign()
        # PyTorch's first buffer is the gradient itself: 0 * 0 + 1 * g. One assignment: a step
        # running meanwhile takes the old scalars or the new.
        self._constants = (sign, 0.0, 1.0, momentum), (sign, momentum, 1.0 - hyper["dampening"], momentum)

    def _scalars(self, step):
        return (self._hyper["lr"], *self._constants[step != 1])
