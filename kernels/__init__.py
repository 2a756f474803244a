"""fastopt's compute layer: Numba kernels over flat buffers, and their float64 references.

Arithmetic only: every kernel takes 1-D C-contiguous buffers of one float dtype and scalars of
that dtype, updates the buffers in place and returns nothing (the penalty returns a float).
The façade (:mod:`fastopt`) validates its inputs; the kernels trust them. Nothing here imports
from the façade.

Modules: :mod:`.sgd`, :mod:`.adam`, :mod:`.rmsprop` (update rules), :mod:`.penalty` (the L2
penalty), :mod:`.chunks` (the chunk table). They are imported on first use, not here, so that
``import fastopt`` does not pay for importing Numba.
"""
