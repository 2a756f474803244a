"""What every optimizer shares: parameter groups, the chunk table, state, and state dicts."""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

import importlib

from . import _checks, _device
from ._params import FlatParams
from .kernels.chunks import chunk_table

#: Version of the :meth:`Optimizer.state_dict` format.
STATE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class ParamGroup:
    """Parameters that share a learning-rate factor and a weight decay.

    Parameters
    ----------
    params : sequence of str
        Names of parameters in the :class:`FlatParams`.
    lr_factor : float
        The group's learning rate is the optimizer's ``lr`` times this factor, so a scheduler
        that sets ``lr`` moves every group together.
    weight_decay : float or None
        The group's weight decay; ``None`` takes the optimizer's.

    Examples
    --------
    No weight decay on biases::

        AdamW(params, lr=1e-3, groups=[ParamGroup(["fc1.bias", "fc2.bias"], weight_decay=0.0)])
    """

    params: tuple
    lr_factor: float = 1.0
    weight_decay: float | None = None

    def __post_init__(self):
        if isinstance(self.params, str) or not isinstance(self.params, Sequence):
            raise TypeError(f"params must be a sequence of parameter names, got params={self.params!r}")
        for name in self.params:
            if not isinstance(name, str):
                raise TypeError(f"params must hold parameter names (str), got {name!r}")
        object.__setattr__(self, "params", tuple(self.params))
        object.__setattr__(self, "lr_factor", _checks.nonnegative("lr_factor", self.lr_factor))
        if self.weight_decay is not None:
            object.__setattr__(
                self, "weight_decay", _checks.nonnegative("weight_decay", self.weight_decay)
            )

    def to_dict(self):
        return {"params": list(self.params), "lr_factor": self.lr_factor,
                "weight_decay": self.weight_decay}


def config_from_dict(config_type, data):
    """Rebuild a frozen config dataclass from :func:`dataclasses.asdict` output, validated."""
    if not isinstance(data, Mapping):
        raise ValueError(f"config must be a mapping, got {type(data).__name__}")
    fields = {field.name for field in dataclasses.fields(config_type)}
    unknown = set(data) - fields
    if unknown:
        raise ValueError(f"config has keys {sorted(unknown)} unknown to {config_type.__name__}")
    values = dict(data)
    if isinstance(values.get("betas"), list):
        values["betas"] = tuple(values["betas"])
    return config_type(**values)


def cuda_twin(kernel):
    """The CUDA twin of a CPU kernel: the same name, in the sibling ``*_cuda`` module."""
    module = importlib.import_module(kernel.py_func.__module__ + "_cuda")
    return getattr(module, kernel.py_func.__name__)


def _cuda_launch(kernel, chunk_group, arguments):
    """The CUDA twin of ``kernel``, specialised for the types of ``arguments`` and configured
    for the chunk table, once: a step then launches it without numba resolving the argument
    types again."""
    from .kernels import _cuda

    return _cuda.launch(cuda_twin(kernel).specialize(*arguments), chunk_group)


def check_groups(params, groups):
    """``groups`` as a tuple, checked: ParamGroups naming parameters of ``params``, each once."""
    if isinstance(groups, ParamGroup) or not isinstance(groups, Sequence):
        raise TypeError(f"groups must be a sequence of ParamGroup, got {groups!r}")
    seen = {}
    for index, group in enumerate(groups):
        if not isinstance(group, ParamGroup):
            raise TypeError(f"groups[{index}] must be a ParamGroup, got {group!r}")
        for name in group.params:
            if name not in params:
                raise ValueError(f"groups[{index}] names {name!r}, which is not a parameter")
            if name in seen:
                raise ValueError(f"parameter {name!r} is in groups[{seen[name]}] and groups[{index}]")
            seen[name] = index
    return tuple(groups)


