"""PyTorch drop-in: torch.optim's classes, stepped by fastopt's kernels over one flat buffer.

>>> import torch
>>> import fastopt.torch
>>> model = torch.nn.Linear(4, 2)
>>> optimizer = fastopt.torch.AdamW(model.parameters(), lr=1e-3)
>>> model(torch.ones(3, 4)).sum().backward()
>>> optimizer.step()
>>> optimizer.zero_grad()

:class:`SGD`, :class:`Adam`, :class:`AdamW`, :class:`RMSprop`, :class:`Adagrad`,
:class:`Adamax`, :class:`NAdam`, :class:`RAdam`, :class:`Adafactor` and :class:`Muon` have torch.optim's names, signatures, defaults and update
rules (and :class:`Lion` and :class:`LAMB`, which torch lacks, the papers'), and are :class:`torch.optim.Optimizer` subclasses, so
``torch.optim.lr_scheduler``, ``torch.amp.GradScaler``, ``clip_grad_norm_`` and training
frameworks take them. What differs is where the parameters live:

* On construction the parameters of each (dtype, device) are copied into one contiguous buffer
  and become views of it (``p.data`` is swapped in place, so modules and every reference to
  the parameters keep working); gradients get a flat buffer the same way once they exist. A
  step is then one kernel call per parameter group and (dtype, device), whatever the number of
  tensors: the CPU kernels for CPU tensors, the CUDA kernels (zero-copy, through
  ``__cuda_array_interface__``) for CUDA tensors.
* ``param_groups`` is torch's: a scheduler writing ``param_groups[i]["lr"]`` (or ``betas``,
  ``momentum``) takes effect at the next ``step()``, which only compares the values it reads.
* torch's semantics: a parameter whose ``.grad`` is None at ``step()`` is skipped (no decay,
  no state change, no step count), as is a frozen one (``requires_grad=False``), and each
  parameter keeps its own step count. ``zero_grad()`` (``set_to_none=True``, torch's default)
  zeroes the flat gradient buffer and keeps it attached; a parameter then counts as having a
  gradient again once backward reaches it (a post-accumulate-grad hook) or ``.grad`` is
  assigned. ``model.zero_grad()`` (which sets gradients to None) works too: the fresh
  gradients are copied into the flat buffer at the next step.
* ``state_dict()``/``load_state_dict()`` in torch.optim's format: a state dict of
  ``torch.optim.AdamW`` loads into ``fastopt.torch.AdamW`` and the reverse (but for int8
  state, whose codes torch.optim would take for values: load it into a fastopt.torch optimizer
  without ``state_dtype`` first, which decodes it).
* float32 and float64 parameters, and bfloat16 ones on the CPU: a step widens them to float32,
  runs the float32 rule and writes each new value back rounded stochastically (Philox, keyed by
  ``state_seed``), and the state is bfloat16 as torch's is, rounded stochastically too: torch's
  state tensors, live. The element-wise classes take ``state_dtype="bfloat16"`` over float32
  CPU parameters as well (4 bytes of Adam state a parameter; ``state[p]["exp_avg"]`` is then a
  live torch.bfloat16 view), or ``state_dtype="int8"`` (2.004 bytes: ``state[p]["exp_avg"]``
  the live uint8 codes in ``p``'s shape, ``"exp_avg.absmax"`` the float32 absmax of ``p``'s
  own blocks, ``"exp_avg.map"`` the values by code; state dicts quantized or decoded on load
  across encodings). float16 parameters, and bfloat16 parameters or encoded state on the GPU,
  are refused at construction.
* A model changed after construction so that its parameters are no longer views of the flat
  buffer (``model.float()``, ``model.to(other device)``) is detected at the next ``step()``:
  build the optimizer again.

The CUDA stream rule: a step launches on torch's current stream of the parameters' device.

Where fastopt differs from torch.optim's numerics: ``eps`` must be > 0 (Adafactor's ``eps1``
too, or None; Adafactor's ``d`` finite), RMSprop's ``alpha``
and SGD's ``dampening`` must lie in [0, 1] (torch allows more), and multiply-adds are fused in
fixed places, so float32 results can differ from torch's in the last bits (float64 agrees to
1e-10 relative over 60 steps, tested).
"""

from collections import defaultdict

import numpy as np
import torch
from torch.optim import optimizer as _torch_optimizer

from .. import checks as _checks
from .. import optim as _core
from ..optim import storage as _core_storage
from ..optim.muon import NS_COEFFICIENTS, NS_STEPS
from ..params import FlatParams

__all__ = ["LAMB", "SGD", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "Lion", "Muon", "NAdam", "RAdam", "RMSprop"]

_FLOAT_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.bfloat16: "bfloat16"}


class _Slice:
    """The parameters of one torch group in one (dtype, device) buffer: a contiguous segment,
    stepped by one fastopt optimizer (``core``)."""

    def __init__(self, group_index, entries, core, synced, device, start):
        self.group_index, self.entries, self.core, self.synced = group_index, entries, core, synced
        #: The slice's first element in its buffer: where its Philox counters start.
        self.start = start
        self.names = tuple(f"p{entry.index}" for entry in entries)
        self.device = device if device.type == "cuda" else None
        self.stream = 0  # the CUDA stream its launches are configured for (0: the legacy default)


class _Entry:
    """One parameter: its views of the flat buffers and state, and its step count."""

    __slots__ = ("index", "param", "data", "grad", "data_ptr", "state", "steps", "carried", "carried_dtype",
                 "initial", "fresh", "hooked")

    def __init__(self, index, param, data, grad, state, carried):
        self.index, self.param, self.data, self.grad, self.state = index, param, data, grad, state
        self.data_ptr = data.data_ptr()
        self.steps = 0
        self.carried = carried
        #: The torch dtype of the carried scalars' tensors (torch's scalar dtype when it creates
        #: them, the parameter's after a state dict is loaded); None before either.
        self.carried_dtype = None
        #: Whether torch lists state for the parameter before its first step (Adagrad's, for the
        #: parameters given at construction).
        self.initial = False
        self.fresh = False
        self.hooked = False


