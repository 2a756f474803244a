"""What every optimizer shares: parameter groups, the chunk table, state, and state dicts."""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import ClassVar, NamedTuple

import numpy as np

from .. import checks as _checks
from .. import device as _device
from ..params import FlatParams
from . import storage as _storage

#: Version of the :meth:`Optimizer.state_dict` format.
STATE_FORMAT = 1
#: The largest step count a state dict may hold (a step is an int64 on every device).
MAX_STEP = 2**63 - 1
#: Masked chunk tables kept per plan (one per set of skipped parameters); past this, built anew.
MASKED_TABLES = 64


class _Plan(NamedTuple):
    """Everything a step or a penalty reads, built whole and published in one assignment, so
    that a step, a penalty or a state dict running while another thread changes the
    configuration sees the old plan or the new one, never parts of both."""

    rule: object
    buffers: tuple  # (param, state, grad, bounds, groups, table): the kernel's arguments
    shapes: tuple  # the shapes of param, state and grad when the plan was built
    sizes: tuple  # and their sizes (the O(1) check a step makes: 0.12 us for three, measured)
    launch: object
    penalty: object
    masked: dict  # skipped parameter names -> (bounds, groups), built when first asked for
    group_index: dict  # parameter name -> its group's row in the table (for masked tables)
    blocks: bool  # whether the work table is int8 state's quantization blocks
    takes_step: bool  # whether the launch takes the step number (int8 or bfloat16 state, bfloat16 params)


