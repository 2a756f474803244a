"""NAdam."""

import dataclasses
import math

from .. import checks as _checks
from .adam import Beta1Momentum, _betas
from .optimizer import Config, Optimizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class NAdamConfig(Config):
    """NAdam hyperparameters, PyTorch's names and defaults."""

    lr: float = 2e-3
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum_decay: float = 4e-3
    decoupled_weight_decay: bool = False
    maximize: bool = False


_CHECKS = {"lr": _checks.nonnegative, "betas": _betas, "eps": _checks.positive,
           "weight_decay": _checks.nonnegative, "momentum_decay": _checks.nonnegative,
           "decoupled_weight_decay": _checks.boolean, "maximize": _checks.boolean}
NAdamConfig.FIELD_CHECKS = _CHECKS


def momentum_factor(beta1, momentum_decay, step):
    r"""NAdam's :math:`\mu_t = \beta_1 (1 - \tfrac12\,0.96^{t\psi})` in float64, as PyTorch computes it."""
    return beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))


class NAdam(Beta1Momentum, Optimizer):
    r"""NAdam, Adam with Nesterov momentum (Dozat, 2016), as ``torch.optim.NAdam``.

    .. math::

        m_t, v_t &\text{ as Adam's}, \qquad
        \mu_t = \beta_1\bigl(1 - \tfrac12\,0.96^{t\psi}\bigr), \qquad
        \Pi_t = \textstyle\prod_{i\le t}\mu_i \\
        \theta_t &= \theta_{t-1} - \gamma\,\frac{1-\mu_t}{1-\Pi_t}\,\frac{g_t}{d_t}
            - \gamma\,\frac{\mu_{t+1}}{1-\Pi_t\mu_{t+1}}\,\frac{m_t}{d_t}, \qquad
        d_t = \sqrt{v_t/(1-\beta_2^t)} + \epsilon

    with :math:`\psi` = ``momentum_decay``. ``weight_decay`` is added to the gradient, or with
    ``decoupled_weight_decay=True`` multiplies the parameters by :math:`1-\gamma\lambda` first.
    The product :math:`\Pi_t` (:attr:`mu_product`) is carried from step to step, as PyTorch
    does, so a momentum schedule (which drives ``beta1``) changes the later steps as it would
    there; it is saved in the state dict. Here the product is kept in float64; torch keeps it
    in a tensor of its default dtype, float32 unless set to float64, whose rounding moves a
    float64 run by up to about 1e-7 relative over a few hundred steps (with
    ``torch.set_default_dtype(torch.float64)`` the two agree to 1e-10; ``fastopt.torch.NAdam``
    rounds as torch does). ``eps`` must be > 0 here (PyTorch allows 0).

    Examples
    --------
    >>> from fastopt import FlatParams, NAdam
    >>> params = FlatParams({"w": 2})
    >>> opt = NAdam(params, lr=0.1)
    >>> params.grad[:] = [1.0, -2.0]
    >>> opt.step()  # lr from the gradient, and a look-ahead share of the momentum
    >>> params["w"].round(6)
    array([-0.105645,  0.105645], dtype=float32)
    """

    config_type = NAdamConfig
    _rule_fields = frozenset({"decoupled_weight_decay"})
    #: How the product of momentum factors is rounded after each multiplication: float64 here;
    #: ``fastopt.torch`` rounds it as torch does (its state tensors' dtype).
    _mu_product_type = float

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
                 decoupled_weight_decay=False, *, maximize=False, groups=(), device=None,
                 state_dtype=None, state_seed=0):
        config = NAdamConfig(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay,
                             decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        self._mu_product = 1.0
        super().__init__(params, config, groups, device, state_dtype, state_seed)

    @property
    def mu_product(self):
        r""":math:`\Pi_t`, the product of the momentum factors of the steps taken (1.0 before the first)."""
        return self._mu_product

    def _rule_for(self, config):
        from ..kernels.rules import RULES

        return RULES["nadamw_step" if config.decoupled_weight_decay else "nadam_step"]

    def _refresh(self):
        beta1, beta2 = betas = self._hyper["betas"]
        self._constants = betas, (self._grad_sign(), 1.0 - beta1, beta2, 1.0 - beta2, self._hyper["eps"])

    def _launch_values(self, step):
        """``(scalars, Pi_t)``: the launch scalars of step ``step`` and the product they use,
        from one reading of the hyperparameters."""
        (beta1, beta2), constants = self._constants
        momentum_decay = self._hyper["momentum_decay"]
        mu = momentum_factor(beta1, momentum_decay, step)
        mu_next = momentum_factor(beta1, momentum_decay, step + 1)
        rounded = self._mu_product_type
        mu_product = float(rounded(self._mu_product) * rounded(mu))
        scalars = (self._hyper["lr"], *constants, 1.0 - beta2**step, 1.0 - mu, 1.0 - mu_product, mu_next,
                   1.0 - mu_product * mu_next)
        return scalars, mu_product

    def _scalars(self, step):
        return self._launch_values(step)[0]

    def step(self):
        step = self._step_count + 1
        scalars, mu_product = self._launch_values(step)
        self._run(self._plan, None, step, scalars)
        self._step_count = step
        self._mu_product = mu_product  # only once the step ran

    def _step_at(self, step, skipped=frozenset(), scalars=None):
        scalars, mu_product = self._launch_values(step)
        super()._step_at(step, skipped, scalars)
        self._mu_product = mu_product

    def state_dict(self):
        """As every optimizer's, with ``"mu_product"`` (:attr:`mu_product`) added."""
        return {**super().state_dict(), "mu_product": self._mu_product}

    def load_state_dict(self, state_dict):
        """As every optimizer's; ``"mu_product"`` must be a float in [0, 1]."""
        self._checked_state(state_dict, self._params)  # the class, layout and the rest, named first
        mu_product = state_dict.get("mu_product")
        if (isinstance(mu_product, bool) or not isinstance(mu_product, (int, float))
                or not (math.isfinite(mu_product) and 0.0 <= mu_product <= 1.0)):
            raise ValueError(f"state_dict mu_product must be a float in [0, 1], got {mu_product!r}")
        super().load_state_dict(state_dict)
        self._mu_product = float(mu_product)
