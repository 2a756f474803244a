"""Data for ``fastopt train``: the bundled digits set, a user's CSV or NPZ, and seeded splits."""

import csv
import os

import numpy as np


def load_digits():
    """scikit-learn's bundled 8x8 digits (1,797 samples, no download): X scaled to [0, 1]."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise ImportError("the default data set needs scikit-learn: pip install 'fastopt[train]'") from None
    digits = sklearn_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)


def load_table(path, target=None):
    """``(X, y)`` from a CSV file with a header row or an NPZ file.

    CSV: every cell numeric; ``target`` names the label column (default: the last). NPZ:
    arrays ``X`` (or ``x``) and ``y`` (``target`` renames ``y``). Read with
    ``allow_pickle=False``. Errors name the file, row and column.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"data file {path!r} does not exist")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            x_name = "X" if "X" in data.files else "x"
            y_name = target or "y"
            missing = [n for n in (x_name, y_name) if n not in data.files]
            if missing:
                raise ValueError(f"{path} lacks arrays {missing}; it holds {data.files}")
            return np.asarray(data[x_name]), np.asarray(data[y_name])
    with open(path, newline="") as stream:
        rows = list(csv.reader(stream))
    if len(rows) < 2:
        raise ValueError(f"{path} needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    column = len(header) - 1 if target is None else (header.index(target) if target in header else None)
    if column is None:
        raise ValueError(f"{path} has no column {target!r}; the columns are {header}")
    values = np.empty((len(rows) - 1, len(header)), dtype=np.float64)
    for r, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ValueError(f"{path} row {r} has {len(row)} cells, the header {len(header)}")
        for c, cell in enumerate(row):
            try:
                values[r - 2, c] = float(cell)
            except ValueError:
                raise ValueError(f"{path} row {r}, column {header[c]!r}: {cell!r} is not a number") from None
    y = values[:, column]
    x = np.delete(values, column, axis=1).astype(np.float32)
    return x, y


def class_labels(y):
    """``y`` as int64 class labels 0..C-1, refusing anything else."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or not np.array_equal(y, np.round(y)):
            raise ValueError("labels must be whole numbers (class indices), got fractions, NaN or inf")
    elif not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be numbers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise ValueError(f"labels must be >= 0, got {y.min()}")
    return y


def split(x, y, fraction, seed):
    """A seeded, stratified split: ``(x_a, y_a, x_b, y_b)`` with about ``fraction`` in ``b``."""
    rng = np.random.default_rng([seed, 2])
    b = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        rng.shuffle(members)
        b.extend(members[:int(round(len(members) * fraction))])
    in_b = np.zeros(len(y), bool)
    in_b[b] = True
    return x[~in_b], y[~in_b], x[in_b], y[in_b]
