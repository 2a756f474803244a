"""Per-element expansion of a chunk table, for the float64 numpy references."""

import numpy as np


def expand(group_values, chunk_bounds, chunk_group):
    """The value of a per-group array at every element, as float64.

    Chunk ``c`` covers elements ``chunk_bounds[c]:chunk_bounds[c + 1]`` and belongs to group
    ``chunk_group[c]``.
    """
    per_chunk = np.asarray(group_values, dtype=np.float64)[np.asarray(chunk_group, dtype=np.int64)]
    return np.repeat(per_chunk, np.diff(np.asarray(chunk_bounds, dtype=np.int64)))


def as_float64(*buffers):
    """float64 copies of ``buffers``: the references compute in float64 whatever the input."""
    return tuple(np.asarray(b, dtype=np.float64).copy() for b in buffers)
