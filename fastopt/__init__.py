"""fastopt: fused Numba optimizer kernels over flat parameter buffers.

>>> import numpy as np
>>> import fastopt
>>> params = fastopt.FlatParams({"weight": (4, 3), "bias": 3})
>>> opt = fastopt.AdamW(params, lr=1e-3, groups=[fastopt.ParamGroup(["bias"], weight_decay=0.0)])
>>> params.grad[:] = 0.5          # your backward pass writes here (or into params.grad_of(name))
>>> opt.step()                    # one kernel call updates every parameter

The package's folders are its layers (see the README's design section): ``optim`` (the
optimizers over the update rules of ``fastopt.kernels``), ``schedules``, ``nn`` (losses,
dropout, the model), ``train`` (trainer, checkpoints, data), ``distributed``, ``cli`` and
``bench``. The public API is what this module exports, with the modules ``schedules``,
``losses`` and ``distributed``; everything else is internal.
"""

import sys

from .nn import losses
from .nn.dropout import Dropout, dropout, dropout_backward, dropout_mask
from .nn.model import MLP
from .optim import (LAMB, SGD, Adafactor, AdafactorConfig, Adagrad, AdagradConfig, Adam, AdamConfig, Adamax, AdamaxConfig, AdamW, LAMBConfig,
                    Lion, LionConfig, Muon, MuonConfig, NAdam, NAdamConfig, Optimizer, ParamGroup, RAdam, RAdamConfig, RMSProp,
                    RMSPropConfig, SGDConfig)
from .params import FlatParams
from . import schedules
from .schedules.scheduler import ReduceLROnPlateau, Scheduler
from .train.trainer import Checkpoint, EarlyStopping, StopTraining, Trainer

# `import fastopt.losses` and `from fastopt.losses import ...` as before losses moved to fastopt.nn.
sys.modules[__name__ + ".losses"] = losses

__version__ = "0.1.0"

__all__ = [
    "SGD", "Adafactor", "AdafactorConfig", "Adagrad", "AdagradConfig", "Adam", "AdamConfig", "AdamW", "Adamax", "AdamaxConfig", "LAMB", "LAMBConfig",
    "Lion", "LionConfig", "Muon", "MuonConfig", "NAdam", "NAdamConfig", "RAdam", "RAdamConfig", "Checkpoint", "Dropout", "EarlyStopping",
    "FlatParams", "MLP", "StopTraining", "Trainer", "losses", "Optimizer", "ParamGroup", "RMSProp",
    "RMSPropConfig", "ReduceLROnPlateau", "SGDConfig", "Scheduler", "__version__", "dropout", "dropout_backward",
    "dropout_mask", "schedules",
]