class Config:
    """Base of the optimizers' hyperparameter dataclasses (frozen, keyword-only): every field is
    validated when a config is built, by ``FIELD_CHECKS[name](name, value)`` (the error names
    both), and stored as checked (floats as Python floats, pairs as tuples)."""

    FIELD_CHECKS: ClassVar[dict] = {}

    def __post_init__(self):
        _checks.check_fields(self)

    @classmethod
    def check_field(cls, name, value):
        """``value`` for field ``name``, validated (the error names both)."""
        return cls.FIELD_CHECKS[name](name, value)


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
    missing = fields - set(data)
    if missing:  # a saved config is whole: a default standing in for a lost value would be silent
        raise ValueError(f"config lacks {sorted(missing)}, which {config_type.__name__} has")
    values = dict(data)
    if isinstance(values.get("betas"), list):
        values["betas"] = tuple(values["betas"])
    return config_type(**values)


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
    """Base class: validates once, picks one rule, and launches its kernel once per :meth:`step`.

    A subclass declares its config dataclass (with a ``check_field`` classmethod that validates
    one field) and the fields that select its rule, and implements :meth:`_rule_for` (the
    :class:`~fastopt.kernels.rule.Rule` a config runs), :meth:`_refresh` (the scalars that
    change only with the config) and :meth:`_scalars` (the rule's launch scalars at a step, in
    the order its spec gives, as Python floats). Everything else (state buffers, the group
    table, the kernel and its launch on either device, state dicts) follows from the spec.

    Hyperparameters live in a dict of plain values; :attr:`config` is built from it when read.
    A change to fields the kernel takes as scalars or per-group values (``lr``, ``betas``,
    ``momentum``, ``eps``, ``weight_decay``, ...) validates those values alone and updates what
    depends on them: no config rebuilt, no kernel selected again, nothing allocated or copied to a
    GPU (but a new weight decay, which copies the group table). A change that selects another
    rule goes through the config's full checks: over the same state (``nesterov``,
    ``decoupled_weight_decay``) it takes effect at the next step; where the state differs
    (``amsgrad``, ``centered``, momentum to or from 0) it is refused: build a new optimizer.

    State and parameters in fewer bytes: ``state_dtype`` keeps the state of the element-wise
    rules as block-wise ``"int8"`` or stochastically rounded ``"bfloat16"`` (over float32
    parameters); over bfloat16 parameters (``FlatParams(..., dtype="bfloat16")``) a step
    computes in float32 and writes each parameter back rounded stochastically, with the state
    in bfloat16 (the default), ``"float32"`` or ``"int8"``. ``state_seed`` keys every stochastic rounding
    (:mod:`fastopt.kernels.quantized`).

    Threads: :meth:`step` and :meth:`l2_penalty` may run while another thread changes the
    configuration (``load_state_dict``, groups, hyperparameters); each reads one published plan
    (rule, buffers, tables, launch) and sees the old configuration or the new one whole, never
    out of bounds. Scalar changes reach a running step one value at a time. ``state_dict`` and
    ``load_state_dict`` are not atomic with each other: call them from one thread. Two threads
    stepping one optimizer at once race on the parameters: not supported.
    """

    config_type: ClassVar[type]
    #: Config fields that select the rule (and with it the state): checked on the full path.
    _rule_fields: ClassVar[frozenset] = frozenset()
    #: Whether a step works on whole parameter tensors (LAMB's norms, Adafactor's factors, Muon's
    #: matrices), so that a shard must not cut one (ShardedOptimizer cuts at tensor boundaries).
    per_tensor: ClassVar[bool] = False

    def __init__(self, params, config, groups=(), device=None, state_dtype=None, state_seed=0):
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
            _checks.flat_buffer("params.data", params.data, bfloat16_ok=True)
            _checks.flat_buffer("params.grad", params.grad, bfloat16_ok=True)
        if params.grad.dtype != params.data.dtype or params.grad.size != params.data.size:
            raise ValueError(
                f"params.grad ({params.grad.dtype}, {params.grad.size}) must match the layout of "
                f"params.data ({params.data.dtype}, {params.data.size})"
            )
        self._params = params
        self._device = _device.for_device(params.device)
        self._dtype = _storage.compute_dtype(params).type
        self._rule = self._rule_for(config)
        kind = _storage.check_state_dtype(state_dtype, params, type(self), self._rule)
        self._storage = _storage.Storage(kind, self._rule, params, self._device, _storage.check_seed(state_seed))
        self._state = self._storage.buffer
        #: The parameters' and gradients' dtype as the kernels take them (bfloat16: uint16 bits).
        self._kernel_dtype = self._storage.kernel_view(params.data).dtype
        # Factored state (Adafactor): one more buffer, laid out per tensor.
        self._factor_layout = self._factors = None
        if self._rule.factored is not None:
            from ..kernels.factored import FactorLayout

            self._factor_layout = FactorLayout.of(params)
            self._factors = self._device.zeros(self._factor_layout.size, params.dtype)
        self._step_count = 0
        self._stream = 0
        self._adopt_config(config)
        self._set_groups(self._check_groups(groups))
        self._fill_initial_state(config)  # once the config passed every check

    # -- configuration -------------------------------------------------------------------------

    @property
    def params(self):
        return self._params

    @property
    def device(self):
        """``"cpu"`` or ``"cuda"``: where the parameters, gradients and state live."""
        return self._device.name

    @property
    def state_dtype(self):
        """How the state is stored: ``"int8"``, ``"bfloat16"`` or the parameters' dtype."""
        return self._storage.kind or str(self._params.dtype)

    @property
    def rule(self):
        """The :class:`~fastopt.kernels.rule.Rule` this optimizer runs (its config decides)."""
        return self._rule

    @property
    def config(self):
        """The hyperparameters, a frozen dataclass; assign a new one to change them."""
        # Built from the live values when read, not cached: a cache written back by a reader
        # could hide a change another thread made meanwhile (a dict copy is one step).
        config = object.__new__(self.config_type)
        config.__dict__.update(dict(self._hyper))
        return config

    @config.setter
    def config(self, config):
        if not isinstance(config, self.config_type):
            raise TypeError(f"config must be a {self.config_type.__name__}, got {type(config).__name__}")
        rule = self._rule_for(config)
        if rule is not self._rule:
            if rule.state != self._rule.state:
                raise ValueError(
                    f"{config} needs different state ({', '.join(rule.state) or 'none'}) than this "
                    f"optimizer was built with ({', '.join(self._rule.state) or 'none'}); build a new one"
                )
            # Another rule over the same state (decoupled decay, Nesterov): a new plan, whole,
            # once the config passed every check (nothing changes when it does not).
            self._adopt_config(config)
            self._rule = rule
            self._set_groups(self._groups)
            return
        self._adopt_config(config)
        self._refreshed()

    def _adopt_config(self, config):
        self._lr_limit = self._check_representable(config.__dict__, getattr(self, "_groups", ()))
        self._hyper = dict(config.__dict__)

    def set_hyperparameters(self, **changes):
        """Change some hyperparameters, validated, e.g. ``opt.set_hyperparameters(momentum=0.85)``.

        Nothing changes when a value is refused (the error names it)."""
        if changes.keys() & self._rule_fields or not changes.keys() <= self._hyper.keys():
            self.config = dataclasses.replace(self.config, **changes)  # the full path, with its errors
            return
        values = {name: self.config_type.check_field(name, value) for name, value in changes.items()}
        if not self._keeps_rule(values):
            self.config = dataclasses.replace(self.config, **changes)
            return
        self._apply_checked(values)

    def _apply_checked(self, values):
        """Take validated ``values`` that keep the rule: the fast path's one place of change."""
        limit = self._check_representable({**self._hyper, **values}, self._groups)
        self._hyper.update(values)
        self._lr_limit = limit
        if "weight_decay" in values:
            self._refresh_table()
        self._refresh()

    def _check_representable(self, hyper, groups):
        """Refuse values the kernels would round to inf, or (eps) to zero, in the buffers' dtype,
        naming the value and the dtype: the kernels take every hyperparameter in that dtype.
        Returns the largest learning rate these groups allow (the ``lr`` setter's bound); changes
        nothing."""
        dtype = _storage.compute_dtype(self._params)
        largest = float(np.finfo(dtype).max)
        factors = [1.0] + [g.lr_factor for g in groups]
        decays = [g.weight_decay for g in groups if g.weight_decay is not None]
        values = [(name, value) for name, value in hyper.items() if type(value) is float]
        values += [(f"betas[{k}]", beta) for k, beta in enumerate(hyper.get("betas", ()))]
        values += [(f"lr * lr_factor ({factor})", hyper["lr"] * factor) for factor in factors]
        values += [("a group's weight_decay", decay) for decay in decays]
        for name, value in values:
            if abs(value) > largest:
                raise ValueError(f"{name}={value!r} is beyond {dtype}'s range (largest {largest:.4g}); "
                                 f"the kernels compute in {dtype}")
        eps = hyper.get("eps")
        if isinstance(eps, tuple):  # Adafactor's (eps1, eps2): eps1 enters the kernels, eps2 a float64 max
            eps = eps[0]
        if eps is not None and dtype.type(eps) == 0:
            raise ValueError(f"eps={eps!r} rounds to 0 in {dtype} (smallest {np.finfo(dtype).smallest_subnormal:.3g}); "
                             "the kernels add it in that dtype, where 0 would divide by zero")
        return largest / max(factors)

    def set_momentum(self, value):
        """Set the momentum a schedule cycles: SGD's and RMSProp's ``momentum`` (Adam's ``beta1``),
        validated, on the fast path."""
        self.set_hyperparameters(momentum=value)

    def _keeps_rule(self, values):
        """Whether validated ``values`` keep this optimizer's rule and pass the config's checks
        across fields (a subclass's; the full path raises where they do not)."""
        return True

    @property
    def lr(self):
        """The base learning rate; group ``k`` uses ``lr * groups[k].lr_factor``."""
        return self._hyper["lr"]

    @lr.setter
    def lr(self, value):
        if type(value) is float and 0.0 <= value <= self._lr_limit:  # the common case, checked here
            self._hyper["lr"] = value  # the kernel takes lr as a scalar: nothing else changes
        else:
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
        """``{name: flat buffer}`` of the optimizer state (live views, not copies), in the order
        of the rule's spec. With ``state_dtype`` int8 or bfloat16: float32 copies, decoded."""
        plan = self._plan
        if plan.rule.factored is not None:
            return self._factor_layout.views(self._factors)
        if self._storage.active:
            return self._storage.values()
        return {name: plan.buffers[1][k] for k, name in enumerate(plan.rule.state)}

    def _check_groups(self, groups):
        return check_groups(self._params, groups)

    def _set_groups(self, groups):
        # Group 0 holds every parameter no ParamGroup names; group k + 1 is groups[k].
        limit = self._check_representable(self._hyper, groups)
        self._groups = groups
        index = {name: k + 1 for k, group in enumerate(groups) for name in group.params}
        group_index = {name: index.get(name, 0) for name in self._params}
        segments = [(*self._params.segment(name), group_index[name]) for name in self._params]
        # A rule with per-tensor passes (LAMB, Muon) gets tiles that start at each tensor, and the
        # tables that say which tiles make a tensor (and, for Muon, the matrices).
        per_tensor = self._rule.per_tensor
        bounds, chunk_group = self._device.work_table(segments, tensors=per_tensor, blocks=self._storage.tiles)
        self._tensors = self._device.tensor_table(segments) if per_tensor else None
        if self._rule.matrixwise is not None:
            from ..kernels.matrixwise import Matrices

            self._tensors = (*self._tensors, Matrices.of(self._params))
        if self._rule.factored is not None:
            self._tensors = (*self._tensors, self._factor_layout, self._factors)
        self._host_table = self._group_table()
        table = self._device.resident(self._host_table.copy())
        self._refresh()
        self._lr_limit = limit
        view = self._storage.kernel_view
        self._publish((view(self._params.data), self._state, view(self._params.grad), bounds, chunk_group, table),
                      group_index)

    def _publish(self, buffers, group_index=None):
        """Build the plan over ``buffers`` (the kernel's launch, specialised for their types on
        CUDA and configured for the stream in use, and the penalty) and make it the one every
        step reads."""
        group_index = self._plan.group_index if group_index is None else group_index
        # The scalars' types do not change between steps (nor with the config), only their values.
        if not self._storage.custom:
            launch = self._device.rule_step(self._rule, (*buffers, self._scalars(self._step_count + 1)), self._stream,
                                            self._tensors)
        else:
            launch = self._storage.launch(self._rule, buffers[0].size, buffers[4].size, self._stream, self._tensors)
        penalty = self._device.penalty(buffers[0], *buffers[3:6], self._rule.group.index("weight_decay"),
                                       bfloat16=self._storage.bfloat16_params)
        shapes = tuple(tuple(buffer.shape) for buffer in buffers[:3])
        sizes = tuple(buffer.size for buffer in buffers[:3])
        self._plan = _Plan(self._rule, buffers, shapes, sizes, launch, penalty, {}, group_index,
                           self._storage.tiles, self._storage.custom)

    def _group_table(self):
        """The float64 group table of the rule: one row per group, its spec's columns."""
        default = self._hyper["weight_decay"]
        columns = {
            "lr_factor": [1.0] + [g.lr_factor for g in self._groups],
            "weight_decay": [default] + [default if g.weight_decay is None else g.weight_decay
                                         for g in self._groups],
        }
        return np.array([columns[name] for name in self._rule.group], dtype=np.float64).T.copy()

    def _refreshed(self):
        self._refresh_table()
        self._refresh()

    def _refresh_table(self):
        # The group table changes with the weight decay, not with the learning rate (a scalar):
        # a new table, and a plan over it, so a step running now sees the old one or the new.
        table = self._group_table()
        if not np.array_equal(table, self._host_table):
            self._host_table = table
            self._publish((*self._plan.buffers[:5], self._device.resident(table.copy())))

    def _grad_sign(self):
        return -1.0 if self._hyper["maximize"] else 1.0

    # -- the step ------------------------------------------------------------------------------

    def step(self):
        """Update every parameter from :attr:`FlatParams.grad`: one kernel call (on CUDA
        buffers one asynchronous launch, with scalar arguments only).

        Checks first, in O(1), that the buffers still have the shapes the optimizer was built
        for (a buffer resized in place would be read out of bounds) and refuses otherwise,
        saying what changed; :attr:`step_count` advances only when the step ran."""
        step = self._step_count + 1
        self._run(self._plan, None, step)
        self._step_count = step

    def _run(self, plan, tables, step, scalars=None):
        buffers, sizes = plan.buffers, plan.sizes
        if buffers[0].size != sizes[0] or buffers[1].size != sizes[1] or buffers[2].size != sizes[2]:
            raise ValueError(self._layout_change(plan))
        if tables is not None:
            buffers = (*buffers[:3], *tables, buffers[5])
        try:
            if plan.takes_step:
                plan.launch(*buffers, self._scalars(step) if scalars is None else scalars, step)
            else:
                plan.launch(*buffers, self._scalars(step) if scalars is None else scalars)
        except Exception as error:  # a dtype, contiguity or writeability changed in place?
            change = self._layout_change(plan)
            if change:
                raise ValueError(change) from error
            raise

    def _layout_change(self, plan):
        """What no longer matches the buffers' layout the plan was built for, or ''."""
        names = ("params.data", "the optimizer state", "params.grad")
        dtypes = (self._kernel_dtype, self._storage.dtype, self._kernel_dtype)
        for name, buffer, shape, dtype in zip(names, plan.buffers[:3], plan.shapes, dtypes):
            if tuple(buffer.shape) != shape:
                return (f"{name} changed shape since the optimizer was built: {shape} -> {tuple(buffer.shape)}; "
                        "build the optimizer again over the new buffers")
            if buffer.dtype != dtype:
                return f"{name} changed dtype since the optimizer was built: {dtype} -> {buffer.dtype}"
            if isinstance(buffer, np.ndarray):
                if not buffer.flags.c_contiguous:
                    return f"{name} is no longer C-contiguous (strides {buffer.strides})"
                if not buffer.flags.writeable:
                    return f"{name} is no longer writeable"
        return ""

    def _step_at(self, step, skipped=frozenset(), scalars=None):
        """One step as step number ``step``, leaving the parameters named in ``skipped`` (and
        their state) alone; :attr:`step_count` does not change. For wrappers that keep a step
        count per parameter (``fastopt.torch``: torch skips a parameter whose gradient is None).
        ``scalars``: the launch scalars, where the caller made them (else :meth:`_scalars`)."""
        plan = self._plan
        tables = None
        if skipped:
            tables = plan.masked.get(skipped)
            if tables is None:
                if len(plan.masked) >= MASKED_TABLES:  # another set each step (mixtures of experts)
                    plan.masked.clear()
                tables = plan.masked[skipped] = self._device.work_table(
                    [(*self._params.segment(name), -1 if name in skipped else plan.group_index[name])
                     for name in self._params], tensors=plan.rule.per_tensor, blocks=plan.blocks)
        self._run(plan, tables, step, scalars)

    def _on_stream(self, stream):
        """Launch later steps on ``stream`` (a numba CUDA stream; 0: the legacy default), e.g.
        torch's current stream (``fastopt.torch`` follows it), until told otherwise: every plan
        published later (a new weight decay, new groups) keeps it. Only for CUDA buffers."""
        self._stream = stream
        self._publish(self._plan.buffers)

    def zero_grad(self):
        """Set every gradient to zero."""
        self._params.zero_grad()

    def l2_penalty(self):
        r"""The L2 penalty :math:`\sum_k \tfrac{\lambda_k}{2}\lVert\theta_k\rVert^2` as a float.

        :math:`\lambda_k` is each group's weight decay, so for SGD, Adam and RMSProp this is
        the penalty whose gradient the step adds. Add it to the mean loss for the batch cost.
        """
        plan = self._plan
        buffer = plan.buffers[0]
        if buffer.size != plan.sizes[0] or buffer.dtype != self._kernel_dtype:
            raise ValueError(self._layout_change(plan))
        return plan.penalty()

    # -- state dicts ---------------------------------------------------------------------------

    def state_dict(self):
        """Config, groups, step count and copies of the state buffers.

        Everything but ``state`` (numpy arrays) is plain JSON-compatible data. ``state_dtype``
        says how ``state`` is encoded: the parameters' dtype (one array per state buffer),
        ``"int8"`` (per buffer ``name``: uint8 codes, ``name.absmax``: float32 per block,
        ``name.map``: the 256 float32 values by code) or ``"bfloat16"`` (per buffer: uint16,
        the upper half of float32 bits), or ``"float32"`` (over bfloat16 parameters);
        ``state_seed`` keys the stochastic rounding of bfloat16 state and parameters.
        A state dict loads into an optimizer of any ``state_dtype``: its state is encoded as
        that optimizer keeps its own.
        """
        if self._storage.active:
            state = self._storage.saved()
        else:
            state = {name: _device.host_copy(buffer) for name, buffer in self.state.items()}
        return {
            "format": STATE_FORMAT,
            "optimizer": type(self).__name__,
            "config": dataclasses.asdict(self.config),
            "groups": [group.to_dict() for group in self._groups],
            "step": self._step_count,
            "layout": [[name, list(shape)] for name, shape in self._params.layout],
            "dtype": str(self._params.dtype),
            "state_dtype": self.state_dtype,
            "state_seed": self._storage.seed,
            "state": state,
        }

    def _checked_state(self, state_dict, params):
        """Check a :meth:`state_dict` against ``params`` (its layout and dtype) and this optimizer's
        class; return ``(config, rule, state_names, groups, step, buffers)``."""
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
        rule = self._rule_for(config)
        groups = check_groups(params, [ParamGroup(**group) for group in state_dict["groups"]])
        self._check_representable(config.__dict__, groups)
        step = state_dict["step"]
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step <= MAX_STEP:
            raise ValueError(f"state_dict step must be an int in [0, 2**63), got {step!r}")
        buffers = state_dict["state"]
        kind = _storage.saved_kind(state_dict.get("state_dtype", str(params.dtype)), params, rule)
        if rule.factored is not None:  # the sections of these params' layout (a whole buffer's, for a shard's)
            from ..kernels.factored import FactorLayout

            layout = self._factor_layout if params is self._params else FactorLayout.of(params)
            arrays = {name: (params.dtype, (size,)) for name, size in layout.sections.items()}
        else:
            arrays = _storage.saved_arrays(kind, rule.state, params)
        if not isinstance(buffers, Mapping) or set(buffers) != set(arrays):
            found = sorted(buffers) if isinstance(buffers, Mapping) else type(buffers).__name__
            raise ValueError(f"state_dict holds state {found}, expected {sorted(arrays)}")
        for name, (dtype, shape) in arrays.items():
            buffer = buffers[name]
            if not isinstance(buffer, np.ndarray) or buffer.dtype != dtype or buffer.shape != shape:
                raise ValueError(
                    f"state_dict state {name!r} must be a {dtype} array of shape {shape}, got "
                    f"{getattr(buffer, 'dtype', type(buffer).__name__)} {getattr(buffer, 'shape', '')}"
                )
        if kind == "int8":
            from ..kernels.quantized import row_codecs

            for name, (code_map, *_) in zip(rule.state, row_codecs(rule.state)):
                if not np.array_equal(buffers[name + ".map"], code_map):
                    raise ValueError(f"state_dict state {name + '.map'!r} is not the int8 map this version decodes "
                                     "with; its codes cannot be read")
                if np.any(buffers[name + ".absmax"] < 0):
                    raise ValueError(f"state_dict state {name + '.absmax'!r} holds negative values; an absmax is "
                                     "a block's largest magnitude (>= 0, or NaN)")
        _storage.check_seed(state_dict.get("state_seed", 0))
        sections = tuple(arrays) if rule.factored is not None else rule.state
        return config, rule, sections, groups, int(step), buffers, kind

    def load_state_dict(self, state_dict):
        """Restore :meth:`state_dict` output: config, groups, step count and state.

        The state dict must come from the same optimizer class, parameter layout and dtype;
        its config replaces this optimizer's, as in PyTorch. Everything is checked before
        anything changes.
        """
        config, rule, state_names, groups, step, buffers, kind = self._checked_state(state_dict, self._params)
        # Like PyTorch, the saved config wins, even where it needs other state buffers (a
        # momentum buffer, AMSGrad's maximum) than this optimizer was built with. (A step in
        # another thread meanwhile runs the old plan or the new one, whole; the state values
        # are copied in place where the state buffers stay the same.) The saved state is
        # encoded as this optimizer keeps its own (state_dtype), whatever the saved encoding.
        # A bfloat16 state continues with its own stochastic rounding; other state keeps this seed.
        # (bfloat16 parameters: the saved seed, which rounded them, whatever the state's encoding)
        adopt = kind == "bfloat16" or self._storage.bfloat16_params
        seed = int(state_dict.get("state_seed", 0)) if adopt else self._storage.seed
        if rule.state != self._rule.state:
            offset = self._storage.offset
            self._storage = _storage.Storage(self._storage.kind, rule, self._params, self._device, seed)
            self._storage.offset = offset
            self._state = self._storage.buffer
        self._storage.seed = seed
        if rule.factored is not None:
            views = self._factor_layout.views(self._factors)
            for name in state_names:
                _device.copy_into(views[name], buffers[name])
        else:
            self._storage.load(kind, buffers, rule.state)
        self._rule = rule
        self._adopt_config(config)
        self._step_count = int(step)
        self._set_groups(groups)

    def _offset_state(self, offset):
        """Make element 0 of these parameters element ``offset`` of a whole buffer for the
        stochastic rounding of bfloat16 state (a ZeRO shard's start), so that a shard rounds as
        one process over the whole buffer does."""
        self._storage.offset = int(offset)
        self._publish(self._plan.buffers)

    def __repr__(self):
        return f"{type(self).__name__}({self.config}, groups={len(self._groups)}, step={self._step_count})"

    # -- what a subclass supplies ----------------------------------------------------------------

    def _rule_for(self, config):
        """The :class:`~fastopt.kernels.rule.Rule` that ``config`` runs."""
        raise NotImplementedError

    def _fill_initial_state(self, config):
        """Give the state buffers (zeros) their values before the first step, where a rule's
        start is not zero (Adagrad's ``initial_accumulator_value``)."""

    def _refresh(self):
        """Recompute the scalars that change only with the hyperparameters (from ``_hyper``)."""
        raise NotImplementedError

    def _scalars(self, step):
        """The rule's launch scalars for step ``step``, in its spec's order, as Python floats."""
        raise NotImplementedError
