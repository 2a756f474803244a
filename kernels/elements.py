"""Element functions: per-element Python source, compiled for each target from one text.

An update rule, the dropout decision and the L2 penalty's square are written once, as plain
Python functions marked :func:`element`. They call the primitives of :mod:`.primitives`
(``fma``, ``mul``, ``sqrt``) and other element functions by name. A :class:`Target` compiles
such a function by copying it with those names rebound: the primitives to the target's own,
each element function it calls to that function's build for the target (recursively), and
any names the caller binds (a kernel template's ``update`` becomes a rule's). The source
never changes; only what its names mean does, so the CPU and the GPU cannot drift apart.
"""

import types

from . import primitives


def element(function):
    """Mark ``function`` as per-element source that a :class:`Target` may compile."""
    function.__fastopt_element__ = True
    return function


def is_element(value):
    return getattr(value, "__fastopt_element__", False)


def rebound(function, names, name=None):
    """A copy of ``function`` whose globals ``names`` override (and, given ``name``, renamed).
    Without ``names`` the copy shares the module's globals (names defined later resolve)."""
    namespace = {**function.__globals__, **names} if names else function.__globals__
    copy = types.FunctionType(function.__code__, namespace, name or function.__name__, function.__defaults__,
                              function.__closure__)
    copy.__qualname__ = name or function.__qualname__
    copy.__module__, copy.__doc__ = function.__module__, function.__doc__
    return copy


class Target:
    """How one compile target builds element functions.

    Parameters
    ----------
    name : str
    primitives : dict
        The target's ``fma``, ``mul`` and ``sqrt``.
    compile_element : callable
        Compiles a rebound copy of an element function as a helper the target's kernels
        call: ``numba.njit`` on the CPU (LLVM inlines it; see :mod:`.cpu` for why not Numba's
        ``inline="always"``), an inlined CUDA device function, the function itself under the
        CUDA simulator.
    """

    def __init__(self, name, primitives_, compile_element):
        missing = set(primitives.NAMES) - set(primitives_)
        if missing:
            raise ValueError(f"target {name!r} lacks the primitives {sorted(missing)}")
        self.name = name
        self.primitives = dict(primitives_)
        self._compile_element = compile_element
        self._built = {}

    def names(self, function, bindings):
        """What the global names ``function`` uses mean on this target."""
        names = {}
        for name in function.__code__.co_names:
            if name in bindings:
                value = bindings[name]
                names[name] = self.element(value) if is_element(value) else value
            elif name in self.primitives:
                names[name] = self.primitives[name]
            elif is_element(function.__globals__.get(name)):
                names[name] = self.element(function.__globals__[name])
        return names

    def element(self, function, **bindings):
        """``function`` built for this target, with ``bindings`` for some of its names."""
        key = (function, tuple(sorted(bindings.items(), key=lambda item: item[0])))
        built = self._built.get(key)
        if built is None:
            built = self._built[key] = self._compile_element(rebound(function, self.names(function, bindings)))
        return built

    def __repr__(self):
        return f"Target({self.name!r})"
