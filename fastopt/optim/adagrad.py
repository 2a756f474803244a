"""Adagrad."""

import dataclasses

import numpy as np

from .. import checks as _checks
from .. import device as _device
from .optimizer import Config, Optimizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdagradConfig(Config):
    """Adagrad hyperparameters, PyTorch's names and defaults."""

    lr: float = 1e-2
    lr_decay: float = 0.0
    weight_decay: float = 0.0
    initial_accumulator_value: float = 0.0
    eps: float = 1e-10
    maximize: bool = False


_CHECKS = {"lr": _checks.nonnegative, "lr_decay": _checks.nonnegative, "weight_decay": _checks.nonnegative,
           "initial_accumulator_value": _checks.nonnegative, "eps": _checks.positive, "maximize": _checks.boolean}
AdagradConfig.FIELD_CHECKS = _CHECKS


class Adagrad(Optimizer):
    r"""Adagrad (Duchi et al., 2011), as ``torch.optim.Adagrad`` with dense gradients.

    .. math::

        g_t &= \pm\nabla_\theta f(\theta_{t-1}) + \lambda\theta_{t-1}, \qquad
        \Sigma_t = \Sigma_{t-1} + g_t^2 \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1 + (t-1)\eta}\,\frac{g_t}{\sqrt{\Sigma_t} + \epsilon}

    :math:`\eta` is ``lr_decay``; :math:`\Sigma_0` is ``initial_accumulator_value`` (used when
    the optimizer is built, as in PyTorch: changing it later does not refill the sum).
    ``eps`` must be > 0 here (PyTorch allows 0).

    Examples
    --------
    >>> from fastopt import FlatParams, Adagrad
    >>> params = FlatParams({"w": 2})
    >>> opt = Adagrad(params, lr=0.1)
    >>> params.grad[:] = [1.0, -2.0]
    >>> opt.step()  # the first step moves each parameter by lr, against the gradient
    >>> params["w"].round(6)
    array([-0.1,  0.1], dtype=float32)
    """

    config_type = AdagradConfig

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10, *, maximize=False, groups=(), device=None,
                 state_dtype=None, state_seed=0):
        config = AdagradConfig(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                               initial_accumulator_value=initial_accumulator_value, eps=eps, maximize=maximize)
        super().__init__(params, config, groups, device, state_dtype, state_seed)

    def _rule_for(self, config):
        from ..kernels.rules import RULES

        return RULES["adagrad_step"]

    def _fill_initial_state(self, config):
        if config.initial_accumulator_value:
            value = self._dtype(config.initial_accumulator_value)
            if self._storage.kind is not None:  # encoded, as a step would store it
                self._storage.write(np.full((1, self._params.size), value, np.float32))
            elif self.device == "cpu":
                self._state.fill(value)
            else:
                _device.fill(self._state, value)

    def _refresh(self):
        self._constants = self._grad_sign(), self._hyper["eps"]

    def _scalars(self, step):
        # The learning rate's divisor in float64; the kernel divides each group's lr by it.
        return (self._hyper["lr"], 1.0 + (step - 1) * self._hyper["lr_decay"], *self._constants)
