"""Schedulers: drive an optimizer's learning rate (and momentum) from a schedule or a metric."""

import math
import numbers

import numpy as np

from .. import checks as _checks
from ..optim.optimizer import Optimizer
from . import Schedule, from_dict

SCHEDULER_FORMAT = 1


def _check_optimizer(optimizer):
    from ..distributed import DistributedOptimizer

    if not isinstance(optimizer, (Optimizer, DistributedOptimizer)):
        raise TypeError(f"optimizer must be a fastopt optimizer, got {type(optimizer).__name__}")
    return optimizer


def _momentum_field(optimizer):
    """The hyperparameter a momentum schedule drives: ``momentum``, or Adam's ``beta1``."""
    config = optimizer.config
    if hasattr(config, "betas"):
        return "betas"
    if getattr(config, "momentum", 0) > 0:
        return "momentum"
    raise ValueError(
        f"a momentum schedule needs an optimizer built with momentum > 0 (or Adam's betas); "
        f"got {type(optimizer).__name__} with momentum={getattr(config, 'momentum', None)!r}"
    )


class Scheduler:
    """Sets an optimizer's learning rate to ``lr(t)`` after ``t`` calls of :meth:`step`.

    Step it once per epoch or once per batch, as the schedule's periods are counted. Groups
    follow through their ``lr_factor``. A ``momentum`` schedule, if given, drives SGD's or
    RMSProp's momentum or Adam's ``beta1`` (cyclical schedules cycle it against the rate).
    The learning rate of step 0 is set at construction, as in PyTorch.

    The state is the schedules (as plain data) and the step count: a restored scheduler
    continues the exact sequence.

    Examples
    --------
    >>> import fastopt
    >>> from fastopt import schedules
    >>> params = fastopt.FlatParams({"w": 3})
    >>> opt = fastopt.SGD(params, lr=1.0, momentum=0.9)
    >>> lr = schedules.cyclic(0.01, 0.1, step_size_up=4)
    >>> scheduler = fastopt.Scheduler(opt, lr, momentum=schedules.cyclic_momentum(lr, 0.8, 0.9))
    >>> for _ in range(4):
    ...     opt.step()
    ...     scheduler.step()
    >>> round(opt.lr, 6), opt.config.momentum
    (0.1, 0.8)
    """

    def __init__(self, optimizer, lr, *, momentum=None):
        self._optimizer = _check_optimizer(optimizer)
        if not isinstance(lr, Schedule):
            raise TypeError(f"lr must be a schedule from fastopt.schedules, got lr={lr!r}")
        if momentum is not None and not isinstance(momentum, Schedule):
            raise TypeError(f"momentum must be a schedule or None, got momentum={momentum!r}")
        if momentum is not None:
            _momentum_field(optimizer)  # refused here when the optimizer has no momentum
        self._lr = lr
        self._momentum = momentum
        self._step = 0
        self._apply()

    @property
    def optimizer(self):
        return self._optimizer

    @property
    def step_count(self):
        return self._step

    @property
    def lr(self):
        """The learning rate now set on the optimizer."""
        return self._optimizer.lr

    def step(self):
        """Advance one epoch or batch and set the next learning rate."""
        self._step += 1
        self._apply()

    def _apply(self):
        # The optimizer's fast path: the values are validated, nothing else is rebuilt. The
        # learning rate is checked before the momentum is set and set after it, so a refused
        # value of either changes nothing.
        lr = _checks.nonnegative("lr", self._lr(self._step))
        if self._momentum is not None:
            self._optimizer.set_momentum(self._momentum(self._step))
        self._optimizer.lr = lr

    def state_dict(self):
        """``{"format", "step", "lr", "momentum"}``, all plain data."""
        return {"format": SCHEDULER_FORMAT, "kind": "schedule", "step": self._step,
                "lr": self._lr.to_dict(),
                "momentum": None if self._momentum is None else self._momentum.to_dict()}

    def load_state_dict(self, state_dict):
        """Restore :meth:`state_dict` output and set the learning rate of that step."""
        _check_state(state_dict, "schedule", ("step", "lr", "momentum"))
        lr = from_dict(state_dict["lr"])
        momentum = None if state_dict["momentum"] is None else from_dict(state_dict["momentum"])
        if momentum is not None:
            _momentum_field(self._optimizer)
        step = _check_step(state_dict["step"])
        self._lr, self._momentum, self._step = lr, momentum, step
        self._apply()


def _check_state(state_dict, kind, keys):
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
    missing = [k for k in ("format", "kind", *keys) if k not in state_dict]
    if missing:
        raise ValueError(f"state_dict lacks {missing}")
    if state_dict["format"] != SCHEDULER_FORMAT or state_dict["kind"] != kind:
        raise ValueError(f"state_dict is a {state_dict['kind']!r} scheduler state of format "
                         f"{state_dict['format']!r}, expected {kind!r} format {SCHEDULER_FORMAT}")


