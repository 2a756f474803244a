"""The optimizers: each reads its update rule's spec (``fastopt.kernels.rules``) and launches
the rule's kernel once per step, on the CPU or the GPU."""

from .adam import Adam, AdamConfig, AdamW
from .optimizer import Optimizer, ParamGroup
from .rmsprop import RMSProp, RMSPropConfig
from .sgd import SGD, SGDConfig

__all__ = ["SGD", "Adam", "AdamConfig", "AdamW", "Optimizer", "ParamGroup", "RMSProp", "RMSPropConfig",
           "SGDConfig"]
