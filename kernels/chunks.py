"""The chunk table: how a flat buffer is cut into units of parallel work.

A kernel receives ``chunk_bounds`` (uint64, length ``n_chunks + 1``) and ``chunk_group``
(int64, length ``n_chunks``): chunk ``c`` covers elements ``chunk_bounds[c]`` to
``chunk_bounds[c + 1]`` and takes its per-group hyperparameters from row ``chunk_group[c]`` of
the group arrays. Chunks hold at most :data:`CHUNK_SIZE` elements and never straddle two
groups, so one kernel call updates every group, the inner loop over a chunk has loop-invariant
hyperparameters (it vectorises), and no result depends on the number of threads.

This module needs only numpy: the façade imports it without importing Numba.

The bounds are unsigned on purpose: with a signed index Numba emits a negative-index check on
every access, which stops LLVM from vectorising the loop (measured: 2.7x slower).
"""

import numpy as np

#: Elements per unit of parallel work: chunks hold at most this many elements and threads
#: take whole chunks, so no result depends on the thread count.
CHUNK_SIZE = 16384


#: Elements per tile of a rule with per-tensor sums (LAMB's norms), on every target: tiles start
#: at each tensor's first element, so the sums do not depend on the target or on the groups.
TENSOR_TILE = 2048


def chunk_table(segments, chunk_size=CHUNK_SIZE, merge=True):
    """Build the chunk table from ``(start, stop, group)`` segments covering a buffer in order.

    Parameters
    ----------
    segments : iterable of (int, int, int)
        Consecutive, non-overlapping ``[start, stop)`` ranges and the group index of each.
        Neighbours of one group are merged first (many small tensors make few chunks), and
        empty segments are skipped.
    chunk_size : int
        The largest number of elements in one chunk.
    merge : bool
        ``False``: every segment is cut on its own, so a chunk never straddles two segments
        and the chunks are the same whatever the groups (rules with per-tensor sums).

    Returns
    -------
    chunk_bounds : ndarray of uint64
    chunk_group : ndarray of int64
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size=}")
    runs = []
    expected_start = 0
    for start, stop, group in segments:
        if start != expected_start or stop < start:
            raise ValueError(
                f"segments must be consecutive ranges from 0; got ({start}, {stop}) "
                f"after an end of {expected_start}"
            )
        expected_start = stop
        if merge and runs and runs[-1][2] == group:
            runs[-1][1] = stop
        else:
            runs.append([start, stop, group])
    bounds = [0]
    groups = []
    for start, stop, group in runs:
        for chunk_start in range(start, stop, chunk_size):
            bounds.append(min(chunk_start + chunk_size, stop))
            groups.append(group)
    return np.asarray(bounds, dtype=np.uint64), np.asarray(groups, dtype=np.int64)


def tensor_tiles(segments, tile_size=None):
    """For ``chunk_table(segments, tile_size, merge=False)``: ``(tile_tensor, tensor_tiles)``,
    the tensor (non-empty segment, counted in order) of each tile, and each tensor's first tile
    with the tile count appended (int64). ``tile_size`` defaults to :data:`TENSOR_TILE` (read
    when called)."""
    tile_size = TENSOR_TILE if tile_size is None else tile_size
    tile_tensor, tensor_tiles = [], [0]
    for start, stop, _ in segments:
        if stop > start:
            count = -(-(stop - start) // tile_size)
            tile_tensor += [len(tensor_tiles) - 1] * count
            tensor_tiles.append(tensor_tiles[-1] + count)
    return np.asarray(tile_tensor, dtype=np.int64), np.asarray(tensor_tiles, dtype=np.int64)
