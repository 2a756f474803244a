"""The Python around a step: a scheduler step, setting ``lr``, and a scheduled AdamW step over
1e3 float32 parameters, fastopt against torch (fused AdamW, ``OneCycleLR`` with its cycled
momentum). Used by ``bench/hot_path.py`` and the pytest-benchmark suite.

Each case has a ``step()`` of a few microseconds; time it many times in a row.
"""

import numpy as np

import fastopt

#: Parameters of the model the cases step (a small layer: where the Python around a step shows).
SIZE = 1000
#: One-cycle length: long enough that no benchmark reaches its end (torch raises there).
TOTAL_STEPS = 10**9
MAX_LR = 1e-2


def _fastopt_adamw():
    params = fastopt.FlatParams({"w": SIZE})
    params.data[:] = np.random.default_rng(0).standard_normal(SIZE)
    params.grad[:] = np.random.default_rng(1).standard_normal(SIZE) * np.float32(1e-3)
    return fastopt.AdamW(params, lr=1e-3)


def _torch_adamw():
    import torch

    p = torch.nn.Parameter(torch.from_numpy(np.random.default_rng(0).standard_normal(SIZE).astype(np.float32)))
    p.grad = torch.from_numpy(np.random.default_rng(1).standard_normal(SIZE).astype(np.float32) * 1e-3)
    return torch.optim.AdamW([p], lr=1e-3, fused=True)


def _scheduler(implementation, optimizer):
    if implementation == "torch":
        import torch

        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=MAX_LR, total_steps=TOTAL_STEPS)
    lr = fastopt.schedules.one_cycle(MAX_LR, total_steps=TOTAL_STEPS)
    return fastopt.Scheduler(optimizer, lr, momentum=fastopt.schedules.one_cycle_momentum(lr))


class Case:
    """``implementation`` is ``"fastopt"`` or ``"torch"``; ``kind`` one of :data:`KINDS`."""

    def __init__(self, kind, implementation):
        self.optimizer = _torch_adamw() if implementation == "torch" else _fastopt_adamw()
        if kind in ("scheduler_step", "scheduled_step"):
            self.scheduler = _scheduler(implementation, self.optimizer)
        self.optimizer.step()  # after the scheduler: torch warns of a scheduler stepped first
        self.values = (1e-3, 2e-3)
        self.turn = 0
        self.step = getattr(self, f"_{kind}_{implementation}")

    def _scheduler_step_fastopt(self):
        self.scheduler.step()

    _scheduler_step_torch = _scheduler_step_fastopt

    def _scheduled_step_fastopt(self):
        self.optimizer.step()
        self.scheduler.step()

    _scheduled_step_torch = _scheduled_step_fastopt

    def _optimizer_step_fastopt(self):
        self.optimizer.step()

    _optimizer_step_torch = _optimizer_step_fastopt

    def _set_lr_fastopt(self):
        self.turn ^= 1
        self.optimizer.lr = self.values[self.turn]

    def _set_lr_torch(self):
        self.turn ^= 1
        for group in self.optimizer.param_groups:
            group["lr"] = self.values[self.turn]


#: What the cases measure, by name.
KINDS = ("scheduler_step", "set_lr", "optimizer_step", "scheduled_step")