def _check_step(step, name="step"):
    """A saved count: an int (a NumPy integer too) in [0, 2**63), as the optimizer's step."""
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral) or not 0 <= step < 2**63:
        raise ValueError(f"state_dict {name} must be an int in [0, 2**63), got {step!r}")
    return int(step)


_MODES = ("min", "max")
_THRESHOLD_MODES = ("rel", "abs")


class ReduceLROnPlateau:
    """Multiply the learning rate by ``factor`` when a metric has stopped improving.

    After each epoch call :meth:`step` with the validation metric. An epoch improves on the
    best so far if (``mode="min"``, ``threshold_mode="rel"``) ``metric < best * (1 -
    threshold)``, and likewise for ``"max"`` and ``"abs"``. After more than ``patience`` epochs
    without improvement the rate is multiplied by ``factor`` (not below ``min_lr``; changes
    smaller than ``eps`` are skipped), followed by ``cooldown`` epochs in which bad epochs are
    not counted. The same rules and defaults as ``torch.optim.lr_scheduler.ReduceLROnPlateau``.

    The state is the configuration and four numbers (step, best, bad epochs, cooldown left);
    the current learning rate lives in the optimizer's own state dict.
    """

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0.0, eps=1e-8):
        self._optimizer = _check_optimizer(optimizer)
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got mode={mode!r}")
        if threshold_mode not in _THRESHOLD_MODES:
            raise ValueError(f"threshold_mode must be one of {_THRESHOLD_MODES}, got threshold_mode={threshold_mode!r}")
        factor = _checks.real_number("factor", factor)
        if not 0.0 <= factor < 1.0:
            raise ValueError(f"factor must lie in [0.0, 1.0), got factor={factor!r}")
        for name, value in (("patience", patience), ("cooldown", cooldown)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {name}={value!r}")
        self.config = dict(
            mode=mode, factor=factor, patience=patience,
            threshold=_checks.nonnegative("threshold", threshold), threshold_mode=threshold_mode,
            cooldown=cooldown, min_lr=_checks.nonnegative("min_lr", min_lr),
            eps=_checks.nonnegative("eps", eps),
        )
        self._step = 0
        self._best = math.inf if mode == "min" else -math.inf
        self._bad_epochs = 0
        self._cooldown_left = 0

    @property
    def optimizer(self):
        return self._optimizer

    @property
    def lr(self):
        return self._optimizer.lr

    @property
    def best(self):
        return self._best

    def _improves(self, metric):
        c = self.config
        if c["mode"] == "min":
            bound = self._best * (1 - c["threshold"]) if c["threshold_mode"] == "rel" else self._best - c["threshold"]
            return metric < bound
        bound = self._best * (1 + c["threshold"]) if c["threshold_mode"] == "rel" else self._best + c["threshold"]
        return metric > bound

    def step(self, metric):
        """Record one epoch's metric and lower the learning rate if it has plateaued."""
        metric = _checks.real_number("metric", metric)
        self._step += 1
        if self._improves(metric):
            self._best = metric
            self._bad_epochs = 0
        else:
            self._bad_epochs += 1
        if self._cooldown_left > 0:
            self._cooldown_left -= 1
            self._bad_epochs = 0
        if self._bad_epochs > self.config["patience"]:
            old = self._optimizer.lr
            new = max(old * self.config["factor"], self.config["min_lr"])
            if old - new > self.config["eps"]:
                self._optimizer.lr = new
            self._cooldown_left = self.config["cooldown"]
            self._bad_epochs = 0

    def state_dict(self):
        return {"format": SCHEDULER_FORMAT, "kind": "plateau", "config": dict(self.config),
                "step": self._step, "best": self._best, "bad_epochs": self._bad_epochs,
                "cooldown_left": self._cooldown_left}

    def load_state_dict(self, state_dict):
        """Restore :meth:`state_dict` output (the configuration is checked as at construction)."""
        _check_state(state_dict, "plateau", ("config", "step", "best", "bad_epochs", "cooldown_left"))
        checked = ReduceLROnPlateau(self._optimizer, **state_dict["config"])
        step = _check_step(state_dict["step"])
        counters = [_check_step(state_dict[k], k) for k in ("bad_epochs", "cooldown_left")]
        best = _checks.real_number("best", state_dict["best"])
        if math.isnan(best):  # every comparison with NaN is false: the plateau would never improve
            raise ValueError(f"state_dict best must be a number or +-inf, got best={best!r}")
        self.config = checked.config
        self._step, self._best = step, best
        self._bad_epochs, self._cooldown_left = counters
