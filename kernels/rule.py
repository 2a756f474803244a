"""The rule spec: what one update rule declares, and what every layer reads from it.

A :class:`Rule` names its per-element state buffers, its per-group table columns and its
launch scalars, in order, and gives its per-element source (:attr:`Rule.prologue`,
:attr:`Rule.update`, written once with :func:`~.elements.element`) and its float64 NumPy
reference. The CPU (:mod:`.cpu`) and CUDA (:mod:`.cuda`) targets compile the same source into
their own loops; the optimizers, their state dicts, the distributed shards and the tests read
the spec instead of a positional argument list.

Every kernel built from a rule, and its reference, takes the same arguments::

    param       1-D buffer (float32 or float64), updated in place
    state       2-D buffer of shape (len(rule.state), param.size), same dtype, updated in place:
                row k is the state buffer rule.state[k]
    grad        1-D buffer, same dtype and size as param
    bounds      uint64 (n_chunks + 1,): chunk c is elements bounds[c]:bounds[c + 1]
    groups      int64 (n_chunks,): chunk c belongs to parameter group groups[c]; a chunk of
                group -1 is left alone (its parameters do not step this time)
    table       float64 (n_groups, len(rule.group)): the per-group columns (fixed between
                configuration changes; on CUDA it stays on the device)
    scalars     tuple of Python floats (float64) in rule.scalars order: everything that may
                change from step to step, so that a step passes scalars only and the host
                makes no NumPy scalar

Per chunk, ``prologue(param, table[groups[c]], scalars)`` derives the chunk's constants in the
buffer's dtype: a group's learning rate as ``lr * lr_factor`` in float64, as the host would,
and every scalar, each rounded once; per element, ``update(p, state_values, g, chunk)``
returns ``(p, state_values)``. Chunks never straddle a group, so the result does not depend
on how a target cuts the buffer.

A rule whose step depends on sums over each parameter tensor (LAMB's trust ratio) declares
:class:`Tensorwise` as well and runs in two passes over tiles that start at each tensor's first
element (:data:`~.chunks.TENSOR_TILE`): the first stores the new state and sums two squares per
tensor (``update`` returns the direction ``u`` in place of the parameter), the second
recomputes ``u`` from the new state and takes the step, scaled per tensor. The sums are made
in one fixed order on every target (see :mod:`.tensorwise`), so CPU and CUDA agree bit for bit.
A rule that transforms each parameter matrix as a whole (Muon's Newton-Schulz iteration)
declares :class:`Matrixwise`: the first pass stores the new state and writes the direction
``u`` into a scratch buffer (:func:`stage`), the host then transforms each matrix of the
scratch buffer with BLAS (NumPy on the CPU, CuPy on CUDA), and the second pass steps from the
transformed direction, scaled per tensor (:func:`land`). Both passes are element source, so
CPU and CUDA run the same arithmetic around the matrix products.
A rule whose state is not one value per element (Adafactor's factored second moment: a row and
a column factor per matrix, a full variance per vector) declares :class:`Factored` and no state
rows: its state is one more buffer, laid out per tensor by :class:`~.factored.FactorLayout`,
and it runs the passes of :mod:`.factored` over each tensor's rows.
"""

import dataclasses
from collections.abc import Callable

from .elements import element

#: The per-group columns the optimizers know how to fill, in float64: each group's factor on
#: the learning rate and its weight decay.
GROUP_COLUMNS = ("lr_factor", "weight_decay")

@dataclasses.dataclass(frozen=True)
class Tensorwise:
    """The second pass of a rule with per-tensor sums: per element ``direction(p, state_values,
    chunk) -> u`` from the new state (what the first pass's ``update`` computed), per tensor
    ``ratio(param_squares, direction_squares) -> float64`` from the sums of ``p**2`` and
    ``u**2``, per tile ``scale(param, group_row, scalars, ratio)`` (the step size, rounded
    once to the buffer's dtype) and per element ``step(p, u, scale) -> p``."""

    direction: Callable
    ratio: Callable
    scale: Callable
    step: Callable


@dataclasses.dataclass(frozen=True)
class Matrixwise:
    """The matrix pass of a rule that transforms each parameter matrix whole: on the host,
    ``transform(matrices, scalars)`` (a :class:`~.matrixwise.Matrices` view of the scratch
    buffer, transformed in place, NumPy or CuPy); per tile ``scale(param, group_row, scalars,
    rows, cols)`` (the tile's tensor's shape, as float64) and per element ``step(p, o, chunk,
    scale) -> p`` from the transformed direction ``o``. The rule's ``update`` returns the
    direction ``u`` in place of the parameter."""

    transform: Callable
    scale: Callable
    step: Callable


