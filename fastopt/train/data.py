"""Data for ``fastopt train`` and ``fastopt predict``: the bundled digits set, a user's CSV or
NPZ, the task (classification or regression), labels of any kind, feature (and target)
standardisation, and seeded splits. Every error names the file, and the row and column where
there is one."""

import csv
import math
import os
import zipfile

import numpy as np

TASKS = ("auto", "classification", "regression")
#: ``--task auto`` takes whole-number targets with at most this many distinct values as classes.
MAX_AUTO_CLASSES = 20


class Table:
    """A loaded data file: features ``x`` (float64, 2-D), the ``target`` column as read (floats
    or strings) or None where the file has none, and the column names."""

    def __init__(self, x, target, features, target_name, source):
        self.x, self.target, self.features, self.target_name, self.source = x, target, features, target_name, source


def load_digits():
    """scikit-learn's bundled 8x8 digits (1,797 samples, no download), as a :class:`Table`."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise ImportError("the default data set needs scikit-learn: pip install 'fastopt[train]'") from None
    digits = sklearn_digits()
    features = [f"pixel{k}" for k in range(digits.data.shape[1])]
    return Table(digits.data.astype(np.float64), digits.target.astype(np.float64), features, "digit",
                 "digits (scikit-learn, bundled)")


def load_table(path, target=None, *, need_target=True):
    """A :class:`Table` from a CSV file with a header row, or an NPZ file.

    CSV: ``target`` names the target column (default: the last); every other cell must be a
    number, the target's may be any text (class names). NPZ: arrays ``X`` (or ``x``) and
    ``y`` (``target`` renames ``y``), read with ``allow_pickle=False``. With ``need_target``
    False (``fastopt predict``) a missing target column is allowed.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"data file {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"data file {path!r} is a directory; give a .csv or .npz file")
    if path.endswith(".npz"):
        return _load_npz(path, target, need_target)
    return _load_csv(path, target, need_target)


def _load_npz(path, target, need_target):
    try:
        # Our own handle: np.load leaves its file open when the archive is broken.
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
            x_name = "X" if "X" in data.files else "x"
            y_name = target or "y"
            if x_name not in data.files:
                raise ValueError(f"{path} lacks an array X (or x); it holds {data.files}")
            x = np.asarray(data[x_name])
            y = np.asarray(data[y_name]) if y_name in data.files else None
    except (zipfile.BadZipFile, EOFError, OSError, AttributeError) as error:
        raise ValueError(f"{path} is not a readable .npz file ({type(error).__name__}: {error})") from None
    if y is None and (need_target or target):
        raise ValueError(f"{path} lacks the target array {y_name!r}")
    if x.ndim != 2:
        raise ValueError(f"{path}: X must be 2-D (samples, features), got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.number) and not np.issubdtype(x.dtype, np.complexfloating)):
        raise ValueError(f"{path}: X must hold real numbers, got dtype {x.dtype}")
    if y is not None:
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"{path}: {y_name} must be 1-D with one value per row of X ({len(x)}), got shape {y.shape}")
        y = y.astype(np.float64) if np.issubdtype(y.dtype, np.number) else y.astype(str)
    return Table(x.astype(np.float64), y, [f"x{k}" for k in range(x.shape[1])], y_name, path)


