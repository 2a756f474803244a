"""Adamax."""

import dataclasses

from .. import checks as _checks
from .adam import Beta1Momentum, _betas
from .optimizer import Config, Optimizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdamaxConfig(Config):
    """Adamax hyperparameters, PyTorch's names and defaults."""

    lr: float = 2e-3
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    maximize: bool = False


_CHECKS = {"lr": _checks.nonnegative, "betas": _betas, "eps": _checks.positive,
           "weight_decay": _checks.nonnegative, "maximize": _checks.boolean}
AdamaxConfig.FIELD_CHECKS = _CHECKS


class Adamax(Beta1Momentum, Optimizer):
    r"""Adamax, Adam with the infinity norm (Kingma & Ba, 2015), as ``torch.optim.Adamax``.

    .. math::

        g_t &= \pm\nabla_\theta f(\theta_{t-1}) + \lambda\theta_{t-1}, \qquad
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t \\
        u_t &= \max(\beta_2 u_{t-1},\ |g_t| + \epsilon), \qquad
        \theta_t = \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\,\frac{m_t}{u_t}

    As in PyTorch, :math:`\epsilon` is added to :math:`|g_t|` inside the maximum. A momentum
    schedule drives ``beta1``. ``eps`` must be > 0 here (PyTorch allows 0).

    Examples
    --------
    >>> from fastopt import FlatParams, Adamax
    >>> params = FlatParams({"w": 2})
    >>> opt = Adamax(params, lr=0.1)
    >>> params.grad[:] = [1.0, -2.0]
    >>> opt.step()
    >>> params["w"].round(6)
    array([-0.1,  0.1], dtype=float32)
    """

    config_type = AdamaxConfig

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *, maximize=False,
                 groups=(), device=None,
                 state_dtype=None, state_seed=0):
        config = AdamaxConfig(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, config, groups, device, state_dtype, state_seed)

    def _rule_for(self, config):
        from ..kernels.rules import RULES

        return RULES["adamax_step"]

    def _refresh(self):
        beta1, beta2 = self._hyper["betas"]
        self._constants = beta1, (self._grad_sign(), 1.0 - beta1, beta2, self._hyper["eps"])

    def _scalars(self, step):
        beta1, constants = self._constants
        return (self._hyper["lr"], 1.0 - beta1**step, *constants)
