"""Checkpoints: one ``.npz`` file of arrays plus JSON metadata, written atomically, never
unpickled."""

import json
import os
import tempfile

import numpy as np

META = "__meta__"
CHECKPOINT_FORMAT = 1


def save_checkpoint(path, arrays, meta):
    """Write ``arrays`` (name -> ndarray) and ``meta`` (JSON-compatible) to ``path`` atomically.

    The data goes to a temporary file in the same folder, is flushed and fsynced, and then
    replaces ``path`` in one ``os.replace``: a crash at any point leaves either the previous
    checkpoint or the new one, never a torn file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    blob = np.frombuffer(json.dumps({"format": CHECKPOINT_FORMAT, **meta}).encode(), dtype=np.uint8)
    handle, temporary = tempfile.mkstemp(prefix=".checkpoint-", suffix=".npz.tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays, **{META: blob})
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint`: ``(arrays, meta)``."""
    with np.load(os.fspath(path), allow_pickle=False) as data:
        if META not in data.files:
            raise ValueError(f"{path} is not a fastopt checkpoint (no metadata)")
        meta = json.loads(bytes(data[META]).decode())
        arrays = {name: data[name] for name in data.files if name != META}
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} has checkpoint format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    return arrays, meta
