"""Training loop: seeded mini-batches, optimizer and scheduler, metrics, callbacks, checkpoints."""

import inspect
import math
import os
import sys
import time

import numpy as np

from .. import device as _device
from ..distributed import DistributedOptimizer
from ..nn import arrays as _backend
from ..nn.losses import BinaryCrossEntropyWithLogits, SoftmaxCrossEntropy, cost_gradient
from .checkpoint import load_checkpoint, save_checkpoint


class StopTraining(Exception):
    """Raised by a callback to end :meth:`Trainer.fit` after the current epoch."""


class EarlyStopping:
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, monitor="val_loss", patience=5, mode="min", min_delta=0.0):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got mode={mode!r}")
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got patience={patience!r}")
        self.monitor, self.patience, self.mode, self.min_delta = monitor, patience, mode, min_delta
        self.best, self.bad_epochs = None, 0

    def on_epoch_end(self, trainer, record):
        value = record.get(self.monitor)
        if value is None:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which the history lacks: {sorted(record)}")
        sign = 1 if self.mode == "min" else -1
        if self.best is None or sign * (self.best - value) > self.min_delta:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                raise StopTraining(f"{self.monitor} has not improved for {self.patience} epochs")


class Checkpoint:
    """Save the whole training state to ``folder/checkpoint.npz`` after every ``every``-th epoch."""

    def __init__(self, folder, every=1):
        self.path = os.path.join(os.fspath(folder), "checkpoint.npz")
        self.every = every

    def on_epoch_end(self, trainer, record):
        if trainer.epoch % self.every == 0:
            trainer.save(self.path)


#: The steps a dropout mask can be numbered by: the step is a 32-bit Philox counter word.
DROPOUT_STEPS = 2**32


def check_metadata(meta, path):
    """Refuse checkpoint metadata of the wrong types or ranges, naming the key."""
    for key in ("model", "optimizer", "epoch", "step", "history", "rng"):
        if key not in meta:
            raise ValueError(f"checkpoint {path} lacks {key!r}: not a trainer checkpoint")
    for key in ("epoch", "step"):
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            raise ValueError(f"checkpoint {path}: {key} must be an int >= 0, got {value!r}")
    history = meta["history"]
    if not isinstance(history, list) or len(history) != meta["epoch"] or not all(
            isinstance(record, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                             for v in record.values()) for record in history):
        raise ValueError(f"checkpoint {path}: history must be a list of {meta['epoch']} records of numbers "
                         f"(one per epoch), got {str(history)[:80]}")
    if not isinstance(meta["rng"], dict) or not isinstance(meta.get("run", {}), (dict, type(None))):
        raise ValueError(f"checkpoint {path}: rng and run must be mappings")


def _checks_positive(name, value):
    from .. import checks

    return checks.positive(name, value)


def is_classification(loss):
    return isinstance(loss, (SoftmaxCrossEntropy, BinaryCrossEntropyWithLogits))


def correct_count(outputs, targets, loss):
    """How many predictions are right, for a classification loss (NumPy or CuPy arrays)."""
    return int(correct_sum(outputs, targets, loss))


def correct_sum(outputs, targets, loss):
    """:func:`correct_count` as a 0-d array of the outputs' library (on the GPU, it stays there)."""
    if isinstance(loss, SoftmaxCrossEntropy):
        return (outputs.argmax(axis=1) == targets).sum()
    return ((outputs > 0) == (targets > 0.5)).sum()


class _DeviceSums:
    """An epoch's running loss and correct count kept where the model computes: added on the
    GPU batch by batch and brought to the host only when read (at a progress-bar refresh and
    at the end of the epoch), instead of two synchronising copies per batch. float64 sums of
    the float64 conversion of each batch's sum: the same additions the host does."""

    #: Seconds between two reads for the progress bar.
    REFRESH = 0.5

    def __init__(self, xp):
        self._xp = xp
        self._loss = xp.zeros((), dtype=np.float64)
        self._correct = xp.zeros((), dtype=np.int64)
        self._read_at = time.monotonic()

    def add(self, batch_loss, batch_correct):
        self._loss += batch_loss.astype(np.float64)
        self._correct += batch_correct

    def due(self):
        """Whether the progress bar should show fresh values (reading them synchronises)."""
        now = time.monotonic()
        if now - self._read_at < self.REFRESH:
            return False
        self._read_at = now
        return True

    def read(self):
        return float(self._loss), int(self._correct)