class _FlatOptimizer(torch.optim.Optimizer):
    """What the classes share; see the module docstring."""

    #: The fastopt optimizer a group runs, and the group keys it takes, in torch's names.
    _core_class = None
    _keys = ()
    #: The group keys a step compares with their last values (the fastopt options and any that
    #: choose the fastopt class).
    _sync_keys = ()
    #: Group keys of fastopt's own, which torch's class lacks (Muon's ``ns_dtype``): a group
    #: loaded from a state dict without them keeps its values.
    _own_keys = ()
    #: Whether torch keeps a "step" in each parameter's state.
    _has_step = True
    #: Whether torch gives every parameter its state at construction (Adagrad), not at its first step.
    _eager_state = False
    #: Scalars torch keeps per parameter beside ``"step"`` (NAdam's ``"mu_product"``), with their
    #: values before the first step: the fastopt optimizer carries them as attributes ``_<name>``,
    #: set from a parameter's values before its step and read back after.
    _carried = {}

    def __init__(self, params, defaults, state_dtype=None, state_seed=0):
        self._built = False
        self._hooks = []
        _check_flags(defaults)
        if state_dtype is not None and not (isinstance(state_dtype, str) and state_dtype in ("bfloat16", "int8")):
            raise ValueError(f"state_dtype must be None, 'bfloat16' or 'int8' in fastopt.torch, got "
                             f"state_dtype={state_dtype!r}")
        #: The state's encoding (None: the parameters' dtype, bfloat16 for bfloat16 parameters,
        #: as torch keeps it) and the seed of its stochastic rounding: every group's core takes them.
        self._state_dtype, self._state_seed = state_dtype, _core_storage.check_seed(state_seed)
        super().__init__(params, defaults)
        self._build()

    # -- construction --------------------------------------------------------------------------

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:  # refuses bad values now, naming them, and leaves the groups as they were
            _check_flags(group)
            self._core_options(group)
            if self._built:
                self._build()  # checks every parameter before it changes anything
        except Exception:
            self.param_groups.pop()
            raise

    def _core_class_for(self, group):
        """The fastopt optimizer class a group runs."""
        return self._core_class

    def _initial_value(self, name):
        """The value torch starts state ``name`` at: zero (but Adagrad's sum)."""
        return 0.0

    def _core_options(self, group):
        """The fastopt config of a group, validated by fastopt (torch's checks ran first)."""
        options = {key: _plain(key, group[key]) for key in self._keys}
        self._core_class_for(group).config_type(**options)
        return options

    def _build(self):
        """Lay every parameter out in flat buffers, one per (dtype, device), group by group, and
        build a fastopt optimizer per group and buffer. Values and state carry over, so this
        also serves add_param_group and load_state_dict."""
        indexed = [(k, group_index, p) for k, (group_index, p) in
                   enumerate((g, p) for g, group in enumerate(self.param_groups) for p in group["params"])]
        seen = {}
        for index, group_index, p in indexed:
            _check_parameter(index, p)
            self._check_fits(index, p, self._core_class_for(self.param_groups[group_index]))
            if id(p) in seen:  # torch only warns; one flat buffer cannot hold a tensor twice
                raise ValueError(f"params[{index}] is params[{seen[id(p)]}] again: give each parameter once")
            seen[id(p)] = index
        for handle in self._hooks:  # every check passed: nothing changed before this
            handle.remove()
        self._hooks = []
        previous = {id(e.param): e for e in getattr(self, "_entries", [])}
        buffers = {}
        for index, group_index, p in indexed:
            buffers.setdefault((p.dtype, p.device), []).append((index, group_index, p))
        self._slices, self._entries, self._grad_buffers = [], [], []
        for (dtype, device), members in buffers.items():
            self._build_buffer(dtype, device, members, previous)
        self._entries.sort(key=lambda entry: entry.index)
        live = _LiveState({id(entry.param): entry for entry in self._entries})
        live.update(self.state)
        self.state = self._live = live
        if self._eager_state:
            for entry in self._entries:
                self._publish(entry)
        # What step() compares to see a group's params list edited or the state reset by the user.
        self._group_params = [(group["params"], len(group["params"])) for group in self.param_groups]
        self._built = True

    def _build_buffer(self, dtype, device, members, previous):
        total = sum(p.numel() for _, _, p in members)
        data = torch.empty(total, dtype=dtype, device=device)
        grad = torch.zeros(total, dtype=dtype, device=device)
        if device.type == "cpu" and any(p.is_shared() for _, _, p in members):
            data.share_memory_()  # parameters shared between processes (Hogwild) stay shared
            grad.share_memory_()
        self._grad_buffers.append(grad)
        offsets, offset = [], 0
        with torch.no_grad():
            for _, _, p in members:
                data[offset:offset + p.numel()].copy_(p.detach().reshape(-1))
                offsets.append(offset)
                offset += p.numel()
        by_group = {}
        for (index, group_index, p), start in zip(members, offsets):
            by_group.setdefault(group_index, []).append((index, p, start))
        for group_index, params in by_group.items():
            start, stop = params[0][2], params[-1][2] + params[-1][1].numel()
            shapes = {f"p{index}": tuple(p.shape) for index, p, _ in params}
            flat = FlatParams.wrap(_host_or_device(data[start:stop]), _host_or_device(grad[start:stop]), shapes)
            group = self.param_groups[group_index]
            cls = self._core_class_for(group)
            core = cls(flat, **self._core_options(group), **self._state_options(dtype, cls))
            if core._storage.custom:  # Philox counts from the start of the buffer, as one core over it would
                core._offset_state(start)
            views_of = _state_views(core, device)
            entries = []
            for position, (index, p, offset) in enumerate(params):
                views = views_of(position, offset - start, p)
                entry = _Entry(index, p, data[offset:offset + p.numel()].view(p.shape),
                               grad[offset:offset + p.numel()].view(p.shape), views, dict(self._carried))
                self._adopt(entry, previous.get(id(p)))
                entries.append(entry)
            synced = {k: group.get(k) for k in self._sync_keys}
            self._slices.append(_Slice(group_index, entries, core, synced, device, start))
            self._entries.extend(entries)

    def _check_fits(self, index, p, cls):
        """Refuse, before anything changes, a parameter the group's core would refuse: bfloat16
        for the rules on whole tensors, and, with ``state_dtype="bfloat16"``, other than float32
        or bfloat16 or on the GPU."""
        if p.dtype == torch.bfloat16 and cls.per_tensor:
            raise ValueError(f"params[{index}] is bfloat16; {cls.__name__} works on whole tensors and does not take "
                             "bfloat16 parameters")
        if self._state_dtype is not None:
            if p.dtype not in (torch.float32, torch.bfloat16):
                raise ValueError(f"params[{index}] has dtype {p.dtype}; state_dtype={self._state_dtype!r} takes "
                                 "float32 and bfloat16 parameters")
            if p.device.type != "cpu":
                raise ValueError(f"params[{index}] is on {p.device}; state_dtype={self._state_dtype!r} is for CPU "
                                 "parameters in fastopt.torch for now")

    def _keeps_step(self, entry):
        """Whether a parameter's state carries its step count where torch's class keeps none
        (SGD): when its step rounds stochastically, whose bits the step number picks, so that
        a resumed run continues with the bits it would have had (int8 state rounds to nearest)."""
        return entry.data.dtype == torch.bfloat16 or self._state_dtype == "bfloat16"

    def _state_options(self, dtype, cls):
        """The state keywords of a group's core (of class ``cls``) over parameters of torch
        ``dtype``: for the rules on whole tensors, which refuse bfloat16 parameters, only LAMB's
        encoded state."""
        if cls.per_tensor:  # LAMB's int8 or bfloat16 (the others take no state_dtype)
            return {} if self._state_dtype is None else {"state_dtype": self._state_dtype,
                                                         "state_seed": self._state_seed}
        if self._state_dtype is None and dtype != torch.bfloat16:
            return {}
        return {"state_dtype": self._state_dtype or "bfloat16", "state_seed": self._state_seed}

    def _adopt(self, entry, previous):
        """Make ``entry.param`` a view of the flat buffer, carry its gradient and state over,
        and watch its gradient."""
        p = entry.param
        with torch.no_grad():
            p.data = entry.data
            old_grad = p.grad
            if old_grad is not None and old_grad is not (previous.grad if previous else None):
                entry.grad.copy_(old_grad)
                entry.fresh = True
            elif previous is not None and old_grad is not None:
                entry.grad.copy_(previous.grad)
                entry.fresh = previous.fresh
            if not p.requires_grad:
                entry.fresh = False
            if old_grad is not None and p.requires_grad:
                p.grad = entry.grad  # a frozen parameter keeps its own: backward must be seen when it thaws
            saved = self.state.get(p, {})
            _load_state(entry.state, saved, entry.index)
            entry.steps = _saved_steps(saved, self._has_step)
            self._adopt_carried(entry, saved)
            # torch gives state at construction (Adagrad) to the parameters it is built with
            entry.initial = self._eager_state and (not self._built or (previous is not None and previous.initial)
                                                   or bool(saved))
        self._publish(entry)
        self._watch(entry)

    def _watch(self, entry):
        """Mark the parameter's gradient fresh whenever backward accumulates into it (a frozen
        parameter is watched once it requires a gradient)."""
        if entry.param.requires_grad and not entry.hooked:
            self._hooks.append(entry.param.register_post_accumulate_grad_hook(
                lambda _, entry=entry: _mark_fresh(entry)))
            entry.hooked = True

    def _adopt_carried(self, entry, saved):
        """Take the carried scalars (NAdam's ``mu_product``) from a parameter's saved state,
        and their dtype (torch casts them to the parameter's when it loads a state dict)."""
        for name in self._carried:
            value = saved.get(name)
            if value is not None:
                entry.carried[name] = _carried_value(name, value)
                if torch.is_tensor(value):
                    entry.carried_dtype = value.dtype

    def _publish(self, entry):
        """Put a parameter's torch-format state in ``self.state``: views of the flat state
        (live) and its step count; none before its first step (but Adagrad's), as torch."""
        if entry.steps == 0 and not entry.initial:
            dict.pop(self.state, entry.param, None)
            return
        state = dict(entry.state)
        for name in entry.state:
            if name.endswith(ABSMAX):  # int8: the map beside the codes and absmax, as fastopt's state dicts
                state[name[:-len(ABSMAX)] + MAP] = torch.from_numpy(_code_map(name[:-len(ABSMAX)]).copy())
        if self._has_step or self._keeps_step(entry):
            state["step"] = torch.tensor(float(entry.steps), dtype=_scalar_dtype())
        for name, value in entry.carried.items():
            state[name] = torch.tensor(value, dtype=entry.carried_dtype or _scalar_dtype())
        dict.__setitem__(self.state, entry.param, state)

    # -- the step ------------------------------------------------------------------------------

    def step(self, closure=None):
        """One step of every parameter that has a gradient (one kernel call per parameter group
        and buffer in the usual case), after ``closure`` if given (torch's semantics).

        Step hooks (``register_step_pre_hook`` and the global ones) run as in torch; without
        any, the step skips torch's hook and profiler wrapper (6-8 µs a step, measured)."""
        if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or _torch_optimizer._global_optimizer_pre_hooks or _torch_optimizer._global_optimizer_post_hooks):
            return _hooked_step(self, closure)
        return self._step(closure)

    step.hooked = True  # torch.optim.Optimizer wraps a step that is not marked so

    def _step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._follow_edits()
        if self.state is not self._live or len(self.state) != self._live.stepped():
            self._reconcile_state()
        for piece in self._slices:
            self._step_slice(piece)
        return loss

    def _follow_edits(self):
        """A group's params list edited in place (a parameter appended, say): lay the
        parameters out again, so that the step and zero_grad see what torch's would."""
        if len(self.param_groups) != len(self._group_params) or any(
                group["params"] is not known or len(known) != count
                for group, (known, count) in zip(self.param_groups, self._group_params)):
            self._build()

    def _reconcile_state(self):
        """The user reset or replaced ``optimizer.state`` (``state.clear()``, ``del state[p]``, a
        new dict): a parameter without state starts afresh (zero moments, step 0), as in torch;
        tensors put in its place are copied into the flat state."""
        given = self.state
        for entry in self._entries:  # undecodable int8 state is refused before anything changes
            saved = given.get(entry.param) if entry.param in given else None
            for name, value in (saved.items() if isinstance(saved, dict) else ()):
                _check_int8_state(entry.index, name, value, saved, source="optimizer.state")
        for entry in self._entries:
            saved = given.get(entry.param) if entry.param in given else None
            with torch.no_grad():
                if not saved:  # torch creates it afresh at the parameter's next step
                    _load_state(entry.state, {name: torch.full(view.shape, self._initial_value(name), dtype=torch.float64)
                                              for name, view in entry.state.items() if not name.endswith(ABSMAX)},
                                entry.index)
                    entry.steps = 0
                    entry.carried, entry.carried_dtype, entry.initial = dict(self._carried), None, False
                else:
                    _load_state(entry.state, saved, entry.index)
                    self._adopt_carried(entry, saved)
        live = _LiveState({id(entry.param): entry for entry in self._entries})
        self.state = self._live = live
        for entry in self._entries:
            self._publish(entry)

    def _step_slice(self, piece):
        group = self.param_groups[piece.group_index]
        self._sync(piece, group)
        stepping, steps = [], set()
        for entry in piece.entries:
            p = entry.param
            if p.data_ptr() != entry.data_ptr:
                raise RuntimeError(
                    f"parameter {entry.index} is no longer a view of the optimizer's flat buffer (was the "
                    "model converted or moved, e.g. model.float() or model.to(...), after the optimizer was "
                    "built?): build the optimizer again over the model's parameters")
            g = p.grad
            if g is None:
                continue
            if g is not entry.grad:  # a fresh gradient (model.zero_grad() set it to None, or assigned)
                if g.shape != p.shape:
                    raise RuntimeError(f"parameter {entry.index}'s gradient has shape {tuple(g.shape)}, "
                                       f"the parameter {tuple(p.shape)}")
                entry.grad.copy_(g)
                p.grad = entry.grad
                entry.fresh = True
                self._watch(entry)
            elif not entry.fresh:
                continue
            stepping.append(entry)
            steps.add(self._cohort_key(entry) if self._carried else entry.steps)
        if not stepping:
            return
        if piece.device is not None:
            self._follow_stream(piece)
        if len(stepping) == len(piece.entries) and len(steps) == 1:  # the usual case: one call
            self._step_cohort(piece, stepping, frozenset())
        else:  # some skip this step, or step counts differ: one call per step count
            for key in sorted(steps):
                cohort = [e for e in stepping if (self._cohort_key(e) if self._carried else e.steps) == key]
                names = {f"p{e.index}" for e in cohort}
                self._step_cohort(piece, cohort, frozenset(n for n in piece.names if n not in names))
        for entry in stepping:
            entry.steps += 1
            if entry.steps == 1:
                self._publish(entry)

    @staticmethod
    def _cohort_key(entry):
        return entry.steps, str(entry.carried_dtype), *entry.carried.values()

    def _step_cohort(self, piece, cohort, skipped):
        """One kernel call for parameters that share a step count (and carried scalars)."""
        core, first = piece.core, cohort[0]
        if not self._carried:
            core._step_at(first.steps + 1, skipped)
            return
        dtype = first.carried_dtype or _scalar_dtype()  # torch creates them at the first step
        self._round_carried(core, dtype)
        for name, value in first.carried.items():
            setattr(core, "_" + name, value)
        core._step_at(first.steps + 1, skipped)
        for entry in cohort:
            entry.carried = {name: getattr(core, "_" + name) for name in self._carried}
            entry.carried_dtype = dtype

    def _round_carried(self, core, dtype):
        """Make ``core`` round its carried scalars as torch rounds tensors of ``dtype``."""

    @staticmethod
    def _follow_stream(piece):
        """Launch on torch's current stream of the slice's device (configured when it changes)."""
        pointer = torch.cuda.current_stream(piece.device).cuda_stream
        if pointer != piece.stream:
            from numba import cuda

            piece.core._on_stream(cuda.external_stream(pointer) if pointer else 0)
            piece.stream = pointer

    def _sync(self, piece, group):
        """Give the group's fastopt optimizer the values a scheduler or the user set in the
        group's dict since the last step (only the changed ones, on its fast path)."""
        synced = piece.synced
        changes = {}
        for key in self._keys:
            value = group[key]
            if synced.get(key, _MISSING) != value:
                changes[key] = value
        if not changes:
            return
        core = piece.core
        if changes.keys() == {"lr"}:
            core.lr = _float("lr", changes["lr"])
        else:
            options = self._core_options(group)  # validated whole
            cls = self._core_class_for(group)
            if cls is not type(core) or core._rule_for(cls.config_type(**options)) is not core.rule:
                self._replace_core(piece, cls, options)  # torch's schedulers move momentum off 0
            else:
                core.set_hyperparameters(**{key: value for key, value in options.items() if key in changes})
        synced.update(changes)

    def _replace_core(self, piece, cls, options):
        """A group whose options now select another rule (momentum from 0, amsgrad, centered,
        nesterov, decoupled decay): a new fastopt optimizer over the same buffers, its state
        carried over by name and new state zero, as torch creates it. A new momentum buffer
        starts as torch's does, from the next gradient (the step count restarts for SGD)."""
        old = piece.core
        dtype = piece.entries[0].data.dtype if piece.entries else torch.float32
        core = cls(old.params, **options, **self._state_options(dtype, cls))
        if core._storage.custom:
            core._offset_state(piece.start)
        new_buffer = False
        old_rows = _state_rows(old)
        for name, rows in _state_rows(core).items():
            if name in old_rows:
                _device_copy(rows, old_rows[name])
            else:
                new_buffer = True
        piece.core = core
        device = piece.entries[0].data.device if piece.entries else torch.device("cpu")
        views_of = _state_views(core, device)
        offset = 0
        for position, entry in enumerate(piece.entries):
            n = entry.param.numel()
            entry.state = views_of(position, offset, entry.param)
            offset += n
            if new_buffer and not self._has_step:
                entry.steps = 0
            self._publish(entry)
        piece.stream = 0 if piece.device is not None else piece.stream

    def zero_grad(self, set_to_none=True):
        """Zero the flat gradient buffers, which stay attached. With ``set_to_none`` (torch's
        default) a parameter counts as having no gradient until backward reaches it again, as
        torch's None does; without it, every parameter that had a gradient keeps one (zero)."""
        self._follow_edits()
        for entry in self._entries:
            grad = entry.param.grad
            if grad is not None and grad is not entry.grad:
                entry.param.grad = None if set_to_none else grad.zero_()
            if set_to_none:
                entry.fresh = False
        for grad in self._grad_buffers:  # on torch's current stream, like the rest of torch's work
            grad.zero_()

    # -- state dicts ---------------------------------------------------------------------------

    def state_dict(self):
        self._follow_edits()
        if self.state is not self._live or len(self.state) != self._live.stepped():
            self._reconcile_state()  # a reset since the last step shows as torch's would
        for entry in self._entries:
            self._publish(entry)
        return super().state_dict()

    def load_state_dict(self, state_dict):
        """torch.optim's format, e.g. from ``torch.optim.AdamW``; torch checks it, then the
        values are copied into the flat buffers (the groups' hyperparameters too)."""
        self._check_loadable(state_dict)
        kept = [{key: group[key] for key in self._own_keys if key in group} for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, own in zip(self.param_groups, kept):  # a state dict of torch's class lacks them
            for key, value in own.items():
                group.setdefault(key, value)
        for _, p, saved in _saved_by_param(state_dict, self.param_groups):
            # torch casts all state to a float parameter's dtype: int8 codes, absmax and map stay as saved
            for key, value in saved.items():
                if p in self.state and torch.is_tensor(value) and (value.dtype == torch.uint8 or (
                        isinstance(key, str) and key.endswith((ABSMAX, MAP)))):
                    self.state[p][key] = value
        self._build()

    def _check_loadable(self, state_dict):
        """What fastopt would refuse in ``state_dict`` (a group's hyperparameters, a carried
        scalar), refused before torch's load changes anything."""
        if not isinstance(state_dict, dict):
            return  # torch says what is wrong
        for group, saved in zip(self.param_groups, state_dict.get("param_groups", ())):
            if isinstance(saved, dict):
                merged = {**group, **{k: v for k, v in saved.items() if k != "params"}}
                _check_flags(merged)
                self._core_options(merged)
        states = state_dict.get("state", {})
        if not isinstance(states, dict):
            return
        for saved in states.values():
            for name in self._carried:
                if isinstance(saved, dict) and saved.get(name) is not None:
                    _carried_value(name, saved[name])
        # torch maps the saved parameters to these by position: each saved state tensor must
        # have its parameter's shape (the flat state takes it as a view of that shape)
        for index, p, saved in _saved_by_param(state_dict, self.param_groups):
            for name, value in saved.items():
                expected = self._state_shape(name, p)
                if torch.is_tensor(value) and value.dim() > 0 and tuple(value.shape) != expected:
                    raise ValueError(f"state_dict state {name!r} of parameter {index} has shape "
                                     f"{tuple(value.shape)}, expected {expected} for the parameter's "
                                     f"{tuple(p.shape)}")
                _check_int8_state(index, name, value, saved)

    @staticmethod
    def _state_shape(name, p):
        """The shape torch gives state ``name`` of parameter ``p``: the parameter's (an int8
        row's absmax: one per block; its map: 256 values)."""
        if isinstance(name, str) and name.endswith(ABSMAX):
            return (_block_count(p.numel()),)
        if isinstance(name, str) and name.endswith(MAP):
            return (256,)
        return tuple(p.shape)

    def __getstate__(self):
        raise TypeError("a fastopt.torch optimizer cannot be pickled; save optimizer.state_dict() instead")


_MISSING = object()


def _saved_by_param(state_dict, param_groups):
    """``(index, p, saved state)`` of each parameter that ``state_dict`` holds state for,
    paired by position as torch's load pairs them (``index``: the parameter's position)."""
    states = state_dict.get("state", {}) if isinstance(state_dict, dict) else {}
    if not isinstance(states, dict):
        return []
    saved_ids = [i for group in state_dict.get("param_groups", ()) if isinstance(group, dict)
                 for i in group.get("params", ())]
    params = [p for group in param_groups for p in group["params"]]
    return [(index, p, states[i]) for index, (i, p) in enumerate(zip(saved_ids, params))
            if isinstance(states.get(i), dict)]


def _check_int8_state(index, name, value, saved, source="state_dict state"):
    """Refuse int8 state that could not be decoded as fastopt encodes it: codes (uint8) without
    their absmax, an absmax or map without codes, or a map other than fastopt's for the row
    (the message names ``source``, the parameter ``index`` and the state ``name``)."""
    if not isinstance(name, str) or not torch.is_tensor(value):
        return
    where = f"{source} {name!r} of parameter {index}"
    if value.dtype == torch.uint8:
        absmax = saved.get(name + ABSMAX)
        if not torch.is_tensor(absmax) or not absmax.is_floating_point():
            raise ValueError(f"{where} holds int8 codes (uint8) but no float {name + ABSMAX!r} beside them")
        return
    for suffix in (ABSMAX, MAP):
        if name.endswith(suffix):
            row = name[:-len(suffix)]
            codes = saved.get(row)
            if not torch.is_tensor(codes) or codes.dtype != torch.uint8:
                raise ValueError(f"{where} belongs to int8 codes, but state {row!r} is not uint8 codes")
            if suffix == MAP and not np.array_equal(value.detach().cpu().to(torch.float32).numpy(), _code_map(row)):
                raise ValueError(f"{where} is not fastopt's int8 map of {row!r} (another quantizer's layout?): "
                                 "its codes cannot be decoded")


class _LiveState(defaultdict):
    """``optimizer.state``: a parameter's ``"step"`` read through ``state[p]`` (or ``.get``) is
    its live step count (the step tensors are not updated at every step: that would cost a
    tensor operation per parameter and step)."""

    def __init__(self, entries):
        super().__init__(dict)
        self._entries = entries

    def stepped(self):
        """How many parameters have state (those stepped, and Adagrad's from construction)."""
        return sum(1 for entry in self._entries.values() if entry.steps > 0 or entry.initial)

    def __getitem__(self, param):
        state = super().__getitem__(param)
        entry = self._entries.get(id(param))
        if entry is not None and "step" in state:
            state["step"].fill_(entry.steps)
            for name, value in entry.carried.items():
                if name in state:
                    state[name].fill_(value)
        return state

    def get(self, param, default=None):
        return self[param] if param in self else default
_hooked_step = torch.optim.Optimizer.profile_hook_step(_FlatOptimizer._step)


def _state_rows(core):
    """``{name: row}`` of a fastopt optimizer's state as its kernels hold it (bfloat16 state:
    the uint16 bits; int8 state: the codes, and each row's absmax per block as ``name +
    ".absmax"``), live."""
    storage = core._storage
    rows = {name: storage.buffer[k] for k, name in enumerate(core.rule.state)}
    if storage.absmax is not None:
        rows.update({name + ABSMAX: storage.absmax[k] for k, name in enumerate(core.rule.state)})
    return rows


def _state_views(core, device):
    """``views(position, offset, p)``: parameter ``p``'s state as torch shapes it, views of the
    fastopt optimizer's state (``p`` the ``position``-th of the core's parameters, at element
    ``offset`` of its buffer); bfloat16 state as torch.bfloat16 tensors; int8 state as the
    uint8 codes in ``p``'s shape and the float32 absmax of ``p``'s own blocks (a block never
    straddles two tensors)."""
    if core.rule.factored is not None:
        layout, factors = core._factor_layout, _as_tensor(core._factors, device)
        return lambda position, offset, p: layout.tensor_state(factors, position)
    state = {name: _as_tensor(buffer, device) for name, buffer in _state_rows(core).items()}
    starts = core._storage.blocks  # the blocks' first elements, in the core's buffer

    def views(position, offset, p):
        n = p.numel()
        out = {}
        for name, rows in state.items():
            if name.endswith(ABSMAX):
                first = int(np.searchsorted(starts, offset))
                out[name] = rows[first:first + _block_count(n)]
            else:
                out[name] = rows[offset:offset + n].view(p.shape)
        return out

    return views


#: The suffixes of an int8 state row's absmax per block and its map, in torch's state as in
#: fastopt's state dicts.
ABSMAX, MAP = ".absmax", ".map"


def _block_count(n):
    return -(-n // _quantized().BLOCK)


def _quantized():
    from ..kernels import quantized

    return quantized


def _local_blocks(n):
    """The int8 block bounds of one tensor of ``n`` elements."""
    return np.append(np.arange(0, n, _quantized().BLOCK), n).astype(np.uint64)


def _code_map(name):
    """The 256 float32 values by code of int8 state row ``name`` (fastopt's read-only array:
    what a saved map is checked against; ``optimizer.state`` gets a copy of its own)."""
    return _quantized().row_codecs((name,))[0][0]


def _decoded(name, codes, absmax):
    """int8 state row ``name`` of one tensor, its ``codes`` and ``absmax`` (checked), as float32."""
    codes = codes.detach().cpu().reshape(1, -1).numpy()
    absmax = absmax.detach().to(torch.float32).cpu().reshape(1, -1).numpy()
    values = _quantized().decode_int8(codes, absmax, _local_blocks(codes.size), (name,))[0]
    return torch.from_numpy(values)


def _load_state(views, saved, index):
    """Copy a parameter's ``saved`` state tensors into its flat state ``views`` (those ``saved``
    has; a view given back as itself is left alone), converting between encodings: int8 codes
    (uint8, with ``name + ".absmax"``) are decoded for float or bfloat16 state, and float
    values are quantized for int8 state, block by block (round to nearest, deterministic).
    Refuses undecodable int8 state (naming parameter ``index``) before it copies anything."""
    for name, value in saved.items():
        _check_int8_state(index, name, value, saved)
    for name, view in views.items():
        value = saved.get(name)
        if name.endswith(ABSMAX) or value is None or value is view:
            continue
        if value.dtype == torch.uint8:  # int8 codes: _check_loadable saw their absmax
            absmax = saved[name + ABSMAX]
            if name + ABSMAX in views:
                view.copy_(value.reshape(view.shape))
                views[name + ABSMAX].copy_(absmax)
                continue
            value = _decoded(name, value, absmax).reshape(view.shape)
        if name + ABSMAX in views:  # float values into int8 state
            flat = value.detach().to(torch.float32).cpu().reshape(1, -1).numpy()
            codes, absmax = _quantized().encode_reference(flat, _local_blocks(flat.size), (name,))
            view.copy_(torch.from_numpy(codes[0]).reshape(view.shape))
            views[name + ABSMAX].copy_(torch.from_numpy(absmax[0]))
        else:
            view.copy_(value)


def _device_copy(target, source):
    """Copy one fastopt state row into another (NumPy arrays, or CUDA arrays on the device)."""
    if isinstance(target, np.ndarray):
        target[:] = source
    else:
        target.copy_to_device(source)


def _mark_fresh(entry):
    entry.fresh = True


def _scalar_dtype():
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _carried_value(name, value):
    """A carried scalar of a saved state (a number or a one-element tensor) as a float in [0, 1]."""
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise ValueError(f"state {name} must hold one value, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"state {name} must be a float in [0, 1], got {value!r}")
    return float(value)


def _saved_steps(saved, has_step):
    if not saved:
        return 0
    if has_step or "step" in saved:
        step = saved.get("step", 0)
        return int(step.item() if torch.is_tensor(step) else step)
    return 1 if saved.get("momentum_buffer") is not None else 0


def _host_or_device(tensor):
    """A NumPy view of a CPU tensor (bfloat16: ml_dtypes' bfloat16), or the CUDA tensor itself
    (adopted zero-copy by fastopt)."""
    if tensor.device.type != "cpu":
        return tensor
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(_checks.bfloat16())
    return tensor.numpy()


def _as_tensor(buffer, device):
    """A torch view of a fastopt state buffer (NumPy or CUDA; uint16 bits as torch.bfloat16),
    no copy."""
    if device.type == "cpu":
        if buffer.dtype == np.uint16:
            return torch.from_numpy(buffer.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(buffer)
    return torch.as_tensor(buffer, device=device)


def _check_parameter(index, p):
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"params[{index}] must be a torch.Tensor, got {type(p).__name__}")
    if p.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"params[{index}] has dtype {p.dtype}; fastopt.torch takes float32, float64 and (on the "
                        "CPU) bfloat16 parameters")
    if p.dtype == torch.bfloat16 and p.device.type != "cpu":
        raise ValueError(f"params[{index}] is a bfloat16 parameter on {p.device}; fastopt.torch steps bfloat16 "
                         "parameters on the CPU for now")
    if p.device.type not in ("cpu", "cuda"):
        raise ValueError(f"params[{index}] is on {p.device}; fastopt.torch takes CPU and CUDA tensors")
    if p.layout != torch.strided:
        raise ValueError(f"params[{index}] has layout {p.layout}; fastopt.torch takes dense (strided) tensors")


def _check_flags(options):
    for flag in ("capturable", "differentiable"):
        if options.get(flag):
            raise ValueError(f"{flag}=True is not supported by fastopt.torch (its steps are fastopt's "
                             f"kernels, outside autograd and CUDA graphs); got {flag}=True")
    for key in ("lr", "weight_decay", "momentum", "eps", "alpha", "dampening", "lr_decay", "initial_accumulator_value",
                "momentum_decay"):
        if isinstance(options.get(key), torch.Tensor):
            raise TypeError(f"{key} must be a float for fastopt.torch, got a Tensor ({key}={options[key]!r})")


def _float(name, value):
    if isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a float for fastopt.torch, got a Tensor ({name}={value!r})")
    return value


def _plain(key, value):
    if key == "betas":
        return tuple(_float(key, v) for v in value)
    return _float(key, value)


class SGD(_FlatOptimizer):
    """``torch.optim.SGD`` (momentum, dampening, Nesterov, weight decay, maximize), stepped by
    fastopt. ``foreach`` and ``fused`` are accepted and ignored."""

    _core_class = _core.SGD
    _keys = _sync_keys = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")
    _has_step = False

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None, state_dtype=None, state_seed=0):
        _check_common(lr=lr, weight_decay=weight_decay)
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize, foreach=foreach,
                                      differentiable=differentiable, fused=fused),
                         state_dtype=state_dtype, state_seed=state_seed)