@dataclasses.dataclass(frozen=True)
class Factored:
    """The element and per-tensor source of a rule with factored state (see :mod:`.factored`):
    ``factor(value, mean_square, chunk)`` updates a row or column factor from the mean of
    ``g**2`` over its row or column (in the buffer's dtype), ``row_mean(mean, chunk)`` clamps a
    matrix's mean row factor, ``estimate(row, col, row_mean)`` is a factored tensor's
    second moment at an element (the rule's ``update(v, g, chunk)`` is a vector's),
    ``direction(g, estimate, chunk)`` the update ``U``, ``alpha(param_squares, numel, lr_k,
    inverse_sqrt_step, eps2)`` and ``step_size(alpha, direction_squares, numel, d)`` the
    per-tensor float64 scale, and ``step(p, u, chunk, step_size)`` the step."""

    factor: Callable
    row_mean: Callable
    estimate: Callable
    direction: Callable
    alpha: Callable
    step_size: Callable
    step: Callable


@dataclasses.dataclass(frozen=True)
class Rule:
    """One update rule. See the module docstring for the kernel arguments it implies."""

    name: str
    state: tuple
    group: tuple
    scalars: tuple
    prologue: Callable
    update: Callable
    reference: Callable
    #: Set for rules with per-tensor sums (see the module docstring); None for element-wise rules.
    tensorwise: Tensorwise = None
    #: Set for rules that transform each parameter matrix whole (Muon); None otherwise.
    matrixwise: Matrixwise = None
    #: Set for rules with factored state (Adafactor); None otherwise.
    factored: Factored = None

    @property
    def per_tensor(self):
        """Whether the rule's passes run over tiles that start at each tensor (and need the
        tensor tables): a rule with :attr:`tensorwise`, :attr:`matrixwise` or :attr:`factored`."""
        return self.tensorwise is not None or self.matrixwise is not None or self.factored is not None

    def __post_init__(self):
        unknown = [column for column in self.group if column not in GROUP_COLUMNS]
        if unknown:
            raise ValueError(f"rule {self.name!r}: unknown group columns {unknown}; known: {GROUP_COLUMNS}")
        if len(self.state) > len(_LOADS) - 1:
            raise ValueError(f"rule {self.name!r}: at most {len(_LOADS) - 1} state buffers, got {len(self.state)}")

    def element_bindings(self):
        """What :func:`apply` means for this rule: its update, and loads and stores of its state."""
        n = len(self.state)
        return {"update": self.update, "load": _LOADS[n], "store": _STORES[n]}

    def finish_bindings(self):
        """What :func:`finish` means for this rule (a rule with :attr:`tensorwise`)."""
        return {"direction": self.tensorwise.direction, "step": self.tensorwise.step,
                "load": _LOADS[len(self.state)]}


@element
def apply(param, state, grad, i, chunk):
    """One element: load, update, store. ``update``, ``load`` and ``store`` are bound per rule."""
    p, values = update(param[i], load(state, i), grad[i], chunk)  # noqa: F821
    param[i] = p
    store(state, i, values)  # noqa: F821


@element
def measure(param, state, grad, i, chunk):
    """The first pass of a per-tensor rule at one element: the new state stored; returns the
    parameter (unchanged) and the direction ``u``."""
    p = param[i]
    u, values = update(p, load(state, i), grad[i], chunk)  # noqa: F821
    store(state, i, values)  # noqa: F821
    return p, u


@element
def finish(param, state, i, chunk, scale):
    """The second pass at one element: the direction again from the new state, and the step."""
    p = param[i]
    param[i] = step(p, direction(p, load(state, i), chunk), scale)  # noqa: F821


def matrix_bindings(rule):
    """What :func:`stage` and :func:`land` mean for ``rule`` (a rule with :attr:`Rule.matrixwise`)."""
    n = len(rule.state)
    return ({"update": rule.update, "load": _LOADS[n], "store": _STORES[n]}, {"step": rule.matrixwise.step})


@element
def stage(param, state, grad, work, i, chunk):
    """The first pass of a matrix rule at one element: the new state stored, the direction
    written to the scratch buffer ``work``."""
    u, values = update(param[i], load(state, i), grad[i], chunk)  # noqa: F821
    store(state, i, values)  # noqa: F821
    work[i] = u


@element
def land(param, work, i, chunk, scale):
    """The second pass of a matrix rule at one element: the step from the transformed direction."""
    param[i] = step(param[i], work[i], chunk, scale)  # noqa: F821


@element
def _load0(state, i):
    return ()


@element
def _load1(state, i):
    return (state[0, i],)


@element
def _load2(state, i):
    return state[0, i], state[1, i]


@element
def _load3(state, i):
    return state[0, i], state[1, i], state[2, i]


@element
def _store0(state, i, values):
    pass


@element
def _store1(state, i, values):
    state[0, i] = values[0]


@element
def _store2(state, i, values):
    state[0, i], state[1, i] = values


@element
def _store3(state, i, values):
    state[0, i], state[1, i], state[2, i] = values


_LOADS = (_load0, _load1, _load2, _load3)
_STORES = (_store0, _store1, _store2, _store3)