def _takes_keyword(function, name):
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin, a C extension)
        return False
    return name in parameters and parameters[name].kind in (inspect.Parameter.KEYWORD_ONLY,
                                                            inspect.Parameter.POSITIONAL_OR_KEYWORD)


class Trainer:
    """Trains a model (e.g. :class:`~fastopt.MLP`) with a fastopt optimizer.

    Parameters
    ----------
    model : object with ``params``, ``forward(x, training=, step=)``, ``backward(grad)``, ``config``
        (``backward(grad, input_grad=False)`` where its backward takes that keyword, as
        :class:`~fastopt.MLP`'s does: it need not compute d cost / d input)
    optimizer : a fastopt optimizer over ``model.params``
    loss : a :class:`~fastopt.losses.Loss`
    scheduler : Scheduler or None, stepped per epoch, or per batch with ``per_batch=True``
    plateau : ReduceLROnPlateau or None, stepped per epoch with ``plateau_metric``
    callbacks : objects with ``on_epoch_end(trainer, record)``
        (:class:`EarlyStopping`, :class:`Checkpoint`)
    seed : int, seeds shuffling and the validation split
    progress : bool or None, a tqdm bar with live loss and lr (None: only on a terminal)
    kernel_threads : int
        Threads for fastopt's kernels (the optimizer step, a custom model's) inside
        :meth:`fit`; default 1. An :class:`~fastopt.MLP` runs its own passes (ReLU, dropout)
        on one thread whatever this says.
        Between the model's BLAS matrix products, whose threads keep spinning for a while after
        each call, a multi-threaded kernel waits for the cores: measured on 2 cores, dropout
        over 256 x 512 took 5.6 ms right after a matmul and 0.17 ms alone, and an epoch of a
        256-512-512-10 MLP took 3.6 s with 2 kernel threads and 0.66 s with 1.

    A model on the GPU (``MLP(..., device="cuda")``) trains there: the data are copied to the
    GPU once per :meth:`fit`, each batch is gathered there, and only the batch's loss and
    number of correct predictions come back to the host (the shuffling is the CPU's, so both
    devices see the same batches).

    With a :mod:`fastopt.distributed` optimizer the trainer runs data-parallel: call the same
    code on every rank (``mpiexec -n N``) with the same data and seed. Each rank takes its
    slice of every batch (the dropout masks of those rows are the whole batch's), the optimizer
    averages the gradients, and the losses and accuracies are summed over the ranks; only rank
    0 prints, shows a progress bar and writes checkpoints. :meth:`fit`, :meth:`evaluate` and
    :meth:`save` are then collective; :meth:`predict` is not.
    """

    def __init__(self, model, optimizer, loss, *, scheduler=None, per_batch=False, plateau=None,
                 plateau_metric="val_loss", callbacks=(), seed=0, progress=None, log=None,
                 kernel_threads=1, target_scale=1.0, metadata=None):
        if optimizer.params is not model.params:
            raise ValueError("optimizer must be built over model.params")
        self.model, self.optimizer, self.loss = model, optimizer, loss
        # A model whose backward takes input_grad (an MLP) skips d cost / d input, which
        # training never uses; others get backward(g).
        self._params_only = _takes_keyword(model.backward, "input_grad")
        self.backend = getattr(model, "backend", None) or _backend.for_device(model.params.device)
        self.scheduler, self.per_batch = scheduler, per_batch
        self.plateau, self.plateau_metric = plateau, plateau_metric
        self.callbacks = list(callbacks)
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        self.progress, self.log = progress, log
        if isinstance(kernel_threads, bool) or not isinstance(kernel_threads, int) or kernel_threads < 1:
            raise ValueError(f"kernel_threads must be an int >= 1, got kernel_threads={kernel_threads!r}")
        self.kernel_threads = kernel_threads
        if isinstance(optimizer, DistributedOptimizer):
            self.comm, self.rank, self.size = optimizer.comm, optimizer.rank, optimizer.size
        else:
            self.comm, self.rank, self.size = None, 0, 1
        self.epoch, self.step = 0, 0
        self.history = []
        self.stop_reason = None
        self.target_scale = _checks_positive("target_scale", target_scale)
        #: JSON-compatible data saved with every checkpoint and restored by :meth:`load` (what
        #: ``fastopt train`` needs to resume and predict: its flags, scalings, label names).
        self.metadata = {} if metadata is None else dict(metadata)

    # -- data ----------------------------------------------------------------------------------

    def _check_data(self, x, y, name):
        x = np.asarray(x)
        y = np.asarray(y)
        if x.ndim != 2:
            raise ValueError(f"{name} X must be 2-D (samples, features), got shape {x.shape}")
        if len(x) != len(y):
            raise ValueError(f"{name} X and y must have the same length, got {len(x)} and {len(y)}")
        if not np.isfinite(x).all():
            raise ValueError(f"{name} X holds NaN or inf (first at row {np.argwhere(~np.isfinite(x))[0][0]})")
        if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
            raise ValueError(f"{name} y holds NaN or inf")
        if isinstance(self.loss, SoftmaxCrossEntropy):
            classes = self.model.sizes[-1]
            if not np.issubdtype(y.dtype, np.integer) or (len(y) and (y.min() < 0 or y.max() >= classes)):
                raise ValueError(f"{name} labels must be integers in [0, {classes}), got "
                                 f"{y.dtype} {y.min() if len(y) else ''}..{y.max() if len(y) else ''}")
        return x.astype(self.model.params.dtype, copy=False), y

    # -- training ------------------------------------------------------------------------------

    def fit(self, x, y, *, epochs, batch_size=32, validation_data=None, validation_split=0.0):
        """Train until ``epochs`` epochs in all (a resumed trainer continues from its epoch).

        Returns the history: one dict per epoch with ``loss`` (mean per-instance loss),
        ``cost`` (plus the L2 penalty), ``accuracy`` for classification, the same for the
        validation data with a ``val_`` prefix, and ``lr``, the learning rate at the epoch's start.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got batch_size={batch_size!r}")
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must lie in [0, 1), got validation_split={validation_split!r}")
        x, y = self._check_data(x, y, "training")
        if validation_data is None and validation_split > 0:
            order = np.random.default_rng([self.seed, 1]).permutation(len(x))
            cut = int(round(len(x) * (1 - validation_split)))
            validation_data = (x[order[cut:]], y[order[cut:]])
            x, y = x[order[:cut]], y[order[:cut]]
        if validation_data is not None:
            validation_data = tuple(map(self.backend.asarray, self._check_data(*validation_data, "validation")))
        self._check_dropout_steps(len(x), epochs, batch_size)
        x, y = self.backend.asarray(x), self.backend.asarray(y)
        self.stop_reason = None
        import numba

        threads = numba.get_num_threads()
        numba.set_num_threads(min(self.kernel_threads, numba.config.NUMBA_NUM_THREADS))
        try:
            self._train(x, y, epochs, batch_size, validation_data)
        finally:
            numba.set_num_threads(threads)
        return self.history

    def _check_dropout_steps(self, rows, epochs, batch_size):
        """Dropout masks are numbered by step, below 2**32 (the Philox counter word): refuse a
        fit that would pass it before training rather than in the middle of an epoch."""
        if not getattr(self.model, "dropout_p", 0):
            return
        last = self.step + max(0, epochs - self.epoch) * -(-rows // batch_size)
        if last > DROPOUT_STEPS:
            raise ValueError(f"this fit would take the trainer to step {last}, past dropout's limit of "
                             f"{DROPOUT_STEPS} steps (epochs={epochs}, batch_size={batch_size}, {rows} rows, "
                             f"from step {self.step}): use fewer epochs or larger batches")

    def _train(self, x, y, epochs, batch_size, validation_data):
        while self.epoch < epochs:
            lr = self.optimizer.lr  # the rate this epoch starts with
            record = self._epoch(x, y, batch_size, epochs)
            if record is None:
                break
            if validation_data is not None:
                record.update({f"val_{k}": v for k, v in self._evaluate(*validation_data).items()})
            self.epoch += 1
            if self.scheduler is not None and not self.per_batch:
                self.scheduler.step()
            if self.plateau is not None:
                self.plateau.step(record[self.plateau_metric])
            record = {"epoch": self.epoch, **record, "lr": lr}
            self.history.append(record)
            self._say(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
            try:
                for callback in self.callbacks:
                    callback.on_epoch_end(self, record)
            except StopTraining as stop:
                self.stop_reason = str(stop)
                self._say(f"stopping: {stop}")
                break

    def _epoch(self, x, y, batch_size, epochs):
        order = self.backend.asarray(self.rng.permutation(len(x)))
        total, seen, correct = 0.0, 0, 0
        classify = is_classification(self.loss)
        bar = self._bar(len(order), epochs)
        # On the GPU (one process) the sums stay on the device until read; a diverged loss is
        # then caught at the end of the epoch rather than at its batch.
        sums = _DeviceSums(self.backend.xp) if self.backend.device == "cuda" and self.comm is None else None
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            count = len(index)
            first, last = count * self.rank // self.size, count * (self.rank + 1) // self.size
            xb, yb = x[index[first:last]], y[index[first:last]]
            # Overflow on the way to a diverged loss is caught just below, by value, with a
            # message; numpy's warnings about it would only repeat that.
            with np.errstate(over="ignore", invalid="ignore"):
                outputs = self.model.forward(xb, training=True, step=self.step, row_offset=first)
                batch_loss = self.loss(outputs, yb).sum()
            batch_correct = correct_sum(outputs, yb, self.loss) if classify else 0
            if sums is not None:
                sums.add(batch_loss, batch_correct)
            else:
                batch_loss, batch_correct = float(batch_loss), int(batch_correct)
            if self.comm is not None:
                # One small all-reduce per batch: every rank sees the same loss, so all stop together.
                totals = np.array([batch_loss, batch_correct])
                self.optimizer.sum_over_ranks(totals)
                batch_loss, batch_correct = float(totals[0]), float(totals[1])
            if sums is None and not math.isfinite(batch_loss):
                return self._diverged(batch_loss, f"step {self.step}", bar)
            with np.errstate(over="ignore", invalid="ignore"):
                if self.comm is None:
                    gradient = cost_gradient(self.loss, outputs, yb)
                else:
                    # The optimizer averages over the ranks: scale each rank's sum so that the
                    # average is the mean over the whole batch, however unevenly it was split.
                    gradient = self.loss.gradient(outputs, yb) / (count / self.size)
                if self._params_only:
                    self.model.backward(gradient, input_grad=False)
                else:
                    self.model.backward(gradient)
            self.optimizer.step()
            self.step += 1
            if self.scheduler is not None and self.per_batch:
                self.scheduler.step()
            seen += count
            if sums is None:
                total += batch_loss
                correct += batch_correct
            if bar is not None:
                bar.update(len(index))
                if sums is None or sums.due():
                    shown = total if sums is None else sums.read()[0]
                    bar.set_postfix(loss=f"{shown / seen:.4f}", lr=f"{self.optimizer.lr:.3g}", refresh=False)
        if sums is not None:
            total, correct = sums.read()
            if not math.isfinite(total):
                return self._diverged(total, "its end", bar)
        if bar is not None:
            bar.close()
        record = {"loss": total / max(seen, 1)}
        record["cost"] = record["loss"] + self.optimizer.l2_penalty()
        if is_classification(self.loss):
            record["accuracy"] = correct / max(seen, 1)
        return record

    def _diverged(self, loss, where, bar):
        self.stop_reason = (f"the loss became {loss} at epoch {self.epoch + 1}, {where}; stopped "
                            "(try a smaller learning rate)")
        self._say(self.stop_reason)
        if bar is not None:
            bar.close()
        return None

    def evaluate(self, x, y, batch_size=1024):
        """``{"loss", "cost", "accuracy"}`` over ``(x, y)`` in evaluation mode.

        Data-parallel, each rank evaluates its slice of the rows and the sums are combined.
        """
        x, y = self._check_data(x, y, "evaluation")
        return self._evaluate(self.backend.asarray(x), self.backend.asarray(y), batch_size)

    def _evaluate(self, x, y, batch_size=1024):
        first, last = len(y) * self.rank // self.size, len(y) * (self.rank + 1) // self.size
        classify = is_classification(self.loss)
        # loss, correct count; for a regression the squared errors and the targets' sums
        totals = np.zeros(5)
        for start in range(first, last, batch_size):
            stop = min(start + batch_size, last)
            outputs = self.model.forward(x[start:stop])
            target = y[start:stop]
            totals[0] += float(self.loss(outputs, target).sum(dtype=np.float64))
            if classify:
                totals[1] += correct_count(outputs, target, self.loss)
            else:
                target = target.reshape(outputs.shape)
                totals[2] += float(((outputs - target) ** 2).sum(dtype=np.float64))
                totals[3] += float(target.sum(dtype=np.float64))
                totals[4] += float((target * target).sum(dtype=np.float64))
        if self.comm is not None:
            self.optimizer.sum_over_ranks(totals)
        n = len(y) * (self.model.sizes[-1] if not classify else 1)
        result = {"loss": totals[0] / len(y) if len(y) else float("nan")}
        result["cost"] = result["loss"] + self.optimizer.l2_penalty()
        if classify:
            result["accuracy"] = totals[1] / len(y) if len(y) else float("nan")
        elif n:
            spread = totals[4] - totals[3] ** 2 / n
            result["r2"] = 1.0 - totals[2] / spread if spread > 0 else float("nan")
            result["rmse"] = math.sqrt(totals[2] / n) * self.target_scale
        return result

    def predict(self, x, batch_size=1024):
        """The model's outputs for ``x`` in evaluation mode, as a NumPy array."""
        return self.model.predict(x, batch_size)

    # -- output --------------------------------------------------------------------------------

    def _bar(self, total, epochs):
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        if not show or self.rank != 0:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm(total=total, desc=f"epoch {self.epoch + 1}/{epochs}", unit="sample", leave=False)

    def _say(self, text):
        if self.log is not None and self.rank == 0:
            print(text, file=self.log, flush=True)

    # -- checkpoints ---------------------------------------------------------------------------

    def save(self, path):
        """Write the whole training state to ``path`` atomically (see :mod:`fastopt.train.checkpoint`).

        Data-parallel, this is collective: the optimizer state is gathered on rank 0, which
        alone writes, in the layout of a single process, so any number of ranks can resume.
        """
        if self.comm is not None:
            optimizer_state = self.optimizer.state_dict(root=0)
            if self.rank != 0:
                return
        else:
            optimizer_state = self.optimizer.state_dict()
        arrays = {"params": _device.host_copy(self.model.params.data)}
        arrays.update({f"optimizer.{k}": v for k, v in optimizer_state.pop("state").items()})
        meta = {
            "model": self.model.config, "optimizer": optimizer_state,
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "plateau": None if self.plateau is None else self.plateau.state_dict(),
            "rng": self.rng.bit_generator.state, "epoch": self.epoch, "step": self.step,
            "history": self.history, "run": self.metadata,
        }
        save_checkpoint(path, arrays, meta)

    def load(self, path):
        """Restore the state :meth:`save` wrote; the model must have the same configuration.
        Everything is checked first (the file, its metadata's types and ranges); a checkpoint
        refused in any part changes nothing."""
        arrays, meta = load_checkpoint(path)
        check_metadata(meta, path)
        if meta.get("model") != self.model.config:
            raise ValueError(f"checkpoint {path} is for a different model: {meta.get('model')} "
                             f"is not {self.model.config}")
        if (self.scheduler is None) != (meta["scheduler"] is None) or (self.plateau is None) != (meta["plateau"] is None):
            raise ValueError(f"checkpoint {path} was written with a different scheduler setup")
        params = arrays["params"]
        if params.shape != self.model.params.data.shape or params.dtype != self.model.params.dtype:
            raise ValueError(f"checkpoint {path} holds parameters {params.dtype} {params.shape}")
        optimizer_state = dict(meta["optimizer"])
        optimizer_state["state"] = {k[len("optimizer."):]: v for k, v in arrays.items() if k.startswith("optimizer.")}
        # Each part checks its own state before changing; should a later part refuse, put the
        # earlier ones back, so that a bad checkpoint changes nothing.
        snapshot = self.optimizer.local_state_dict if self.comm is not None else self.optimizer.state_dict
        restore = (self.optimizer.load_local_state_dict if self.comm is not None
                   else self.optimizer.load_state_dict)
        saved = (snapshot(), _device.host_copy(self.model.params.data),
                 None if self.scheduler is None else self.scheduler.state_dict(),
                 None if self.plateau is None else self.plateau.state_dict())
        try:
            self.optimizer.load_state_dict(optimizer_state)
            _device.copy_into(self.model.params.data, params)
            if self.scheduler is not None:
                self.scheduler.load_state_dict(meta["scheduler"])
            if self.plateau is not None:
                self.plateau.load_state_dict(meta["plateau"])
            self.rng.bit_generator.state = meta["rng"]
        except Exception:
            restore(saved[0])
            _device.copy_into(self.model.params.data, saved[1])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(saved[2])
            if self.plateau is not None:
                self.plateau.load_state_dict(saved[3])
            raise
        self.epoch, self.step, self.history = meta["epoch"], meta["step"], meta["history"]
        self.metadata = dict(meta.get("run") or {})
