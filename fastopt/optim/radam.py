"""RAdam."""

import dataclasses

from .. import checks as _checks
from .adam import Beta1Momentum, _betas
from .optimizer import Config, Optimizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class RAdamConfig(Config):
    """RAdam hyperparameters, PyTorch's names and defaults."""

    lr: float = 1e-3
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False
    maximize: bool = False


_CHECKS = {"lr": _checks.nonnegative, "betas": _betas, "eps": _checks.positive,
           "weight_decay": _checks.nonnegative, "decoupled_weight_decay": _checks.boolean,
           "maximize": _checks.boolean}
RAdamConfig.FIELD_CHECKS = _CHECKS


def rectification(beta2, step):
    r"""RAdam's ``(sqrt(1 - beta2**t), r_t)`` at step ``t``, in float64 as PyTorch computes
    them, with ``r_t = 0`` on the steps it leaves un-rectified (:math:`\rho_t \le 5`)."""
    bias_correction2 = 1.0 - beta2**step
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * (beta2**step) / bias_correction2
    if rho_t <= 5.0:
        return bias_correction2**0.5, 0.0
    rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
    return bias_correction2**0.5, rect


class RAdam(Beta1Momentum, Optimizer):
    r"""RAdam, Adam with a rectified adaptive learning rate (Liu et al., 2020), as
    ``torch.optim.RAdam``.

    .. math::

        m_t, v_t &\text{ as Adam's}, \qquad
        \rho_\infty = \frac{2}{1-\beta_2} - 1, \qquad
        \rho_t = \rho_\infty - \frac{2t\beta_2^t}{1-\beta_2^t} \\
        \theta_t &= \theta_{t-1} - \gamma\,\frac{m_t}{1-\beta_1^t}\,
            \frac{\sqrt{1-\beta_2^t}}{\sqrt{v_t} + \epsilon}\,r_t \ \text{ if } \rho_t > 5,
        \text{ else } \theta_{t-1} - \gamma\,\frac{m_t}{1-\beta_1^t}

    with :math:`r_t = \sqrt{(\rho_t-4)(\rho_t-2)\rho_\infty / ((\rho_\infty-4)(\rho_\infty-2)\rho_t)}`.
    ``weight_decay`` is added to the gradient, or with ``decoupled_weight_decay=True``
    multiplies the parameters by :math:`1-\gamma\lambda` first (AdamW's way). A momentum
    schedule drives ``beta1``. ``eps`` must be > 0 here (PyTorch allows 0).

    Examples
    --------
    >>> from fastopt import FlatParams, RAdam
    >>> params = FlatParams({"w": 2})
    >>> opt = RAdam(params, lr=0.1)
    >>> params.grad[:] = [1.0, -2.0]
    >>> opt.step()  # the first steps are SGD with momentum, bias-corrected
    >>> params["w"].round(6)
    array([-0.1,  0.2], dtype=float32)
    """

    config_type = RAdamConfig
    _rule_fields = frozenset({"decoupled_weight_decay"})

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
                 *, maximize=False, groups=(), device=None,
                 state_dtype=None, state_seed=0):
        config = RAdamConfig(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                             decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        super().__init__(params, config, groups, device, state_dtype, state_seed)

    def _rule_for(self, config):
        from ..kernels.rules import RULES

        return RULES["radamw_step" if config.decoupled_weight_decay else "radam_step"]

    def _refresh(self):
        beta1, beta2 = betas = self._hyper["betas"]
        self._constants = betas, (self._grad_sign(), 1.0 - beta1, beta2, 1.0 - beta2, self._hyper["eps"])

    def _scalars(self, step):
        (beta1, beta2), constants = self._constants
        return (self._hyper["lr"], 1.0 - beta1**step, *constants, *rectification(beta2, step))