class Adam(_FlatOptimizer):
    """``torch.optim.Adam`` (AMSGrad, weight decay, ``decoupled_weight_decay``, maximize),
    stepped by fastopt. ``foreach`` and ``fused`` are accepted and ignored."""

    _keys = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")
    _sync_keys = _keys + ("decoupled_weight_decay",)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False, state_dtype=None, state_seed=0):
        _check_common(lr=lr, weight_decay=weight_decay)
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        for k, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {k}: {beta}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, foreach=foreach, capturable=capturable,
                                      differentiable=differentiable, fused=fused,
                                      decoupled_weight_decay=decoupled_weight_decay),
                         state_dtype=state_dtype, state_seed=state_seed)

    def _core_class_for(self, group):
        """Adam, or AdamW where the group asks for decoupled weight decay (torch's per-group key)."""
        return _core.AdamW if group.get("decoupled_weight_decay") else _core.Adam


class AdamW(Adam):
    """``torch.optim.AdamW``: Adam with decoupled weight decay (default 1e-2), stepped by fastopt."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None,
                 state_dtype=None, state_seed=0):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, state_dtype=state_dtype, state_seed=state_seed)


class RMSprop(_FlatOptimizer):
    """``torch.optim.RMSprop`` (centered, momentum, weight decay, maximize), stepped by fastopt.
    ``foreach`` is accepted and ignored."""

    _core_class = _core.RMSProp
    _keys = _sync_keys = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 capturable=False, foreach=None, maximize=False, differentiable=False, *,
                 state_dtype=None, state_seed=0):
        _check_common(lr=lr, weight_decay=weight_decay)
        for name, value in (("epsilon", eps), ("momentum", momentum), ("alpha", alpha)):
            if not 0.0 <= value:
                raise ValueError(f"Invalid {name} value: {value}")
        super().__init__(params, dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                                      weight_decay=weight_decay, capturable=capturable, foreach=foreach,
                                      maximize=maximize, differentiable=differentiable),
                         state_dtype=state_dtype, state_seed=state_seed)


class Adagrad(_FlatOptimizer):
    """``torch.optim.Adagrad`` (learning-rate decay, initial accumulator value, weight decay,
    maximize; dense gradients), stepped by fastopt. As in torch, the parameters given at
    construction have their state (``sum`` at ``initial_accumulator_value``, ``step`` 0) from
    then on; others (a group added later, a reset state) get it at their first step. As in
    torch, the accumulator starts at the constructor's ``initial_accumulator_value`` whatever a
    group says. ``foreach`` and ``fused`` are accepted and ignored."""

    _core_class = _core.Adagrad
    _keys = _sync_keys = ("lr", "lr_decay", "weight_decay", "eps", "maximize")
    _eager_state = True

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
                 foreach=None, *, maximize=False, differentiable=False, fused=None, state_dtype=None, state_seed=0):
        _check_common(lr=lr, weight_decay=weight_decay)
        for name, value in (("lr_decay", lr_decay), ("initial_accumulator_value", initial_accumulator_value),
                            ("epsilon", eps)):
            if not 0.0 <= value:
                raise ValueError(f"Invalid {name} value: {value}")
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                                      maximize=maximize, differentiable=differentiable, fused=fused),
                         state_dtype=state_dtype, state_seed=state_seed)

    def _core_options(self, group):
        options = {**super()._core_options(group),
                   "initial_accumulator_value": _float("initial_accumulator_value",
                                                       self.defaults["initial_accumulator_value"])}
        self._core_class.config_type(**options)
        return options

    def _initial_value(self, name):
        return self.defaults["initial_accumulator_value"]


def _check_betas(betas):
    for k, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {k}: {beta}")


class Adamax(_FlatOptimizer):
    """``torch.optim.Adamax`` (weight decay, maximize), stepped by fastopt. ``foreach`` is
    accepted and ignored."""

    _core_class = _core.Adamax
    _keys = _sync_keys = ("lr", "betas", "eps", "weight_decay", "maximize")

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, foreach=None, *,
                 maximize=False, differentiable=False, capturable=False, state_dtype=None, state_seed=0):
        _check_common(lr=lr, weight_decay=weight_decay)
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        _check_betas(betas)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach,
                                      maximize=maximize, differentiable=differentiable, capturable=capturable),
                         state_dtype=state_dtype, state_seed=state_seed)


class RAdam(_FlatOptimizer):
    """``torch.optim.RAdam`` (weight decay, ``decoupled_weight_decay``, maximize), stepped by
    fastopt. ``foreach`` is accepted and ignored."""

    _core_class = _core.RAdam
    _keys = _sync_keys = ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay", "maximize")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, decoupled_weight_decay=False,
                 *, foreach=None, maximize=False, capturable=False, differentiable=False,
                 state_dtype=None, state_seed=0):
        _check_common(lr=lr, weight_decay=weight_decay)
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        _check_betas(betas)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay, foreach=foreach,
                                      maximize=maximize, capturable=capturable, differentiable=differentiable),
                         state_dtype=state_dtype, state_seed=state_seed)


class NAdam(_FlatOptimizer):
    """``torch.optim.NAdam`` (``momentum_decay``, weight decay, ``decoupled_weight_decay``,
    maximize), stepped by fastopt. As torch, each parameter keeps its ``mu_product`` (a tensor
    of torch's scalar dtype, float32 unless the default dtype is float64, rounded as torch
    rounds it at every step). ``foreach`` is accepted and ignored."""

    _core_class = _core.NAdam
    _keys = _sync_keys = ("lr", "betas", "eps", "weight_decay", "momentum_decay", "decoupled_weight_decay",
                          "maximize")
    _carried = {"mu_product": 1.0}

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, momentum_decay=4e-3,
                 decoupled_weight_decay=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, state_dtype=None, state_seed=0):
        _check_common(lr=lr, weight_decay=weight_decay)
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        _check_betas(betas)
        if not 0.0 <= momentum_decay:
            raise ValueError(f"Invalid momentum_decay value: {momentum_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
                                      foreach=foreach, maximize=maximize, capturable=capturable,
                                      differentiable=differentiable), state_dtype=state_dtype, state_seed=state_seed)

    def _round_carried(self, core, dtype):
        # torch multiplies its mu_product tensor in place, in that tensor's dtype
        core._mu_product_type = np.float64 if dtype == torch.float64 else np.float32


class Lion(_FlatOptimizer):
    """Lion (Chen et al., 2023; see :class:`fastopt.Lion`) as a ``torch.optim.Optimizer``:
    torch has none. State per parameter: ``exp_avg`` and ``step``."""

    _core_class = _core.Lion
    _keys = _sync_keys = ("lr", "betas", "weight_decay", "maximize")

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False,
                 state_dtype=None, state_seed=0):
        _check_common(lr=lr, weight_decay=weight_decay)
        _check_betas(betas)
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize),
                         state_dtype=state_dtype, state_seed=state_seed)


class LAMB(_FlatOptimizer):
    """LAMB (You et al., 2020; see :class:`fastopt.LAMB`) as a ``torch.optim.Optimizer``: torch
    has none. Each torch parameter is a tensor of the trust ratio. State per parameter:
    ``exp_avg``, ``exp_avg_sq`` and ``step``; with ``state_dtype="int8"`` or ``"bfloat16"``
    (float32 CPU parameters) as the element-wise classes keep them."""

    _core_class = _core.LAMB
    _keys = _sync_keys = ("lr", "betas", "eps", "weight_decay", "maximize")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, *, maximize=False,
                 state_dtype=None, state_seed=0):
        _check_common(lr=lr, weight_decay=weight_decay)
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        _check_betas(betas)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize),
                         state_dtype=state_dtype, state_seed=state_seed)


class Muon(_FlatOptimizer):
    """``torch.optim.Muon`` (momentum, Nesterov, the Newton-Schulz coefficients and steps,
    ``adjust_lr_fn``, decoupled weight decay), stepped by fastopt; 2-D parameters only, as
    torch's. State per parameter: ``momentum_buffer``.

    One difference, by default: torch runs the Newton-Schulz iteration in bfloat16 whatever the
    parameters' dtype; fastopt runs it in the parameters' dtype (float32 or float64), so the
    orthogonalised update differs from torch's by about bfloat16's resolution (0.4 %).
    ``ns_dtype="bfloat16"`` runs it as torch does (tested against torch.optim.Muon)."""

    _core_class = _core.Muon
    _keys = _sync_keys = ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "eps", "ns_steps",
                          "adjust_lr_fn", "ns_dtype")
    _own_keys = ("ns_dtype",)
    _has_step = False

    def __init__(self, params, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=NS_COEFFICIENTS, eps=1e-7, ns_steps=NS_STEPS,
                 adjust_lr_fn=None, *, ns_dtype=None):
        _check_common(lr=lr, weight_decay=weight_decay)
        if not 0.0 <= momentum:
            raise ValueError(f"momentum should be >= 0 but is: {momentum}")
        if adjust_lr_fn not in (None, "original", "match_rms_adamw"):
            raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                      ns_coefficients=tuple(ns_coefficients), eps=eps, ns_steps=ns_steps,
                                      adjust_lr_fn=adjust_lr_fn, ns_dtype=ns_dtype))

    def add_param_group(self, param_group):
        params = param_group.get("params") if isinstance(param_group, dict) else None
        if params is not None and not isinstance(params, set):  # checked before torch adds it (a set: torch says)
            params = [params] if isinstance(params, torch.Tensor) else list(params)
            param_group = {**param_group, "params": params}
        for index, p in enumerate(param_group["params"] if isinstance(param_group, dict) else ()):
            if isinstance(p, torch.Tensor) and p.ndim != 2:
                raise ValueError(f"Muon only supports 2D parameters whereas we found a parameter with size: "
                                 f"{p.size()} (params[{index}] of the group): give it to another optimizer, "
                                 "e.g. AdamW (the usual split: Muon for hidden matrices, AdamW for the rest)")
        super().add_param_group(param_group)


class Adafactor(_FlatOptimizer):
    """``torch.optim.Adafactor`` (``beta2_decay``, ``eps = (eps1, eps2)``, ``d``, weight decay,
    maximize), stepped by fastopt. State per parameter as torch's: ``row_var`` and ``col_var``
    for a tensor of two or more dimensions, ``variance`` for a vector, and ``step``. ``foreach``
    is accepted and ignored."""

    _core_class = _core.Adafactor
    _keys = _sync_keys = ("lr", "beta2_decay", "eps", "d", "weight_decay", "maximize")

    def __init__(self, params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0, *,
                 foreach=None, maximize=False):
        _check_common(lr=lr, weight_decay=weight_decay)
        if not 0.0 >= beta2_decay:
            raise ValueError(f"beta2_decay should be <= 0 but is: {beta2_decay}")
        if eps[0] is not None and not 0.0 <= eps[0]:
            raise ValueError(f"epsilon1 should be >= 0 but is: {eps[0]}")
        if not 0.0 <= eps[1]:
            raise ValueError(f"epsilon2 should be >= 0 but is: {eps[1]}")
        if not 1.0 <= d:
            raise ValueError(f"Clipping threshold d should be >= 1 but is: {d}")
        super().__init__(params, dict(lr=lr, beta2_decay=beta2_decay, eps=tuple(eps), d=d, weight_decay=weight_decay,
                                      foreach=foreach, maximize=maximize))

    @staticmethod
    def _state_shape(name, p):
        shape = tuple(p.shape)
        if name == "row_var" and len(shape) >= 2:
            return (*shape[:-1], 1)
        if name == "col_var" and len(shape) >= 2:
            return (*shape[:-2], 1, shape[-1])
        return shape


def _check_common(lr, weight_decay):
    """torch.optim's own checks, with its messages (fastopt's follow, naming the argument)."""
    if isinstance(lr, torch.Tensor):
        raise TypeError(f"lr must be a float for fastopt.torch, got a Tensor (lr={lr!r})")
    if lr < 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if weight_decay < 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")

