"""Adam and AdamW, with AMSGrad."""

import dataclasses
import math

from .. import checks as _checks
from .optimizer import Config, Optimizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdamConfig(Config):
    """Adam/AdamW hyperparameters, PyTorch's names; defaults are Adam's."""

    lr: float = 1e-3
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False
    maximize: bool = False


def _betas(name, value):
    if isinstance(value, str) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got betas={value!r}")
    return (_checks.in_range("beta1", value[0], 0.0, 1.0, high_inclusive=False),
            _checks.in_range("beta2", value[1], 0.0, 1.0, high_inclusive=False))


_CHECKS = {"lr": _checks.nonnegative, "betas": _betas, "eps": _checks.positive,
           "weight_decay": _checks.nonnegative, "amsgrad": _checks.boolean, "maximize": _checks.boolean}
AdamConfig.FIELD_CHECKS = _CHECKS


class Beta1Momentum:
    """``set_momentum`` for the optimizers with ``betas``: a momentum schedule drives ``beta1``."""

    def set_momentum(self, value):
        """Set ``beta1``, the momentum a schedule cycles (validated, on the fast path)."""
        beta1 = _checks.in_range("beta1", value, 0.0, 1.0, high_inclusive=False)
        self._apply_checked({"betas": (beta1, self._hyper["betas"][1])})


class Adam(Beta1Momentum, Optimizer):
    r"""Adam (Kingma & Ba, 2015), optionally AMSGrad, as ``torch.optim.Adam``.

    .. math::

        g_t &= \pm\nabla_\theta f(\theta_{t-1}) + \lambda\theta_{t-1} \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \hat v_t &= \max(\hat v_{t-1}, v_t) \ \text{(AMSGrad, else } \hat v_t = v_t\text{)} \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\,
            \frac{m_t}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    ``weight_decay`` (:math:`\lambda`) is the coupled L2 term added to the gradient; for
    decoupled decay use :class:`AdamW`.

    .. warning:: As in PyTorch, :math:`\epsilon` is added after dividing :math:`\sqrt{v}` by
       the bias correction (the paper adds it to :math:`\hat v` before the square root
       differently); results match PyTorch, not optax's ``scale_by_adam`` with ``eps_root``.
       ``eps`` must be > 0 here (PyTorch allows 0).

    Parameters
    ----------
    params : FlatParams
    lr : float
    betas : (float, float), each in [0, 1)
    eps : float > 0
    weight_decay : float >= 0
    amsgrad, maximize : bool, keyword-only
    groups : sequence of ParamGroup, keyword-only
    device : "cpu", "cuda" or None, keyword-only
        Checked against ``params.device`` (None: follow it). On "cuda" each step is one
        launch of the CUDA twin of the kernel, with parameters, gradients and state on the GPU.

    Examples
    --------
    >>> from fastopt import FlatParams, Adam
    >>> params = FlatParams({"w": 2})
    >>> opt = Adam(params, lr=0.1)
    >>> params.grad[:] = [1.0, -2.0]
    >>> opt.step()  # a first Adam step moves each parameter by about lr, against the gradient
    >>> params["w"].round(6)
    array([-0.1,  0.1], dtype=float32)
    """

    config_type = AdamConfig
    _rule_fields = frozenset({"amsgrad"})
    _rule_names = ("adam_step", "adam_amsgrad_step")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
                 amsgrad=False, maximize=False, groups=(), device=None,
                 state_dtype=None, state_seed=0):
        config = AdamConfig(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                            amsgrad=amsgrad, maximize=maximize)
        super().__init__(params, config, groups, device, state_dtype, state_seed)

    def _rule_for(self, config):
        from ..kernels.rules import RULES

        return RULES[self._rule_names[config.amsgrad]]

    def _refresh(self):
        beta1, beta2 = betas = self._hyper["betas"]
        # One assignment: a step running meanwhile takes the old betas and constants or the new.
        self._constants = betas, (self._grad_sign(), 1.0 - beta1, beta2, 1.0 - beta2, self._hyper["eps"])

    def _scalars(self, step):
        # The bias corrections in float64; the kernel divides each group's lr by the first.
        (beta1, beta2), constants = self._constants
        return (self._hyper["lr"], 1.0 - beta1**step, *constants, math.sqrt(1.0 - beta2**step))


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as ``torch.optim.AdamW``.

    Before the Adam update each parameter is multiplied by :math:`1 - \gamma\lambda` (with the
    group's learning rate :math:`\gamma`); the gradient gets no L2 term. The default
    ``weight_decay`` is PyTorch's 1e-2.

    Examples
    --------
    >>> from fastopt import FlatParams, AdamW, ParamGroup
    >>> params = FlatParams({"w": 2, "b": 1})
    >>> opt = AdamW(params, lr=1e-3, groups=[ParamGroup(["b"], weight_decay=0.0)])
    >>> opt.step()
    """

    _rule_names = ("adamw_step", "adamw_amsgrad_step")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, *,
                 amsgrad=False, maximize=False, groups=(), device=None,
                 state_dtype=None, state_seed=0):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad=amsgrad,
                         maximize=maximize, groups=groups, device=device, state_dtype=state_dtype,
                         state_seed=state_seed)