def _load_csv(path, target, need_target):
    try:
        with open(path, newline="") as stream:
            rows = list(csv.reader(stream))
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text (CSV) file") from None
    if len(rows) < 2:
        raise ValueError(f"{path} needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    if target is not None and target not in header:
        if need_target:
            raise ValueError(f"{path} has no column {target!r}; the columns are {header}")
        column = None
    else:
        column = len(header) - 1 if target is None else header.index(target)
    if column is not None and not need_target and target is None:
        column = None  # predict: without --target every column is a feature
    features = [h for c, h in enumerate(header) if c != column]
    if not features:
        raise ValueError(f"{path} has no feature columns besides the target {header[column]!r}")
    x = np.empty((len(rows) - 1, len(features)), dtype=np.float64)
    y = []
    for r, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ValueError(f"{path} row {r} has {len(row)} cells, the header {len(header)}")
        k = 0
        for c, cell in enumerate(row):
            if c == column:
                y.append(cell.strip())
                continue
            try:
                x[r - 2, k] = float(cell)
            except ValueError:
                raise ValueError(f"{path} row {r}, column {header[c]!r}: {cell!r} is not a number") from None
            k += 1
    return Table(x, None if column is None else _as_numbers_if_possible(y), features,
                 None if column is None else header[column], path)


def _as_numbers_if_possible(values):
    try:
        return np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        return np.array(values, dtype=str)


def choose_task(target, task, name="the target"):
    """``"classification"`` or ``"regression"`` for ``task`` (``"auto"`` decides from the values:
    text or whole numbers with few distinct values are classes, fractions are a regression;
    whole numbers with many distinct values are refused, naming ``--task``)."""
    if task != "auto":
        if task == "regression" and target.dtype.kind not in "fiu":
            raise ValueError(f"--task regression: {name} holds text (e.g. {target[0]!r}), not numbers")
        return task
    if target.dtype.kind not in "fiu":
        return "classification"
    if not np.isfinite(target).all():
        raise ValueError(f"{name} holds NaN or inf")
    distinct = np.unique(target)
    if not np.array_equal(distinct, np.round(distinct)):
        return "regression"
    if len(distinct) <= MAX_AUTO_CLASSES:
        return "classification"
    raise ValueError(f"--task: {name} holds {len(distinct)} distinct whole numbers, too many to guess whether "
                     "they are classes or a quantity; say --task classification or --task regression")


class Labels:
    """The classes of a target column, whatever they are (names, 1-based or sparse integers),
    mapped to 0..C-1 in sorted order; kept in the checkpoint to turn predictions back."""

    def __init__(self, values, kind):
        self.values, self.kind = list(values), kind

    @classmethod
    def fit(cls, target):
        kind = "number" if target.dtype.kind in "fiu" else "text"
        if kind == "number" and not np.isfinite(target).all():
            raise ValueError("the target holds NaN or inf")
        classes = np.unique(target)
        return cls([float(v) for v in classes] if kind == "number" else [str(v) for v in classes], kind)

    def encode(self, target):
        lookup = {v: k for k, v in enumerate(self.values)}
        values = target.tolist() if self.kind == "text" else [float(v) for v in target]
        unknown = sorted({str(v) for v in values if v not in lookup})
        if unknown:
            raise ValueError(f"the target holds classes the model does not know: {unknown[:5]}")
        return np.array([lookup[v] for v in values], dtype=np.int64)

    def decode(self, indices):
        return [self.format(self.values[int(k)]) for k in indices]

    def format(self, value):
        if self.kind == "number" and float(value).is_integer():
            return str(int(value))
        return str(value)

    def to_dict(self):
        return {"values": self.values, "kind": self.kind}

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict) or data.get("kind") not in ("number", "text") or not isinstance(data.get("values"), list):
            raise ValueError(f"labels must be {{'values': [...], 'kind': 'number' or 'text'}}, got {data!r}")
        return cls(data["values"], data["kind"])

    def __len__(self):
        return len(self.values)


class Scaling:
    """Standardisation ``(x - mean) / std`` per column, fitted on the training rows (a column
    with no spread keeps std 1); identity when off. Kept in the checkpoint."""

    def __init__(self, mean, std):
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)

    @classmethod
    def fit(cls, x, enabled=True):
        if not enabled:
            width = x.shape[1] if x.ndim == 2 else 1
            return cls(np.zeros(width), np.ones(width))
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > 0, std, 1.0))

    def apply(self, x):
        return (x - self.mean) / self.std

    def undo(self, x):
        return x * self.std + self.mean

    def to_dict(self):
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data, width=None):
        try:
            mean, std = np.asarray(data["mean"], np.float64), np.asarray(data["std"], np.float64)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"scaling must be {{'mean': [...], 'std': [...]}}, got {data!r}") from None
        if mean.shape != std.shape or mean.ndim != 1 or (width is not None and len(mean) != width) \
                or not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ValueError(f"scaling holds {len(mean)} finite means and positive spreads, not a valid one")
        return cls(mean, std)


def split(x, y, fraction, seed, stratify=True):
    """A seeded split: ``(x_a, y_a, x_b, y_b)`` with about ``fraction`` in ``b``, stratified
    by class for classification."""
    rng = np.random.default_rng([seed, 2])
    if stratify:
        b = []
        for label in np.unique(y):
            members = np.flatnonzero(y == label)
            rng.shuffle(members)
            b.extend(members[:int(round(len(members) * fraction))])
        in_b = np.zeros(len(y), bool)
        in_b[b] = True
    else:
        order = rng.permutation(len(y))
        in_b = np.zeros(len(y), bool)
        in_b[order[:int(round(len(y) * fraction))]] = True
    return x[~in_b], y[~in_b], x[in_b], y[in_b]


def r2_and_rmse(prediction, target):
    """The coefficient of determination and the root mean squared error (float64)."""
    prediction, target = np.asarray(prediction, np.float64).reshape(-1), np.asarray(target, np.float64).reshape(-1)
    residual = float(np.sum((prediction - target) ** 2))
    spread = float(np.sum((target - target.mean()) ** 2)) if len(target) else 0.0
    r2 = 1.0 - residual / spread if spread > 0 else math.nan
    return r2, math.sqrt(residual / len(target)) if len(target) else math.nan
