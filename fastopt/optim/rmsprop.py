"""RMSProp, plain, centered and with momentum."""

import dataclasses

from .. import checks as _checks
from .optimizer import Config, Optimizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class RMSPropConfig(Config):
    """RMSProp hyperparameters, PyTorch's names and defaults."""

    lr: float = 1e-2
    alpha: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0
    centered: bool = False
    maximize: bool = False


def _alpha(name, value):
    return _checks.in_range(name, value, 0.0, 1.0, high_inclusive=True)


_CHECKS = {"lr": _checks.nonnegative, "alpha": _alpha, "eps": _checks.positive,
           "weight_decay": _checks.nonnegative, "momentum": _checks.nonnegative, "centered": _checks.boolean,
           "maximize": _checks.boolean}
RMSPropConfig.FIELD_CHECKS = _CHECKS


class RMSProp(Optimizer):
    r"""RMSProp (Hinton, 2012), optionally centered and with momentum, as ``torch.optim.RMSprop``.

    .. math::

        g_t &= \pm\nabla_\theta f(\theta_{t-1}) + \lambda\theta_{t-1} \\
        v_t &= \alpha v_{t-1} + (1-\alpha) g_t^2 \\
        \bar g_t &= \alpha \bar g_{t-1} + (1-\alpha) g_t, \quad
            \tilde v_t = v_t - \bar g_t^2 \ \text{(centered, else } \tilde v_t = v_t\text{)} \\
        b_t &= \mu b_{t-1} + g_t / (\sqrt{\tilde v_t} + \epsilon), \quad
            \theta_t = \theta_{t-1} - \gamma b_t
            \ \text{(momentum, else } \theta_t = \theta_{t-1} - \gamma g_t/(\sqrt{\tilde v_t}+\epsilon)\text{)}

    .. warning:: :math:`\epsilon` is added outside the square root, as in PyTorch; Keras and
       TensorFlow put it inside. ``eps`` must be > 0 here (PyTorch allows 0).

    ``device="cuda"`` (or parameters on the GPU) runs the CUDA twin, as for the other optimizers.

    Examples
    --------
    >>> from fastopt import FlatParams, RMSProp
    >>> params = FlatParams({"w": 1})
    >>> opt = RMSProp(params, lr=0.01, centered=True, momentum=0.9)
    >>> params.grad[:] = 1.0
    >>> opt.step()
    """

    config_type = RMSPropConfig
    _rule_fields = frozenset({"centered"})

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, *,
                 centered=False, maximize=False, groups=(), device=None,
                 state_dtype=None, state_seed=0):
        config = RMSPropConfig(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                               momentum=momentum, centered=centered, maximize=maximize)
        super().__init__(params, config, groups, device, state_dtype, state_seed)

    def _rule_for(self, config):
        from ..kernels.rules import RULES

        name = "rmsprop" + ("_centered" if config.centered else "") + ("_momentum" if config.momentum > 0 else "")
        return RULES[name + "_step"]

    def _keeps_rule(self, values):
        return (values.get("momentum", self._hyper["momentum"]) > 0) == (self._hyper["momentum"] > 0)

    def _refresh(self):
        hyper = self._hyper
        self._constants = (self._grad_sign(), hyper["alpha"], 1.0 - hyper["alpha"], hyper["eps"], hyper["momentum"])

    def _scalars(self, step):
        return (self._hyper["lr"], *self._constants)
