r"""Learning-rate schedules: closed-form, pure functions of the step count.

A schedule is a small frozen dataclass: ``schedule(step)`` returns the learning rate (or, for a
momentum schedule, the momentum) after ``step`` scheduler steps, ``step = 0`` being the value
before the first one, as ``torch.optim.lr_scheduler`` counts. Arguments are checked when the
schedule is built. No schedule is recursive, so any step can be evaluated on its own, a resumed
run continues the exact sequence, and ``to_dict()``/:func:`from_dict` turn a schedule into plain
data and back (nothing is pickled).

>>> from fastopt import schedules
>>> decay = schedules.step_decay(0.1, step_size=10, gamma=0.9)   # 10 % less every 10 epochs
>>> [round(decay(t), 4) for t in (0, 9, 10, 25)]
[0.1, 0.1, 0.09, 0.081]
>>> warm = schedules.warmup(schedules.cosine_annealing(1e-3, T_max=90), steps=10)
>>> schedules.evaluate(warm, 3)
array([0.    , 0.0001, 0.0002])

Where PyTorch has the same schedule, the same hyperparameters give the same values (tested to
1e-12 relative); :class:`OneCycle` holds its last value past ``total_steps`` where PyTorch
raises.
"""

import ast
import bisect
import dataclasses
import math
import numbers
from typing import ClassVar

import numpy as np

from .. import checks as _checks

_REGISTRY = {}


def _register(cls):
    _REGISTRY[cls.name] = cls
    return cls


class Schedule:
    """Base of every schedule: ``__call__(step)``, ``to_dict()``, arithmetic-free."""

    name: ClassVar[str]

    def __call__(self, step):
        raise NotImplementedError

    def to_dict(self):
        """The schedule as plain data (nested schedules included), for :func:`from_dict`."""
        data = {"name": self.name}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Schedule):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = [v.to_dict() if isinstance(v, Schedule) else v for v in value]
            data[field.name] = value
        return data


def from_dict(data):
    """Rebuild (and re-validate) a schedule from :meth:`Schedule.to_dict` output."""
    if not isinstance(data, dict) or data.get("name") not in _REGISTRY:
        known = sorted(_REGISTRY)
        raise ValueError(f"not a schedule: {data!r}; a schedule dict has a 'name' among {known}")
    cls = _REGISTRY[data["name"]]
    values = {}
    for key, value in data.items():
        if key == "name":
            continue
        if isinstance(value, dict) and "name" in value:
            value = from_dict(value)
        elif isinstance(value, list):
            value = tuple(from_dict(v) if isinstance(v, dict) else v for v in value)
        values[key] = value
    try:
        return cls(**values)
    except TypeError as error:
        raise ValueError(f"bad arguments for schedule {cls.name!r}: {error}") from None


def evaluate(schedule, steps):
    """The schedule at steps ``0 .. steps - 1`` as a float64 array."""
    steps = _count("steps", steps)
    return np.array([schedule(t) for t in range(steps)], dtype=np.float64)


# -- argument checks ---------------------------------------------------------------------------


