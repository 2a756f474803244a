"""fastopt: fused Numba optimizer kernels over flat parameter buffers.

>>> import numpy as np
>>> import fastopt
>>> params = fastopt.FlatParams({"weight": (4, 3), "bias": 3})
>>> opt = fastopt.AdamW(params, lr=1e-3, groups=[fastopt.ParamGroup(["bias"], weight_decay=0.0)])
>>> params.grad[:] = 0.5          # your backward pass writes here (or into params.grad_of(name))
>>> opt.step()                    # one kernel call updates every parameter
"""

from ._adam import Adam, AdamConfig, AdamW
from ._dropout import Dropout, dropout, dropout_backward, dropout_mask
from ._model import MLP
from ._optimizer import Optimizer, ParamGroup
from ._params import FlatParams
from . import schedules
from ._rmsprop import RMSProp, RMSPropConfig
from ._scheduler import ReduceLROnPlateau, Scheduler
from ._sgd import SGD, SGDConfig
from ._trainer import Checkpoint, EarlyStopping, StopTraining, Trainer
from . import losses

__version__ = "0.1.0"

__all__ = [
    "SGD", "Adam", "AdamConfig", "AdamW", "Checkpoint", "Dropout", "EarlyStopping", "FlatParams",
    "MLP", "StopTraining", "Trainer", "losses", "Optimizer", "ParamGroup", "RMSProp",
    "RMSPropConfig", "ReduceLROnPlateau", "SGDConfig", "Scheduler", "__version__", "dropout", "dropout_backward",
    "dropout_mask", "schedules",
]
