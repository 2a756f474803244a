"""LAMB."""

import dataclasses

from .. import checks as _checks
from .adam import Beta1Momentum, _betas
from .optimizer import Config, Optimizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class LAMBConfig(Config):
    """LAMB hyperparameters; the defaults are the issue's (the paper's Adam-like ones, eps 1e-6)."""

    lr: float = 1e-3
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-6
    weight_decay: float = 0.0
    maximize: bool = False


_CHECKS = {"lr": _checks.nonnegative, "betas": _betas, "eps": _checks.positive,
           "weight_decay": _checks.nonnegative, "maximize": _checks.boolean}
LAMBConfig.FIELD_CHECKS = _CHECKS


class LAMB(Beta1Momentum, Optimizer):
    r"""LAMB, layer-wise adaptive moments (You et al., 2020, Algorithm 2, with bias correction).

    .. math::

        m_t, v_t &\text{ as Adam's}, \qquad
        u_t = \frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon} + \lambda\theta_{t-1} \\
        \theta_t &= \theta_{t-1} - \gamma\,\frac{\lVert\theta_{t-1}\rVert}{\lVert u_t\rVert}\,u_t

    per parameter tensor (each name of the :class:`~fastopt.FlatParams`), the ratio 1 where
    either norm is 0. The weight decay enters the direction, so its norm and the trust ratio;
    give biases and norms ``weight_decay=0`` with a :class:`ParamGroup`. A step is one kernel
    call on the CPU (three launches on CUDA) whatever the number of tensors: the norms are
    summed in float64 in one fixed order, the same bits on every device and thread count.
    A momentum schedule drives ``beta1``. PyTorch has no LAMB.

    ``state_dtype="int8"`` keeps ``m`` and ``v`` as block-wise int8 (2.004 bytes a parameter),
    ``"bfloat16"`` as bfloat16 rounded stochastically (4 bytes; ``state_seed`` keys the
    rounding); see :class:`~fastopt.AdamW`. Both passes decode the stored state and run the
    update from it (the same bits twice): the first sums the direction, the second steps with
    it and stores the new state encoded (an int8 block is a norm tile), so a step is the
    float32 step from the decoded state.

    :class:`~fastopt.distributed.ShardedOptimizer` gives each rank whole tensors (its shards cut
    where a tensor starts), so the norms are a single process's.

    Examples
    --------
    >>> from fastopt import FlatParams, LAMB
    >>> params = FlatParams({"w": 2, "b": 2})
    >>> params["w"][:] = [3.0, 4.0]
    >>> opt = LAMB(params, lr=0.1)
    >>> params.grad[:] = [1.0, -2.0, 1.0, 1.0]
    >>> opt.step()  # w moves by 0.1 * ||w|| / ||u||; b (norm 0) by 0.1
    >>> params["w"].round(6), params["b"].round(6)
    (array([2.646447, 4.353554], dtype=float32), array([-0.1, -0.1], dtype=float32))
    """

    config_type = LAMBConfig
    #: Norms of whole tensors per step: a shard must not cut one.
    per_tensor = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, *, maximize=False,
                 groups=(), device=None, state_dtype=None, state_seed=0):
        config = LAMBConfig(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, config, groups, device, state_dtype=state_dtype, state_seed=state_seed)

    def _rule_for(self, config):
        from ..kernels.rules import RULES

        return RULES["lamb_step"]

    def _refresh(self):
        beta1, beta2 = betas = self._hyper["betas"]
        self._constants = betas, (self._grad_sign(), 1.0 - beta1, beta2, 1.0 - beta2, self._hyper["eps"])

    def _scalars(self, step):
        (beta1, beta2), constants = self._constants
        return (self._hyper["lr"], *constants, 1.0 - beta1**step, 1.0 - beta2**step)