class Optimizer:
    """Base class: validates once, picks one kernel, and calls it once per :meth:`step`.

    A subclass declares its config dataclass and implements :meth:`_select` (the kernel and
    the names of its state buffers, from the config), :meth:`_refresh` (per-group values and
    scalars that change only with the config) and :meth:`_prepare` (what changes per step).
    """

    config_type: ClassVar[type]
    #: dtype of the per-group scale array the kernel takes; None: the parameters' dtype.
    _group_scale_dtype: ClassVar[type | None] = None

    def __init__(self, params, config, groups=(), device=None):
        if not isinstance(params, FlatParams):
            raise TypeError(f"params must be a FlatParams, got {type(params).__name__}")
        if device is not None:
            _device.check_device("device", device)
            if device == "cuda":
                _device.cuda()  # says what is missing when there is no usable GPU
            if device != params.device:
                raise ValueError(f"device={device!r}, but params live on {params.device!r}: move them "
                                 f"first (params = params.to({device!r})) and build the optimizer over those")
        if params.device == "cpu":
            _checks.flat_buffer("params.data", params.data)
            _checks.flat_buffer("params.grad", params.grad)
        if params.grad.dtype != params.data.dtype or params.grad.size != params.data.size:
            raise ValueError(
                f"params.grad ({params.grad.dtype}, {params.grad.size}) must match the layout of "
                f"params.data ({params.data.dtype}, {params.data.size})"
            )
        self._params = params
        self._device = params.device
        self._dtype = params.dtype.type
        self._kernel, state_names = self._select(config)
        self._state = {name: self._zeros() for name in state_names}
        self._step_count = 0
        self._config = config
        self._set_groups(self._check_groups(groups))

    # -- configuration -------------------------------------------------------------------------

    @property
    def params(self):
        return self._params

    @property
    def device(self):
        """``"cpu"`` or ``"cuda"``: where the parameters, gradients and state live."""
        return self._device

    def _zeros(self):
        if self._device == "cuda":
            return _device.zeros(self._params.size, self._params.dtype)
        return np.zeros_like(self._params.data)

    @property
    def config(self):
        """The hyperparameters, a frozen dataclass; assign a new one to change them."""
        return self._config

    @config.setter
    def config(self, config):
        if not isinstance(config, self.config_type):
            raise TypeError(f"config must be a {self.config_type.__name__}, got {type(config).__name__}")
        kernel, state_names = self._select(config)
        if kernel is not self._kernel:
            raise ValueError(
                f"{config} needs different state ({', '.join(state_names) or 'none'}) than this "
                f"optimizer was built with ({', '.join(self._state) or 'none'}); build a new one"
            )
        self._config = config
        self._refreshed()

    def set_hyperparameters(self, **changes):
        """Change some hyperparameters, validated, e.g. ``opt.set_hyperparameters(momentum=0.85)``."""
        self.config = dataclasses.replace(self._config, **changes)

    @property
    def lr(self):
        """The base learning rate; group ``k`` uses ``lr * groups[k].lr_factor``."""
        return self._config.lr

    @lr.setter
    def lr(self, value):
        self.set_hyperparameters(lr=value)

    @property
    def groups(self):
        return self._groups

    @property
    def step_count(self):
        """The number of steps taken (PyTorch's ``state["step"]``)."""
        return self._step_count

    @property
    def state(self):
        """``{name: flat buffer}`` of the optimizer state (live, not copies)."""
        return dict(self._state)

    def _check_groups(self, groups):
        return check_groups(self._params, groups)

    def _set_groups(self, groups):
        # Group 0 holds every parameter no ParamGroup names; group k + 1 is groups[k].
        self._groups = groups
        index = {name: k + 1 for k, group in enumerate(groups) for name in group.params}
        segments = [(*self._params.segment(name), index.get(name, 0)) for name in self._params]
        self._chunk_bounds, self._chunk_group = chunk_table(segments)
        n_groups = len(groups) + 1
        self._group_scale = np.empty(n_groups, self._group_scale_dtype or self._params.dtype)
        self._group_decay = np.empty(n_groups, self._params.dtype)
        tables = (self._chunk_bounds, self._chunk_group, self._group_scale, self._group_decay)
        if self._device == "cuda":
            # Copied once here; the group arrays again only when the config changes (a new lr).
            tables = tuple(_device.to_device(table) for table in tables)
        self._device_tables = tables
        self._kernel_buffers = (self._params.data, *self._state.values(), self._params.grad, *tables)
        self._refreshed()
        if self._device == "cuda":
            # The scalars' types do not change between steps (nor with the config), only their values.
            arguments = (*self._kernel_buffers, *self._prepare(self._step_count + 1))
            self._launch = _cuda_launch(self._kernel, self._chunk_group, arguments)
        else:
            from .kernels import penalty
            from .kernels._config import for_size

            # One chunk's worth of parameters or fewer: the serial builds, same bits, no thread start.
            self._launch = for_size(self._kernel, self._params.size)
            self._penalty = for_size(penalty.l2_penalty, self._params.size)

    def _refreshed(self):
        # The float64 weight decay of each group, derived once per configuration: the
        # subclasses' decay tables and l2_penalty read it.
        default = self._config.weight_decay
        self._group_weight_decays = np.array([default] + [default if g.weight_decay is None else g.weight_decay
                                                          for g in self._groups])
        self._refresh()
        if self._device == "cuda":
            self._device_tables[2].copy_to_device(self._group_scale)
            self._device_tables[3].copy_to_device(self._group_decay)

    def _group_lr(self):
        """float64 learning rate of each group."""
        return self._config.lr * np.array([1.0] + [g.lr_factor for g in self._groups])

    def _grad_sign(self):
        return self._dtype(-1.0 if self._config.maximize else 1.0)

    # -- the step ------------------------------------------------------------------------------

    def step(self):
        """Update every parameter from :attr:`FlatParams.grad`: one kernel call (on CUDA
        buffers one asynchronous launch, with scalar arguments only)."""
        self._step_count += 1
        self._launch(*self._kernel_buffers, *self._prepare(self._step_count))

    def zero_grad(self):
        """Set every gradient to zero."""
        self._params.zero_grad()

    def l2_penalty(self):
        r"""The L2 penalty :math:`\sum_k \tfrac{\lambda_k}{2}\lVert\theta_k\rVert^2` as a float.

        :math:`\lambda_k` is each group's weight decay, so for SGD, Adam and RMSProp this is
        the penalty whose gradient the step adds. Add it to the mean loss for the batch cost.
        """
        if self._device == "cuda":
            from .kernels import penalty_cuda

            return penalty_cuda.l2_penalty(self._params.data, *self._device_tables[:2],
                                           self._group_weight_decays)
        return self._penalty(self._params.data, self._chunk_bounds, self._chunk_group, self._group_weight_decays)

    # -- state dicts ---------------------------------------------------------------------------

    def state_dict(self):
        """Config, groups, step count and copies of the state buffers.

        Everything but ``state`` (numpy arrays) is plain JSON-compatible data.
        """
        return {
            "format": STATE_FORMAT,
            "optimizer": type(self).__name__,
            "config": dataclasses.asdict(self._config),
            "groups": [group.to_dict() for group in self._groups],
            "step": self._step_count,
            "layout": [[name, list(shape)] for name, shape in self._params.layout],
            "dtype": str(self._params.dtype),
            "state": {name: _device.host_copy(buffer) for name, buffer in self._state.items()},
        }

    def _checked_state(self, state_dict, params):
        """Check a :meth:`state_dict` against ``params`` (its layout and dtype) and this optimizer's
        class; return ``(config, kernel, state_names, groups, step, buffers)``."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        missing = {"format", "optimizer", "config", "groups", "step", "layout", "dtype", "state"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict lacks {sorted(missing)}")
        if state_dict["format"] != STATE_FORMAT:
            raise ValueError(f"state_dict format {state_dict['format']!r} is not {STATE_FORMAT}")
        if state_dict["optimizer"] != type(self).__name__:
            raise ValueError(
                f"state_dict is from a {state_dict['optimizer']!r} optimizer, not {type(self).__name__!r}"
            )
        layout = [[name, list(shape)] for name, shape in params.layout]
        saved_layout = [[name, list(shape)] for name, shape in state_dict["layout"]]
        if saved_layout != layout:
            raise ValueError("state_dict is for a different parameter layout (names or shapes differ)")
        if state_dict["dtype"] != str(params.dtype):
            raise ValueError(f"state_dict is for dtype {state_dict['dtype']}, these params are {params.dtype}")
        config = config_from_dict(self.config_type, state_dict["config"])
        kernel, state_names = self._select(config)
        groups = check_groups(params, [ParamGroup(**group) for group in state_dict["groups"]])
        step = state_dict["step"]
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"state_dict step must be an int >= 0, got {step!r}")
        buffers = state_dict["state"]
        if set(buffers) != set(state_names):
            raise ValueError(f"state_dict holds state {sorted(buffers)}, expected {sorted(state_names)}")
        for name in state_names:
            buffer = buffers[name]
            if (not isinstance(buffer, np.ndarray) or buffer.dtype != params.dtype
                    or buffer.shape != (params.size,)):
                raise ValueError(
                    f"state_dict state {name!r} must be a {params.dtype} array of shape "
                    f"({params.size},), got {getattr(buffer, 'dtype', type(buffer).__name__)} "
                    f"{getattr(buffer, 'shape', '')}"
                )
        return config, kernel, state_names, groups, int(step), buffers

    def load_state_dict(self, state_dict):
        """Restore :meth:`state_dict` output: config, groups, step count and state.

        The state dict must come from the same optimizer class, parameter layout and dtype;
        its config replaces this optimizer's, as in PyTorch. Everything is checked before
        anything changes.
        """
        config, kernel, state_names, groups, step, buffers = self._checked_state(state_dict, self._params)
        # Like PyTorch, the saved config wins, even where it needs other state buffers (a
        # momentum buffer, AMSGrad's maximum) than this optimizer was built with.
        self._state = {name: self._state[name] if name in self._state else self._zeros()
                       for name in state_names}
        for name in state_names:
            _device.copy_into(self._state[name], buffers[name])
        self._kernel = kernel
        self._config = config
        self._step_count = int(step)
        self._set_groups(groups)

    def __repr__(self):
        return f"{type(self).__name__}({self._config}, groups={len(self._groups)}, step={self._step_count})"

    # -- what a subclass supplies ----------------------------------------------------------------

    def _select(self, config):
        """Return ``(kernel, state_names)`` for ``config``."""
        raise NotImplementedError

    def _refresh(self):
        """Recompute per-group arrays and scalars after the config or the groups changed."""
        raise NotImplementedError

    def _prepare(self, step):
        """Fill what changes per step and return the kernel's scalar arguments."""
        raise NotImplementedError