def _count(name, value, *, minimum=0):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {name}={value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {name}={value!r}")
    return int(value)


def _set(instance, **values):
    for key, value in values.items():
        object.__setattr__(instance, key, value)


def _schedule(name, value):
    if not isinstance(value, Schedule):
        raise TypeError(f"{name} must be a schedule, got {name}={value!r}")
    return value


def _step(step):
    if type(step) is int and step >= 0:  # the common case, without the abstract-class checks
        return step
    return _count("step", step)


# -- the schedules -----------------------------------------------------------------------------


@_register
@dataclasses.dataclass(frozen=True)
class Constant(Schedule):
    r"""``init_value * factor`` for the first ``total_steps`` steps, then ``init_value``
    (``torch.optim.lr_scheduler.ConstantLR``; with the defaults, a constant)."""

    name = "constant"
    init_value: float
    factor: float = 1.0
    total_steps: int = 0

    def __post_init__(self):
        _set(self, init_value=_checks.nonnegative("init_value", self.init_value),
             factor=_checks.in_range("factor", self.factor, 0.0, 1.0, high_inclusive=True),
             total_steps=_count("total_steps", self.total_steps))

    def __call__(self, step):
        return self.init_value * (self.factor if _step(step) < self.total_steps else 1.0)


@_register
@dataclasses.dataclass(frozen=True)
class StepDecay(Schedule):
    r""":math:`\eta_0 \gamma^{\lfloor t / k \rfloor}`: multiply by ``gamma`` every ``step_size``
    steps (``StepLR``). "10 % less every 10 epochs" is ``step_decay(lr, 10, 0.9)``."""

    name = "step_decay"
    init_value: float
    step_size: int
    gamma: float = 0.1

    def __post_init__(self):
        _set(self, init_value=_checks.nonnegative("init_value", self.init_value),
             step_size=_count("step_size", self.step_size, minimum=1),
             gamma=_checks.in_range("gamma", self.gamma, 0.0, 1.0, high_inclusive=True))

    def __call__(self, step):
        return self.init_value * self.gamma ** (_step(step) // self.step_size)


@_register
@dataclasses.dataclass(frozen=True)
class MultiStep(Schedule):
    r""":math:`\eta_0 \gamma^{m(t)}`, :math:`m(t)` the number of ``milestones`` <= ``t``
    (``MultiStepLR``)."""

    name = "multi_step"
    init_value: float
    milestones: tuple
    gamma: float = 0.1

    def __post_init__(self):
        milestones = tuple(_count("milestones", m) for m in self.milestones)
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"milestones must be strictly increasing, got milestones={list(milestones)}")
        _set(self, init_value=_checks.nonnegative("init_value", self.init_value),
             milestones=milestones,
             gamma=_checks.in_range("gamma", self.gamma, 0.0, 1.0, high_inclusive=True))

    def __call__(self, step):
        return self.init_value * self.gamma ** bisect.bisect_right(self.milestones, _step(step))


@_register
@dataclasses.dataclass(frozen=True)
class Exponential(Schedule):
    r""":math:`\eta_0 \gamma^{t/s}` (``staircase``: :math:`\gamma^{\lfloor t/s \rfloor}`), with
    :math:`s` = ``transition_steps`` (``ExponentialLR`` is :math:`s = 1`)."""

    name = "exponential"
    init_value: float
    gamma: float
    transition_steps: int = 1
    staircase: bool = False

    def __post_init__(self):
        _set(self, init_value=_checks.nonnegative("init_value", self.init_value),
             gamma=_checks.in_range("gamma", self.gamma, 0.0, 1.0, high_inclusive=True),
             transition_steps=_count("transition_steps", self.transition_steps, minimum=1),
             staircase=_checks.boolean("staircase", self.staircase))

    def __call__(self, step):
        exponent = _step(step) / self.transition_steps
        return self.init_value * self.gamma ** (math.floor(exponent) if self.staircase else exponent)


@_register
@dataclasses.dataclass(frozen=True)
class Linear(Schedule):
    r"""From ``init_value * start_factor`` to ``init_value * end_factor`` linearly over
    ``total_steps``, then constant (``LinearLR``)."""

    name = "linear"
    init_value: float
    start_factor: float = 1.0 / 3
    end_factor: float = 1.0
    total_steps: int = 5

    def __post_init__(self):
        _set(self, init_value=_checks.nonnegative("init_value", self.init_value),
             start_factor=_checks.in_range("start_factor", self.start_factor, 0.0, 1.0, high_inclusive=True),
             end_factor=_checks.in_range("end_factor", self.end_factor, 0.0, 1.0, high_inclusive=True),
             total_steps=_count("total_steps", self.total_steps, minimum=1))
        if self.start_factor == 0:
            raise ValueError("start_factor must be > 0, got start_factor=0.0")

    def __call__(self, step):
        progress = min(_step(step), self.total_steps) / self.total_steps
        return self.init_value * (self.start_factor + (self.end_factor - self.start_factor) * progress)


@_register
@dataclasses.dataclass(frozen=True)
class Polynomial(Schedule):
    r""":math:`(\eta_0 - \eta_{end})(1 - \min(t, T)/T)^p + \eta_{end}` (``PolynomialLR`` is
    ``end_value = 0``)."""

    name = "polynomial"
    init_value: float
    total_steps: int = 5
    power: float = 1.0
    end_value: float = 0.0

    def __post_init__(self):
        _set(self, init_value=_checks.nonnegative("init_value", self.init_value),
             total_steps=_count("total_steps", self.total_steps, minimum=1),
             power=_checks.nonnegative("power", self.power),
             end_value=_checks.nonnegative("end_value", self.end_value))

    def __call__(self, step):
        remaining = 1.0 - min(_step(step), self.total_steps) / self.total_steps
        return (self.init_value - self.end_value) * remaining**self.power + self.end_value


def _cosine(high, low, fraction):
    return low + (high - low) * (1.0 + math.cos(math.pi * fraction)) / 2.0


@_register
@dataclasses.dataclass(frozen=True)
class CosineAnnealing(Schedule):
    r""":math:`\eta_{min} + (\eta_0 - \eta_{min})(1 + \cos(\pi t / T_{max}))/2`
    (``CosineAnnealingLR``). Past ``T_max`` it rises again, as PyTorch's does; wrap it in
    :func:`sequence` with a constant to hold the minimum instead."""

    name = "cosine_annealing"
    init_value: float
    T_max: int
    eta_min: float = 0.0

    def __post_init__(self):
        _set(self, init_value=_checks.nonnegative("init_value", self.init_value),
             T_max=_count("T_max", self.T_max, minimum=1),
             eta_min=_checks.nonnegative("eta_min", self.eta_min))

    def __call__(self, step):
        return _cosine(self.init_value, self.eta_min, _step(step) / self.T_max)


@_register
@dataclasses.dataclass(frozen=True)
class CosineWarmRestarts(Schedule):
    r"""SGDR (Loshchilov & Hutter, 2017): cosine annealing over periods of ``T_0``,
    ``T_0 * T_mult``, ... steps, restarting at ``init_value`` (``CosineAnnealingWarmRestarts``)."""

    name = "cosine_warm_restarts"
    init_value: float
    T_0: int
    T_mult: int = 1
    eta_min: float = 0.0

    def __post_init__(self):
        _set(self, init_value=_checks.nonnegative("init_value", self.init_value),
             T_0=_count("T_0", self.T_0, minimum=1), T_mult=_count("T_mult", self.T_mult, minimum=1),
             eta_min=_checks.nonnegative("eta_min", self.eta_min))

    def __call__(self, step):
        t, period = _step(step), self.T_0
        if self.T_mult == 1:
            t %= period
        else:
            while t >= period:  # integer arithmetic: no log() rounding at restart edges
                t -= period
                period *= self.T_mult
        return _cosine(self.init_value, self.eta_min, t / period)


_CYCLIC_MODES = ("triangular", "triangular2", "exp_range")


@_register
@dataclasses.dataclass(frozen=True)
class Cyclic(Schedule):
    r"""Cyclical learning rates (Smith, 2017; ``CyclicLR``): from ``base_value`` up to
    ``max_value`` over ``step_size_up`` steps and back over ``step_size_down``.

    ``mode``: ``"triangular"`` (constant amplitude), ``"triangular2"`` (halved each cycle) or
    ``"exp_range"`` (amplitude times ``gamma**step``). ``inverse=True`` gives the momentum that
    is cycled the opposite way: ``max_value`` at the learning rate's base, ``base_value`` at its
    peak (build it with :func:`cyclic_momentum`).
    """

    name = "cyclic"
    base_value: float
    max_value: float
    step_size_up: int = 2000
    step_size_down: int | None = None
    mode: str = "triangular"
    gamma: float = 1.0
    inverse: bool = False

    def __post_init__(self):
        base = _checks.nonnegative("base_value", self.base_value)
        peak = _checks.nonnegative("max_value", self.max_value)
        if peak < base:
            raise ValueError(f"max_value must be >= base_value ({base}), got max_value={peak}")
        if self.mode not in _CYCLIC_MODES:
            raise ValueError(f"mode must be one of {_CYCLIC_MODES}, got mode={self.mode!r}")
        up = _count("step_size_up", self.step_size_up, minimum=1)
        down = up if self.step_size_down is None else _count("step_size_down", self.step_size_down, minimum=1)
        _set(self, base_value=base, max_value=peak, step_size_up=up, step_size_down=down,
             gamma=_checks.in_range("gamma", self.gamma, 0.0, 1.0, high_inclusive=True),
             inverse=_checks.boolean("inverse", self.inverse))

    def __call__(self, step):
        t = _step(step)
        total = self.step_size_up + self.step_size_down
        ratio = self.step_size_up / total
        cycle = math.floor(1 + t / total)
        x = 1.0 + t / total - cycle
        fraction = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
        if self.mode == "triangular":
            scale = 1.0
        elif self.mode == "triangular2":
            scale = 0.5 ** (cycle - 1)  # underflows to 0 after about 1,075 cycles; never overflows
        else:
            scale = self.gamma**t
        height = (self.max_value - self.base_value) * fraction * scale
        return self.max_value - height if self.inverse else self.base_value + height


def cyclic_momentum(learning_rate, base_momentum=0.8, max_momentum=0.9):
    """The momentum (or Adam ``beta1``) schedule cycled against a :class:`Cyclic` one."""
    if not isinstance(learning_rate, Cyclic):
        raise TypeError(f"learning_rate must be a cyclic schedule, got {learning_rate!r}")
    return dataclasses.replace(learning_rate, base_value=base_momentum, max_value=max_momentum,
                               inverse=True)


_ANNEALING = ("cos", "linear")


@_register
@dataclasses.dataclass(frozen=True)
class OneCycle(Schedule):
    r"""The one-cycle policy (Smith & Topin, 2018; ``OneCycleLR``).

    From ``max_value / div_factor`` up to ``max_value`` over the first ``pct_start`` of
    ``total_steps``, then down to ``max_value / div_factor / final_div_factor``; with
    ``three_phase``, back to the start value first and only then to the minimum.
    ``anneal_strategy`` is ``"cos"`` or ``"linear"``. ``inverse=True`` (from
    :func:`one_cycle_momentum`) cycles ``max_value``..``base_value`` the opposite way.

    .. warning:: PyTorch raises once stepped past ``total_steps``; this schedule holds its
       final value there.
    """

    name = "one_cycle"
    max_value: float
    total_steps: int
    pct_start: float = 0.3
    anneal_strategy: str = "cos"
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    three_phase: bool = False
    inverse: bool = False
    base_value: float | None = None

    def __post_init__(self):
        total = _count("total_steps", self.total_steps, minimum=2)
        pct = _checks.in_range("pct_start", self.pct_start, 0.0, 1.0, high_inclusive=True)
        if self.anneal_strategy not in _ANNEALING:
            raise ValueError(f"anneal_strategy must be one of {_ANNEALING}, got anneal_strategy={self.anneal_strategy!r}")
        _set(self, max_value=_checks.nonnegative("max_value", self.max_value), total_steps=total,
             pct_start=pct, div_factor=_checks.positive("div_factor", self.div_factor),
             final_div_factor=_checks.positive("final_div_factor", self.final_div_factor),
             three_phase=_checks.boolean("three_phase", self.three_phase),
             inverse=_checks.boolean("inverse", self.inverse))
        if self.inverse:
            base = _checks.nonnegative("base_value", self.base_value)
            if base > self.max_value:
                raise ValueError(f"base_value must be <= max_value ({self.max_value}), got base_value={base}")
            _set(self, base_value=base)
        elif self.base_value is not None:
            raise ValueError("base_value is for the momentum schedule (inverse=True) only")
        ends = [0.0] + [end for end, _, _ in self._phases()]
        if any(b <= a for a, b in zip(ends, ends[1:])):
            raise ValueError(
                f"pct_start={pct} leaves a phase of no steps in total_steps={total} "
                f"(phase ends {ends[1:]}); each phase needs at least one step"
            )
        # Derived once (not fields: not compared, not saved): (start, end, begin value, end value)
        # of each phase, so that a call is a few float operations.
        _set(self, _table=tuple((start, end, begin, final) for start, (end, begin, final)
                                in zip(ends, self._phases())), _cos=self.anneal_strategy == "cos")

    def _phases(self):
        end_up = self.pct_start * self.total_steps - 1
        last = self.total_steps - 1
        if self.inverse:
            high, low = self.max_value, self.base_value
            if self.three_phase:
                return [(end_up, high, low), (2 * end_up, low, high), (last, high, high)]
            return [(end_up, high, low), (last, low, high)]
        start = self.max_value / self.div_factor
        floor = start / self.final_div_factor
        if self.three_phase:
            return [(end_up, start, self.max_value), (2 * end_up, self.max_value, start), (last, start, floor)]
        return [(end_up, start, self.max_value), (last, self.max_value, floor)]

    def __call__(self, step):
        t = min(_step(step), self.total_steps - 1)
        for phase_start, phase_end, begin, end in self._table:
            if t <= phase_end:  # the last phase ends at total_steps - 1, so one always does
                break
        fraction = (t - phase_start) / (phase_end - phase_start)
        if self._cos:
            return end + (begin - end) / 2.0 * (math.cos(math.pi * fraction) + 1)
        return (end - begin) * fraction + begin


def one_cycle_momentum(learning_rate, base_momentum=0.85, max_momentum=0.95):
    """The momentum (or Adam ``beta1``) schedule cycled against a :class:`OneCycle` one."""
    if not isinstance(learning_rate, OneCycle):
        raise TypeError(f"learning_rate must be a one-cycle schedule, got {learning_rate!r}")
    return dataclasses.replace(learning_rate, max_value=max_momentum, base_value=base_momentum,
                               inverse=True)


@_register
@dataclasses.dataclass(frozen=True)
class Warmup(Schedule):
    """Linear warm-up from ``start_value`` to ``schedule(0)`` over ``steps`` steps, then
    ``schedule(t - steps)``."""

    name = "warmup"
    schedule: Schedule
    steps: int
    start_value: float = 0.0

    def __post_init__(self):
        _schedule("schedule", self.schedule)
        _set(self, steps=_count("steps", self.steps, minimum=1),
             start_value=_checks.nonnegative("start_value", self.start_value))

    def __call__(self, step):
        t = _step(step)
        if t < self.steps:
            return self.start_value + (self.schedule(0) - self.start_value) * t / self.steps
        return self.schedule(t - self.steps)


@_register
@dataclasses.dataclass(frozen=True)
class Sequence(Schedule):
    """``schedules[k]`` from ``boundaries[k - 1]`` on, each restarted at its own step 0.

    .. note:: This is the closed form: the next schedule starts at its own step 0.
       PyTorch's ``SequentialLR`` steps its schedulers rather than evaluating them; it agrees
       (tested: LinearLR then CosineAnnealingLR, ConstantLR then ExponentialLR, torch 2.13),
       but any scheduler whose stepped form departs from its closed form can differ there.
    """

    name = "sequence"
    schedules: tuple
    boundaries: tuple

    def __post_init__(self):
        schedules = tuple(_schedule(f"schedules[{k}]", s) for k, s in enumerate(self.schedules))
        boundaries = tuple(_count("boundaries", b, minimum=1) for b in self.boundaries)
        if len(boundaries) != len(schedules) - 1:
            raise ValueError(f"boundaries must hold one fewer entries than schedules "
                             f"({len(schedules)}), got boundaries={list(boundaries)}")
        if any(b <= a for a, b in zip(boundaries, boundaries[1:])):
            raise ValueError(f"boundaries must be strictly increasing, got boundaries={list(boundaries)}")
        _set(self, schedules=schedules, boundaries=boundaries)

    def __call__(self, step):
        t = _step(step)
        index = bisect.bisect_right(self.boundaries, t)
        return self.schedules[index](t - (self.boundaries[index - 1] if index else 0))


@_register
@dataclasses.dataclass(frozen=True)
class Product(Schedule):
    """The product of schedules at each step, e.g. a base schedule times a factor schedule."""

    name = "product"
    schedules: tuple

    def __post_init__(self):
        if len(self.schedules) < 1:
            raise ValueError("schedules must hold at least one schedule, got schedules=()")
        _set(self, schedules=tuple(_schedule(f"schedules[{k}]", s) for k, s in enumerate(self.schedules)))

    def __call__(self, step):
        return math.prod(schedule(step) for schedule in self.schedules)


# -- the names a user calls ----------------------------------------------------------------------

constant = Constant
step_decay = StepDecay
multi_step = MultiStep
exponential = Exponential
linear = Linear
polynomial = Polynomial
cosine_annealing = CosineAnnealing
cosine_warm_restarts = CosineWarmRestarts
cyclic = Cyclic
one_cycle = OneCycle
warmup = Warmup


def sequence(schedules, boundaries):
    """Run ``schedules`` one after another, switching at ``boundaries`` (see :class:`Sequence`)."""
    return Sequence(tuple(schedules), tuple(boundaries))


def product(*schedules):
    """Multiply schedules step by step (see :class:`Product`)."""
    return Product(tuple(schedules))


def by_name(name, **arguments):
    """Build a registered schedule by name, e.g. ``by_name("step_decay", init_value=0.1,
    step_size=10)``; for the command line."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown schedule {name!r}; the schedules are {sorted(_REGISTRY)}")
    try:
        return _REGISTRY[name](**arguments)
    except TypeError as error:
        raise ValueError(f"bad arguments for schedule {name!r}: {error}") from None


def parse_value(text):
    """A command-line value: a Python literal (``0.1``, ``[30, 60]``, ``True``) or a string."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return tuple(value) if isinstance(value, list) else value


NAMES = tuple(sorted(_REGISTRY))

__all__ = [
    "Schedule", "by_name", "constant", "cosine_annealing", "cosine_warm_restarts", "cyclic",
    "cyclic_momentum", "evaluate", "exponential", "from_dict", "linear", "multi_step",
    "one_cycle", "one_cycle_momentum", "polynomial", "product", "sequence", "step_decay",
    "warmup",
]
