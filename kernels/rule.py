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
    groups      int64 (n_chunks,): chunk c belongs to parameter group groups[c]
    table       float64 (n_groups, len(rule.group)): the per-group columns (fixed between
                configuration changes; on CUDA it stays on the device)
    scalars     tuple in rule.scalars order: "float64" ones as float64, "param" ones in the
                buffer's dtype (everything that may change from step to step is here, so a
                step passes scalars only)

Per chunk, ``prologue(param, table[groups[c]], scalars)`` derives the chunk's constants (a
group's learning rate, in float64 and rounded once to the buffer's dtype); per element,
``update(p, state_values, g, chunk, scalars)`` returns ``(p, state_values)``. Chunks never
straddle a group, so the result does not depend on how a target cuts the buffer.

State that is not one value per element (factored moments, per-tensor norms) is not declared
yet: such a rule adds a kind of state here and a pass to each target, not special cases in the
façade.
"""

import dataclasses
from collections.abc import Callable

from .elements import element

#: The per-group columns the optimizers know how to fill, in float64: each group's factor on
#: the learning rate and its weight decay.
GROUP_COLUMNS = ("lr_factor", "weight_decay")
#: The dtypes a launch scalar may have: float64 whatever the buffers, or the buffers' own.
SCALAR_DTYPES = ("float64", "param")


@dataclasses.dataclass(frozen=True)
class Scalar:
    name: str
    dtype: str = "param"

    def __post_init__(self):
        if self.dtype not in SCALAR_DTYPES:
            raise ValueError(f"Scalar {self.name!r}: dtype must be one of {SCALAR_DTYPES}, got {self.dtype!r}")


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

    def __post_init__(self):
        unknown = [column for column in self.group if column not in GROUP_COLUMNS]
        if unknown:
            raise ValueError(f"rule {self.name!r}: unknown group columns {unknown}; known: {GROUP_COLUMNS}")
        if len(self.state) > len(_LOADS) - 1:
            raise ValueError(f"rule {self.name!r}: at most {len(_LOADS) - 1} state buffers, got {len(self.state)}")

    @property
    def scalar_names(self):
        return tuple(scalar.name for scalar in self.scalars)

    def element_bindings(self):
        """What :func:`apply` means for this rule: its update, and loads and stores of its state."""
        n = len(self.state)
        return {"update": self.update, "load": _LOADS[n], "store": _STORES[n]}


@element
def apply(param, state, grad, i, chunk, scalars):
    """One element: load, update, store. ``update``, ``load`` and ``store`` are bound per rule."""
    p, values = update(param[i], load(state, i), grad[i], chunk, scalars)  # noqa: F821
    param[i] = p
    store(state, i, values)  # noqa: F821


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
