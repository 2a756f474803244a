"""The optimizers: each reads its update rule's spec (``fastopt.kernels.rules``) and launches
the rule's kernel once per step, on the CPU or the GPU."""

from .adafactor import Adafactor, AdafactorConfig
from .adagrad import Adagrad, AdagradConfig
from .adam import Adam, AdamConfig, AdamW
from .adamax import Adamax, AdamaxConfig
from .lion import Lion, LionConfig
from .lamb import LAMB, LAMBConfig
from .muon import Muon, MuonConfig
from .nadam import NAdam, NAdamConfig
from .optimizer import Optimizer, ParamGroup
from .radam import RAdam, RAdamConfig
from .rmsprop import RMSProp, RMSPropConfig
from .sgd import SGD, SGDConfig

__all__ = ["SGD", "Adafactor", "AdafactorConfig", "Adagrad", "AdagradConfig", "Adam", "AdamConfig", "AdamW", "Adamax", "AdamaxConfig", "LAMB",
           "LAMBConfig", "Lion", "LionConfig", "Muon", "MuonConfig", "NAdam", "NAdamConfig", "Optimizer", "ParamGroup", "RAdam",
           "RAdamConfig", "RMSProp", "RMSPropConfig", "SGDConfig"]
