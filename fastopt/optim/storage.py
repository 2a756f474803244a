"""How an optimizer keeps its per-element state: in the parameters' dtype (the default), as
block-wise int8 codes with a float32 ``absmax`` per block, or as bfloat16 rounded
stochastically (see :mod:`fastopt.kernels.quantized` for both encodings). Over bfloat16
parameters the state is bfloat16 (the default), float32 or int8, and every step rounds the
parameters stochastically as well.

A :class:`Storage` owns the state arrays of one rule over one :class:`~fastopt.FlatParams`:
it allocates them, builds a step's launch over them (CPU or CUDA), decodes them for
:attr:`Optimizer.state <fastopt.optim.optimizer.Optimizer.state>`, and turns them into the
plain arrays of a state dict and back (from any of the three encodings into any other).
"""

import numpy as np

from .. import checks as _checks
from .. import device as _device

#: The encodings ``state_dtype`` may name besides the parameters' own dtype.
STATE_DTYPES = ("int8", "bfloat16")
#: The largest ``state_seed``: Philox's two 32-bit key words.
MAX_SEED = 2**64 - 1


def compute_dtype(params):
    """The dtype the kernels compute in over ``params``: float32 for bfloat16 parameters."""
    return np.dtype(np.float32) if _checks.is_bfloat16(params.dtype) else params.dtype


def encodings(rule):
    """The encodings ``rule``'s kernels keep state in besides the parameters' dtype: int8 and
    bfloat16 for the element-wise rules and those with per-tensor sums (LAMB), none for Muon's
    and Adafactor's (a matrix's momentum, factored second moments)."""
    if rule.matrixwise is not None or rule.factored is not None:
        return ()
    return STATE_DTYPES


def check_state_dtype(state_dtype, params, optimizer_class, rule):
    """The state's encoding, checked against the parameters and the optimizer and its rule (the
    error names ``state_dtype`` and its value): None (the parameters' float dtype), ``"int8"``
    or ``"bfloat16"``; over bfloat16 parameters ``"bfloat16"`` (the default), ``"float32"`` or
    ``"int8"``."""
    native = str(params.dtype)
    if _checks.is_bfloat16(params.dtype):
        if optimizer_class.per_tensor:
            raise ValueError(f"{optimizer_class.__name__} works on whole tensors and does not take bfloat16 "
                             "parameters; the element-wise optimizers do")
        if state_dtype is None or (isinstance(state_dtype, str) and state_dtype in ("bfloat16", "float32", "int8")):
            return state_dtype or "bfloat16"
        raise ValueError(f"state_dtype must be None, 'bfloat16', 'float32' or 'int8' over bfloat16 parameters, "
                         f"got state_dtype={state_dtype!r}")
    if state_dtype is None or (isinstance(state_dtype, str) and state_dtype == native):
        return None
    if not isinstance(state_dtype, str) or state_dtype not in STATE_DTYPES:
        raise ValueError(f"state_dtype must be None, {native!r}, 'int8' or 'bfloat16', got state_dtype={state_dtype!r}")
    if params.dtype != np.float32:
        raise ValueError(f"state_dtype={state_dtype!r} needs float32 parameters (the step computes in float32), "
                         f"but params are {params.dtype}")
    if state_dtype not in encodings(rule):
        has = " or ".join(repr(kind) for kind in encodings(rule)) or "none"
        raise ValueError(f"state_dtype={state_dtype!r} is not built for {optimizer_class.__name__} (its encodings: "
                         f"{has}); int8 and bfloat16 state are for the element-wise rules and LAMB")
    return state_dtype


def saved_kind(saved, params, rule):
    """The encoding (a :class:`Storage` kind) of a state dict's ``state_dtype`` ``saved``, checked."""
    if _checks.is_bfloat16(params.dtype):
        if saved not in ("bfloat16", "float32", "int8"):
            raise ValueError(f"state_dict state_dtype must be 'bfloat16', 'float32' or 'int8' over bfloat16 "
                             f"parameters, got {saved!r}")
        return saved
    if saved == str(params.dtype):
        return None
    if saved not in STATE_DTYPES:
        raise ValueError(f"state_dict state_dtype must be {str(params.dtype)!r}, 'int8' or 'bfloat16', got {saved!r}")
    if saved not in encodings(rule):
        raise ValueError(f"state_dict holds {saved} state, which {rule.name} does not take")
    return saved


def check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"state_seed must be an int in [0, 2**64), got state_seed={seed!r}")
    return int(seed)


