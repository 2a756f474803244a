"""Data-parallel training over MPI, through mpi4py: optimizer state sharded (ZeRO stage 1) or
replicated with an all-reduce.

Every rank holds the whole :class:`~fastopt.FlatParams`, computes gradients on its part of each
batch, and calls :meth:`step`, which is collective:

* :class:`ShardedOptimizer` (ZeRO-1): a reduce-scatter over the flat gradient buffer leaves each
  rank the averaged gradient of its contiguous shard; the rank runs the fused kernel on that
  shard alone, with optimizer state allocated for the shard only; an all-gather puts the updated
  parameters back on every rank. State memory per rank is ``1/N`` of a single process's.
* :class:`AllReduceOptimizer`: an all-reduce averages the whole gradient buffer in place and
  every rank runs the full step on full state, as ``torch.nn.parallel.DistributedDataParallel``.

Both move about ``2 (N - 1) / N`` times the buffer's bytes per rank and step (a reduce-scatter
plus an all-gather is what a ring all-reduce does), so sharding saves memory, not traffic.

Shards are contiguous, split as evenly as 16-element (64-byte) alignment allows; a buffer
whose size does not divide by the number of ranks, and parameters or groups that straddle a
shard boundary, are handled: a rank's shard is a :class:`~fastopt.FlatParams` of the pieces of
parameters it holds, under the same names, so every group keeps its learning-rate factor and
weight decay.

State dicts have the layout of a single process's (:meth:`state_dict` gathers the shards), so a
checkpoint written with 4 ranks loads into 2 ranks, or into a plain optimizer, and back.

Parameters on the GPU (``FlatParams(..., device="cuda")``) work too: the optimizer steps on the
device, and the collectives are staged through host memory (the gradient to the host, the
reduced shard back, this rank's updated shard to the host and the gathered parameters back).
Device buffers are not handed to MPI directly, even where the MPI build is CUDA-aware; MPICH's
and Open MPI's PyPI wheels are not.

mpi4py and an MPI library are an optional extra: ``pip install "fastopt[mpi]"`` brings mpi4py
and MPICH's wheel; run with ``mpiexec -n 4 python train.py``. Open MPI's wheel works too (its
``mpiexec`` needs ``--oversubscribe`` for more ranks than cores, and ``--allow-run-as-root`` as
root), but its reduce-scatter measured 4x slower than MPICH's on this 2-core machine.
"""

import os

import numpy as np

from .. import device as _device
from ..optim.optimizer import Optimizer, ParamGroup, check_groups
from ..params import FlatParams

#: Shard boundaries fall on multiples of this many elements (64 bytes of float32).
SHARD_ALIGNMENT = 16


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError(
            "fastopt.distributed needs mpi4py and an MPI library, which are not installed: "
            "pip install 'fastopt[mpi]' (mpi4py and MPICH's wheel, which brings mpiexec), or mpi4py built "
            "against "
            "your cluster's MPI"
        ) from error
    return MPI


def world():
    """``MPI.COMM_WORLD``, with a clear error when mpi4py is missing."""
    return _mpi().COMM_WORLD


