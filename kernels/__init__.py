"""fastopt's compute layer: Numba kernels over flat buffers, and their float64 references.

Arithmetic only: every kernel takes 1-D C-contiguous buffers (a rule's state: one 2-D buffer,
a row per state buffer) and scalars, updates the buffers in place and returns nothing (the
penalty returns a float). The façade (:mod:`fastopt`) validates its inputs; the kernels trust
them and check nothing. Nothing here imports from the façade.

Modules: :mod:`.rule` (the rule spec) and :mod:`.rules` (the update rules, one file per family,
each with its per-element source and float64 reference); :mod:`.primitives` (``fma``, ``mul``,
``sqrt``, bit casts) and :mod:`.elements` (how a target compiles per-element source); the two
targets :mod:`.cpu` and :mod:`.cuda`; :mod:`.quantized` (int8 and bfloat16 optimizer state
around any element-wise rule); :mod:`.philox` and :mod:`.dropout` (Philox dropout),
:mod:`.penalty` (the L2 penalty), :mod:`.chunks` (chunk and tile tables) and :mod:`.roofline`.
They are imported on first use, not here, so that ``import fastopt`` does not pay for
importing Numba (:mod:`.rule`, :mod:`.rules` and :mod:`.chunks` need only NumPy).
"""