def block_bounds(params):
    """The int8 blocks of ``params`` (uint64 bounds): tiles of ``BLOCK`` from each tensor's start."""
    from ..kernels import quantized

    return quantized.block_table([(*params.segment(name), 0) for name in params])[0]


def saved_arrays(kind, state_names, params):
    """``{key: (dtype, shape)}`` of the saved state of ``state_names`` in encoding ``kind``
    over ``params``."""
    if kind is None:
        return {name: (params.dtype, (params.size,)) for name in state_names}
    if kind == "float32":
        return {name: (np.dtype(np.float32), (params.size,)) for name in state_names}
    if kind == "bfloat16":
        return {name: (np.dtype(np.uint16), (params.size,)) for name in state_names}
    blocks = block_bounds(params).size - 1
    arrays = {}
    for name in state_names:
        arrays[name] = (np.dtype(np.uint8), (params.size,))
        arrays[name + ".absmax"] = (np.dtype(np.float32), (blocks,))
        arrays[name + ".map"] = (np.dtype(np.float32), (256,))
    return arrays


class Storage:
    """The state arrays of ``rule`` over ``params`` in encoding ``kind`` (None: the parameters'
    float dtype, "int8", "bfloat16", or "float32" over bfloat16 parameters); ``buffer`` (rows,
    size) is what the kernels update: the state itself, the codes, or the bfloat16 bits."""

    def __init__(self, kind, rule, params, device, seed=0):
        self.kind, self.rule, self.seed, self.params, self.device = kind, rule, seed, params, device
        #: The whole buffer's index of element 0 (a ZeRO shard's start): bfloat16's Philox counters.
        self.offset = 0
        rows, size = len(rule.state), params.size
        self.absmax = self.blocks = None
        #: Whether the state is encoded: a rule without state (SGD without momentum) runs the
        #: plain kernel whatever ``kind`` says.
        self.active = kind in STATE_DTYPES and rows > 0
        #: Whether the parameters are bfloat16 (their kernels take the uint16 bits of
        #: :attr:`kernel_view` and round each new value stochastically).
        self.bfloat16_params = _checks.is_bfloat16(params.dtype)
        self.dtype = {"int8": np.dtype(np.uint8), "bfloat16": np.dtype(np.uint16)}[kind] if self.active else \
            compute_dtype(params)
        self.buffer = device.zeros((rows, size), self.dtype)
        if self.active and kind == "int8":
            self.blocks = block_bounds(params)
            self.absmax = device.zeros((rows, self.blocks.size - 1), np.float32)

    @property
    def custom(self):
        """Whether a step runs this storage's :meth:`launch` (encoded state or bfloat16
        parameters) rather than the device's plain rule kernel."""
        return self.active or self.bfloat16_params

    def kernel_view(self, buffer):
        """A parameter or gradient buffer as the kernels take it: bfloat16 as its uint16 bits."""
        return buffer.view(np.uint16) if self.bfloat16_params else buffer

    @property
    def tiles(self):
        """Whether a step runs over the blocks (tiles that start at each tensor)."""
        return self.active and self.kind == "int8"

    @property
    def nbytes(self):
        """Bytes of state held (codes and absmax, bfloat16 bits, or the state itself)."""
        return self.buffer.nbytes + (0 if self.absmax is None else self.absmax.nbytes)

    def launch(self, rule, size, tiles, stream=0, tensors=None):
        """The step of ``rule`` (this state's rule, or another over the same state) over these
        arrays and a work table of ``tiles`` tiles, called as ``launch(param, buffer, grad,
        bounds, groups, table, scalars, step)``: the CPU kernel, or the CUDA kernel on
        ``stream``; a rule with per-tensor sums takes the ``tensors`` tables."""
        from ..kernels import quantized

        key0, key1 = np.uint64(self.seed & 0xFFFFFFFF), np.uint64(self.seed >> 32)
        offset = np.uint64(self.offset)
        if rule.tensorwise is not None:  # encoded state over float32 parameters
            return self._tensorwise_launch(rule, size, tiles, stream, tensors, key0, key1, offset)
        if self.device.name == "cuda":
            from ..kernels import cuda

            kernel = cuda.quantized_launch(self.kind if self.active else None, rule, tiles, stream,
                                           self.bfloat16_params)
        else:
            kernel = quantized.kernel_for_size(self.kind if self.active else None, rule, size, self.bfloat16_params)
        if self.kind == "int8":
            absmax = self.absmax

            def int8_launch(param, codes, grad, bounds, groups, table, scalars, step):
                kernel(param, codes, absmax, grad, bounds, groups, table, scalars, key0, key1, np.uint64(step), offset)

            return int8_launch

        def bfloat16_launch(param, state, grad, bounds, groups, table, scalars, step):
            kernel(param, state, grad, bounds, groups, table, scalars, key0, key1, np.uint64(step), offset)

        return bfloat16_launch

    def _tensorwise_launch(self, rule, size, tiles, stream, tensors, key0, key1, offset):
        """:meth:`launch` of a rule with per-tensor sums: its passes and scratch sums."""
        if self.device.name == "cuda":
            from ..kernels import cuda

            passes = cuda.EncodedTensorwiseLaunch(rule, self.kind, tiles, tensors, stream)
        else:
            from ..kernels import quantized

            passes = quantized.EncodedTensorwiseLaunch(rule, self.kind, size, tensors)
        absmax = self.absmax if self.kind == "int8" else self.buffer  # bfloat16: a placeholder, unread

        def tensorwise_launch(param, state, grad, bounds, groups, table, scalars, step):
            passes(param, state, absmax, grad, bounds, groups, table, scalars, key0, key1, np.uint64(step), offset)

        return tensorwise_launch

    def values(self):
        """``{name: float array}``: the state decoded (copies), in the rule's order."""
        from ..kernels import quantized

        if not self.active:
            return {name: self.buffer[k] for k, name in enumerate(self.rule.state)}
        if self.kind == "int8":
            decoded = quantized.decode_int8(_device.host_copy(self.buffer), _device.host_copy(self.absmax), self.blocks,
                                            self.rule.state)
        else:
            decoded = quantized.decode_bfloat16(_device.host_copy(self.buffer))
        return {name: decoded[k] for k, name in enumerate(self.rule.state)}

    def saved(self):
        """The state dict's ``state``: plain arrays (copies). int8: ``name`` (uint8 codes),
        ``name + ".absmax"`` (float32 per block) and ``name + ".map"`` (the 256 float32 values
        by code); bfloat16: ``name`` (uint16, the upper half of float32 bits)."""
        from ..kernels import quantized

        if not self.active:
            return {name: _device.host_copy(self.buffer[k]) for k, name in enumerate(self.rule.state)}
        arrays = {}
        codes = _device.host_copy(self.buffer)
        absmax = None if self.absmax is None else _device.host_copy(self.absmax)
        for k, name in enumerate(self.rule.state):
            arrays[name] = codes[k].copy()
            if self.kind == "int8":
                arrays[name + ".absmax"] = absmax[k].copy()
                arrays[name + ".map"] = quantized.row_codecs((name,))[0][0].copy()
        return arrays

    def load(self, kind, arrays, state_names):
        """Take saved ``arrays`` (checked) of encoding ``kind``: copied where the encodings
        match, else decoded to float32 and encoded again (int8 per block; bfloat16 rounded to
        nearest even, so that a load is deterministic)."""
        from ..kernels import quantized

        if kind == self.kind:
            for k, name in enumerate(state_names):
                _device.copy_into(self.buffer[k], arrays[name])
                if kind == "int8":
                    _device.copy_into(self.absmax[k], arrays[name + ".absmax"])
            return
        if kind is None or kind == "float32":
            values = np.stack([np.asarray(arrays[name], np.float32) for name in state_names]) if state_names else None
        elif kind == "int8":
            codes = np.stack([arrays[name] for name in state_names])
            absmax = np.stack([arrays[name + ".absmax"] for name in state_names])
            values = quantized.decode_int8(codes, absmax, block_bounds(self.params), state_names)
        else:
            values = quantized.decode_bfloat16(np.stack([arrays[name] for name in state_names]))
        if values is not None:
            self.write(values)

    def write(self, values):
        """Set the whole state from float ``values`` (rows, size), encoding it."""
        from ..kernels import quantized

        if not self.active:
            encoded = values.astype(self.dtype)
        elif self.kind == "int8":
            encoded, absmax = quantized.encode_reference(values, self.blocks, self.rule.state)
            for k in range(absmax.shape[0]):
                _device.copy_into(self.absmax[k], absmax[k])
        else:
            encoded = quantized.round_bfloat16_nearest(values)
        for k in range(encoded.shape[0]):
            _device.copy_into(self.buffer[k], encoded[k])


__all__ = ["MAX_SEED", "STATE_DTYPES", "Storage", "block_bounds", "check_seed", "check_state_dtype", "compute_dtype",
           "saved_arrays", "saved_kind"]