def shard_bounds(size, ranks, alignment=SHARD_ALIGNMENT):
    """``[(start, stop), ...]``: the contiguous shard of each of ``ranks`` ranks in a buffer of
    ``size`` elements, as even as ``alignment`` allows; shards may be empty when ``size`` is small.

    >>> shard_bounds(100, 3)
    [(0, 32), (32, 64), (64, 100)]
    >>> shard_bounds(10, 4)
    [(0, 0), (0, 0), (0, 0), (0, 10)]
    """
    units = -(-size // alignment)
    return [(min(units * r // ranks * alignment, size), min(units * (r + 1) // ranks * alignment, size))
            for r in range(ranks)]


def tensor_shard_bounds(params, ranks):
    """``[(start, stop), ...]`` as :func:`shard_bounds`, but cut only where a tensor starts, each
    cut at the tensor boundary nearest the even split: for rules that work on whole tensors
    (LAMB's norms, Adafactor's factors, Muon's matrices), so that every rank holds whole tensors
    and computes over each exactly as one process does. A rank may get no tensor.

    >>> from fastopt import FlatParams
    >>> tensor_shard_bounds(FlatParams({"a": 10, "b": (5, 6), "c": 40, "d": 20}), 3)
    [(0, 40), (40, 80), (80, 100)]
    """
    size = params.size
    cuts = sorted({params.segment(name)[0] for name in params} | {size})
    bounds, start = [], 0
    for r in range(ranks):
        target = size * (r + 1) // ranks
        stop = size if r == ranks - 1 else min((c for c in cuts if c >= start), key=lambda c: (abs(c - target), c))
        bounds.append((start, stop))
        start = stop
    return bounds


def _pieces(params, start, stop):
    """``{name: length}`` of the parts of parameters that lie in ``[start, stop)``."""
    pieces = {}
    for name in params:
        lo, hi = params.segment(name)
        length = min(hi, stop) - max(lo, start)
        if length > 0:
            pieces[name] = length
    return pieces


def _whole_pieces(params, bounds, rank):
    """``{name: shape}`` of the tensors rank ``rank`` holds under :func:`tensor_shard_bounds`'
    ``bounds``: each tensor, empty ones included, goes to the last rank whose shard starts at or
    before its first element (the one holding it, for a non-empty tensor)."""
    pieces = {}
    for name, shape in params.layout:
        first = params.segment(name)[0]
        if max(r for r, (start, _) in enumerate(bounds) if start <= first) == rank:
            pieces[name] = shape
    return pieces


def _shard_groups(groups, names):
    """``groups`` restricted to ``names``; every group stays, possibly empty, so the indices of
    groups (and with them each group's factor and decay) are the same on every rank."""
    return [ParamGroup([n for n in group.params if n in names], group.lr_factor, group.weight_decay)
            for group in groups]


class DistributedOptimizer:
    """What both data-parallel optimizers share; see :mod:`fastopt.distributed`.

    Hyperparameters, the learning rate and the step count read and write through to the
    local optimizer, so a :class:`~fastopt.Scheduler` drives either kind. Every method that
    talks to the other ranks (:meth:`step`, :meth:`l2_penalty`, :meth:`state_dict`, and the
    constructor) must be called on every rank in the same order.
    """

    def __init__(self, params, optimizer, comm=None, *, average=True, groups=(), **hyperparameters):
        if isinstance(params, FlatParams) and params.dtype.name == "bfloat16":  # MPI has no bfloat16 sum
            raise ValueError("params are bfloat16; data parallelism takes float32 or float64 parameters for now")
        MPI = _mpi()
        if not isinstance(params, FlatParams):
            raise TypeError(f"params must be a FlatParams, got {type(params).__name__}")
        if isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastopt optimizer class such as fastopt.AdamW, not an "
                            f"instance ({optimizer!r}): the hyperparameters go to this constructor, which "
                            "builds the optimizer of this rank's part")
        if not (isinstance(optimizer, type) and issubclass(optimizer, Optimizer)):
            raise TypeError(f"optimizer must be a fastopt optimizer class such as fastopt.AdamW, got {optimizer!r}")
        self._comm = MPI.COMM_WORLD if comm is None else comm
        if not isinstance(self._comm, MPI.Comm):
            raise TypeError(f"comm must be an mpi4py communicator, got comm={comm!r}")
        self._MPI = MPI
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()
        self._average = bool(average)
        self._scale = params.dtype.type(1.0 / self.size)
        # Every rank must hold the same layout, or the collectives would mix up buffers.
        layouts = self._comm.allgather((params.layout, str(params.dtype)))
        if any(layout != layouts[0] for layout in layouts):
            differing = [r for r, layout in enumerate(layouts) if layout != layouts[0]]
            raise ValueError(f"params differ between ranks (layout or dtype): ranks {differing} "
                             "differ from rank 0")
        self._params = params
        self._on_gpu = params.device == "cuda"
        if self._on_gpu:  # staged through host memory: one host copy of the gradient buffer
            self._grad_host = np.empty(params.size, params.dtype)
        self._groups = check_groups(params, groups)
        self._local = self._build_local(optimizer, hyperparameters)

    def _build_local(self, optimizer, hyperparameters):
        raise NotImplementedError

    # -- what reads and writes through -----------------------------------------------------------

    @property
    def comm(self):
        return self._comm

    @property
    def params(self):
        """The whole parameters, the same on every rank after each :meth:`step`."""
        return self._params

    @property
    def local(self):
        """The optimizer this rank runs (over its shard, or over everything)."""
        return self._local

    @property
    def config(self):
        return self._local.config

    @property
    def rule(self):
        """The update rule's spec (the local optimizer's)."""
        return self._local.rule

    @property
    def device(self):
        return self._local.device

    @config.setter
    def config(self, config):
        self._local.config = config

    def set_hyperparameters(self, **changes):
        self._local.set_hyperparameters(**changes)

    def set_momentum(self, value):
        self._local.set_momentum(value)

    @property
    def lr(self):
        return self._local.lr

    @lr.setter
    def lr(self, value):
        self._local.lr = value

    @property
    def groups(self):
        return self._groups

    @property
    def step_count(self):
        return self._local.step_count

    @property
    def state(self):
        """This rank's state buffers (the shard's, for :class:`ShardedOptimizer`)."""
        return self._local.state

    def state_nbytes(self):
        """Bytes of optimizer state this rank holds (as stored: int8 codes and absmax, say)."""
        if self._local.rule.factored is None:
            return self._local._storage.nbytes
        return sum(buffer.nbytes for buffer in self._local.state.values())

    def zero_grad(self):
        self._params.zero_grad()

    def sum_over_ranks(self, array):
        """Sum a numpy array over the ranks, in place (collective); returns it."""
        if self.size > 1:
            self._comm.Allreduce(self._MPI.IN_PLACE, array, op=self._MPI.SUM)
        return array

    def _reduce_scale(self, buffer):
        if self._average and self.size > 1:
            buffer *= self._scale

    # -- state dicts -----------------------------------------------------------------------------

    def local_state_dict(self):
        """This rank's optimizer's own state dict (no communication)."""
        return self._local.state_dict()

    def load_local_state_dict(self, state_dict):
        """Restore :meth:`local_state_dict` output of this rank (no communication)."""
        self._local.load_state_dict(state_dict)

    def __repr__(self):
        return f"{type(self).__name__}({self._local!r}, rank {self.rank} of {self.size})"


class AllReduceOptimizer(DistributedOptimizer):
    """Plain data parallelism: all-reduce the gradients, then the full step on every rank.

    Parameters
    ----------
    params : FlatParams
        The same layout on every rank (checked), with the same initial values.
    optimizer : a fastopt optimizer class, e.g. :class:`~fastopt.AdamW`
    comm : mpi4py communicator, default ``MPI.COMM_WORLD``
    average : bool
        Divide the summed gradients by the number of ranks (each rank's gradient is then the
        mean over its part of the batch, as in PyTorch's DDP); ``False`` sums.
    groups, **hyperparameters
        What ``optimizer`` takes.

    :meth:`step` averages :attr:`FlatParams.grad` in place on every rank.
    """

    def _build_local(self, optimizer, hyperparameters):
        return optimizer(self._params, groups=self._groups, **hyperparameters)

    def step(self):
        """All-reduce the gradients, then one kernel call over the whole buffer (collective)."""
        if self.size > 1:
            grad = self._params.grad.copy_to_host(self._grad_host) if self._on_gpu else self._params.grad
            self._comm.Allreduce(self._MPI.IN_PLACE, grad, op=self._MPI.SUM)
            self._reduce_scale(grad)
            if self._on_gpu:
                self._params.grad.copy_to_device(grad)
        self._local.step()

    def l2_penalty(self):
        return self._local.l2_penalty()

    def state_dict(self, root=None):
        """The optimizer's state dict; with ``root``, only that rank gets it, the others None."""
        return self._local.state_dict() if root is None or root == self.rank else None

    def load_state_dict(self, state_dict):
        self._local.load_state_dict(state_dict)


class ShardedOptimizer(DistributedOptimizer):
    """ZeRO stage 1: each rank keeps and updates the optimizer state of its shard only.

    Parameters as for :class:`AllReduceOptimizer`. The averaged gradient of this rank's shard
    lands in a buffer of the shard's size; :attr:`FlatParams.grad` keeps the local gradient
    (with one rank the shard is the whole buffer, and its gradient :attr:`FlatParams.grad`).

    Examples
    --------
    Run under ``mpiexec -n 4`` (or alone, where it behaves as the plain optimizer)::

        from fastopt import AdamW, FlatParams
        from fastopt.distributed import ShardedOptimizer

        params = FlatParams({"w": (1000, 100), "b": 100})     # same seed on every rank
        opt = ShardedOptimizer(params, AdamW, lr=1e-3)
        ...                                                  # params.grad: this rank's part
        opt.step()                                           # params now equal on every rank
    """

    def _build_local(self, optimizer, hyperparameters):
        state_dtype = hyperparameters.get("state_dtype")
        quantized = state_dtype in ("int8", "bfloat16")
        # A rule over whole tensors gets shards cut at tensor boundaries, each piece keeping its
        # shape; so does int8 state, whose blocks start at each tensor (a shard holds whole
        # blocks, the same as one process's), and bfloat16 state with it.
        self._whole_tensors = optimizer.per_tensor or quantized
        bounds = (tensor_shard_bounds(self._params, self.size) if self._whole_tensors
                  else shard_bounds(self._params.size, self.size))
        self._start, self._stop = bounds[self.rank]
        self._counts = np.array([hi - lo for lo, hi in bounds], dtype=np.int64)
        self._displacements = np.array([lo for lo, _ in bounds], dtype=np.int64)
        self._pieces = pieces = _pieces(self._params, self._start, self._stop)
        # Alone, the shard is the whole buffer and the gradient needs no reducing.
        self._shard_grad = (self._params.grad if self.size == 1
                            else np.zeros(self._stop - self._start, self._params.dtype))
        if self._on_gpu:
            self._shard_host = self._shard_grad
            self._data_host = np.empty(self._params.size, self._params.dtype)
            self._shard_grad = (self._params.grad if self.size == 1
                                else _device.to_device(self._shard_host))
        if self._whole_tensors:  # every tensor, empty ones too (Adafactor keeps state for a (3, 0) one)
            pieces = self._pieces = _whole_pieces(self._params, bounds, self.rank)
        shard = FlatParams.wrap(self._params.data[self._start:self._stop], self._shard_grad, pieces)
        gathered = self._data_host if self._on_gpu else self._params.data
        self._gather_spec = [gathered, (self._counts, self._displacements)]
        local = optimizer(shard, groups=_shard_groups(self._groups, pieces), **hyperparameters)
        if quantized and self._start:
            local._offset_state(self._start)  # bfloat16 rounds as one process does at these elements
        self._state_spec = self._state_counts(local)
        return local

    def _state_counts(self, local):
        """``{state name: (counts, displacements)}`` of each rank's part of each whole state
        buffer: the shards' for state rows; for factored state (Adafactor) each section's part
        of the rank's whole tensors (collective)."""
        if local.rule.factored is None and local.state_dtype == str(self._params.dtype):
            return {name: (self._counts, self._displacements) for name in local.state}
        # factored state's sections, int8 state's absmax per block: each rank's own count; an
        # int8 map is the same on every rank and is not gathered (None)
        saved = local.state_dict()["state"] if local.rule.factored is None else local.state
        sizes = self._comm.allgather({name: buffer.size for name, buffer in saved.items()})
        spec = {}
        for name in saved:
            if name.endswith(".map"):
                spec[name] = None
                continue
            counts = np.array([part[name] for part in sizes], dtype=np.int64)
            spec[name] = counts, np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        return spec

    @property
    def shard(self):
        """``(start, stop)`` of this rank's shard in the flat buffers."""
        return self._start, self._stop

    def step(self):
        """Reduce-scatter the gradients, step this rank's shard, all-gather the parameters
        (collective)."""
        MPI = self._MPI
        if self.size > 1 and self._on_gpu:
            self._params.grad.copy_to_host(self._grad_host)
            self._comm.Reduce_scatter(self._grad_host, self._shard_host, self._counts, op=MPI.SUM)
            self._reduce_scale(self._shard_host)
            self._shard_grad.copy_to_device(self._shard_host)
        elif self.size > 1:
            self._comm.Reduce_scatter(self._params.grad, self._shard_grad, self._counts, op=MPI.SUM)
            self._reduce_scale(self._shard_grad)
        self._local.step()
        if self.size > 1 and self._on_gpu:
            start, stop = self._start, self._stop
            self._params.data[start:stop].copy_to_host(self._data_host[start:stop])
            self._comm.Allgatherv(MPI.IN_PLACE, self._gather_spec)
            self._params.data.copy_to_device(self._data_host)
        elif self.size > 1:
            self._comm.Allgatherv(MPI.IN_PLACE, self._gather_spec)

    def l2_penalty(self):
        """The L2 penalty of all parameters: each rank's shard, summed (collective)."""
        local = self._local.l2_penalty()
        return self._comm.allreduce(local, op=self._MPI.SUM) if self.size > 1 else local

    def state_dict(self, root=None):
        """The state dict a single process would have, gathered from the shards (collective).

        With ``root`` only that rank receives it (the others get None), so only it needs memory
        for the whole state.
        """
        local = self._local.state_dict()
        state = {}
        for name, shard in local.pop("state").items():
            if self._state_spec[name] is None:  # the same on every rank (an int8 map)
                state[name] = shard
                continue
            counts, displacements = self._state_spec[name]
            whole = np.empty(int(counts.sum()), shard.dtype) if root in (None, self.rank) else None
            spec = None if whole is None else [whole, (counts, displacements)]
            if root is None:
                self._comm.Allgatherv(shard, spec)
            else:
                self._comm.Gatherv(shard, spec, root=root)
            state[name] = whole
        if root is not None and root != self.rank:
            return None
        return {**local, "groups": [group.to_dict() for group in self._groups],
                "layout": [[name, list(shape)] for name, shape in self._params.layout], "state": state}

    def load_state_dict(self, state_dict):
        """Restore a whole state dict (from :meth:`state_dict`, any number of ranks, or a plain
        optimizer): each rank takes its shard. Checked in full before anything changes."""
        _, rule, _, groups, _, buffers, kind = self._local._checked_state(state_dict, self._params)
        own = self._local._storage.kind
        if kind != own and rule.factored is None:  # another encoding: decoded whole, each rank its part
            from ..optim.storage import Storage

            whole = Storage(kind, rule, self._params, _device.for_device("cpu"))
            whole.load(kind, buffers, rule.state)
            buffers = {name: np.ascontiguousarray(values, self._params.dtype)
                       for name, values in whole.values().items()}
            # float32 parts, which the local optimizer encodes as it keeps its own state
            state_dict = {**state_dict, "state_dtype": str(self._params.dtype)}
        pieces = self._pieces
        parts = {}
        for name, buffer in buffers.items():
            if name.endswith(".map") and kind == own:
                parts[name] = buffer
                continue
            counts, displacements = (self._counts, self._displacements) if kind != own and rule.factored is None \
                else self._state_spec[name]
            lo = int(displacements[self.rank])
            parts[name] = buffer[lo:lo + int(counts[self.rank])]
        shard = {**state_dict,
                 "layout": [[name, list(shape) if isinstance(shape, tuple) else [shape]]
                            for name, shape in pieces.items()],
                 "groups": [group.to_dict() for group in _shard_groups(groups, pieces)],
                 "state": parts}
        self._local.load_state_dict(shard)
        self._groups = groups


def launched_under_mpi():
    """Whether ``mpiexec`` started this process with more than one rank (Open MPI, MPICH or
    Intel MPI), judged from the environment without importing MPI."""
    for variable in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"):
        value = os.environ.get(variable)
        if value and value.isdigit() and int(value) > 1:
            return True
    return False


__all__ = ["AllReduceOptimizer", "DistributedOptimizer", "SHARD_ALIGNMENT", "ShardedOptimizer",
           "launched_under_mpi", "shard_bounds", "tensor_shard_bounds", "world"]
