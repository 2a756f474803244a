"""``fastopt train`` and ``fastopt predict``: an MLP on a user's table, honestly.

Everything that can be checked before training is checked first (the data, the task and its
labels, the split, the output files and folders), and every refusal is one line naming the
argument or file. What a run is needs to survive it: the checkpoint keeps the run's settings,
the feature (and, for a regression, target) standardisation and the class names, so that
``--resume`` needs no flags again and ``fastopt predict`` answers in the user's own labels and
units.
"""

import io
import math
import os
import tempfile
import time

import numpy as np

from .. import LAMB, SGD, Adafactor, Adagrad, Adam, Adamax, AdamW, Lion, NAdam, ParamGroup, RAdam, RMSProp

#: Per optimizer, the options it takes beyond ``lr``, ``weight_decay`` and ``groups``.
OPTIMIZERS = {
    "sgd": (SGD, lambda s: dict(momentum=s["momentum"], nesterov=s["momentum"] > 0)),
    "adam": (Adam, lambda s: {}),
    "adamw": (AdamW, lambda s: {}),
    "rmsprop": (RMSProp, lambda s: dict(momentum=s["momentum"])),
    "adagrad": (Adagrad, lambda s: {}),
    "adamax": (Adamax, lambda s: {}),
    "nadam": (NAdam, lambda s: {}),
    "radam": (RAdam, lambda s: {}),
    "lion": (Lion, lambda s: {}),
    "lamb": (LAMB, lambda s: {}),
    "adafactor": (Adafactor, lambda s: {}),
}
DEFAULT_LR = {"sgd": 0.05, "adam": 2e-3, "adamw": 2e-3, "rmsprop": 1e-3, "adagrad": 0.02, "adamax": 4e-3,
              "nadam": 2e-3, "radam": 1e-2, "lion": 6e-4, "lamb": 3e-3,
              "adafactor": 1e-2}
SCHEDULES = ("constant", "step", "cosine", "onecycle", "plateau")
LOSSES = {"classification": ("cross_entropy",), "regression": ("mse", "mae", "huber")}

#: The settings of a run and their defaults (``None``: chosen from the data or the optimizer).
DEFAULTS = dict(data=None, target=None, task="auto", loss=None, scale=True, hidden="128", activation="relu",
                dropout=0.1, seed=0, test_fraction=0.2, validation_fraction=0.1, batch_size=32,
                optimizer="adamw", state_dtype=None, lr=None, momentum=0.9, l2=1e-4, schedule="cosine", warmup=0,
                epochs=30)
#: Settings a resumed run keeps: they make the model, its data and its optimizer what they are.
FIXED = ("data", "target", "task", "loss", "scale", "hidden", "activation", "dropout", "seed", "test_fraction",
         "validation_fraction", "batch_size", "optimizer", "state_dtype")
#: Settings a resumed run may change from its resume point on, with --replan.
PLAN = ("lr", "momentum", "l2", "schedule", "warmup", "epochs")
FLAG = {name: "--" + name.replace("_", "-") for name in DEFAULTS}
FLAG["scale"] = "--no-scale"
RUN_FORMAT = 1


def settings_of(args, saved=None):
    """The run's settings: the flags given, else (resuming) the checkpoint's, else defaults;
    and the names of the flags given that differ from the checkpoint's."""
    given = {name: getattr(args, name) for name in DEFAULTS if getattr(args, name, None) is not None}
    if saved is None:
        return {**DEFAULTS, **given}, []
    differing = [name for name, value in given.items() if name in saved and saved[name] != value]
    return {**DEFAULTS, **saved, **given}, differing


def check_resume(differing, saved, replan, resumed_epoch, settings):
    """Refuse a resume whose flags differ from the checkpoint's, unless only the plan changes
    and ``--replan`` says to apply it from the resume point."""
    fixed = [name for name in differing if name in FIXED]
    if fixed:
        raise ValueError("--resume keeps what the checkpoint was trained with: " + "; ".join(
            f"{FLAG[name]} {saved[name]!r} there, not {settings[name]!r}" for name in fixed)
            + " (start a new run, in another --checkpoint folder, to change them)")
    plan = [name for name in differing if name in PLAN]
    if plan and not replan:
        raise ValueError("--resume: " + ", ".join(f"{FLAG[name]} differs from the checkpoint's {saved[name]!r}"
                                                  for name in plan)
                         + f"; add --replan to apply the new plan from epoch {resumed_epoch} on")


def check_image_output(flag, path):
    """Refuse an image file whose folder or format will not do, before the work that makes it."""
    _check_writable_file(flag, path)
    _check_image_format(flag, path)


def check_outputs(args):
    """Refuse, before training, an output that could only fail after it: a plot whose folder
    or format will not do, a checkpoint folder that is a file or not writable."""
    if getattr(args, "plot", None):
        check_image_output("--plot", args.plot)
    if getattr(args, "checkpoint", None):
        folder = args.checkpoint
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise ValueError(f"--checkpoint {folder!r} is a file; give a folder")
        try:
            os.makedirs(folder, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".fastopt-write-test-"):
                pass
        except OSError as error:
            raise ValueError(f"--checkpoint {folder!r} cannot be written: {error.strerror or error}") from None


def _check_writable_file(flag, path):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{flag} {path!r}: the folder {folder!r} is not writable")
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a folder; give a file")


def _check_image_format(flag, path):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError(f"{flag} needs matplotlib: pip install 'fastopt[train]'") from None
    kinds = Figure().canvas.get_supported_filetypes()
    extension = os.path.splitext(path)[1].lstrip(".").lower()
    if extension not in kinds:
        raise ValueError(f"{flag} {path!r}: {extension or 'no extension'} is not an image format matplotlib "
                         f"writes ({', '.join(sorted(kinds))})")


def _fraction(flag, value, rows, at_least_one):
    if not 0.0 <= value < 1.0 or (at_least_one and value == 0.0):
        raise ValueError(f"{flag} must lie in {'(0' if at_least_one else '[0'}, 1), got {value}")
    part = int(round(rows * value))
    if (value > 0 and part < 1) or rows - part < 1:
        raise ValueError(f"{flag} {value} of {rows} rows leaves {part} and {rows - part}: each part needs a row")
    return part


def prepare(settings, table):
    """Task, targets, labels or target scaling, the split and the feature scaling, all checked:
    ``(arrays, run)`` where ``run`` is what the checkpoint keeps."""
    from ..train import data

    if table.target is None:
        raise ValueError(f"{table.source} has no target column")
    x = table.x
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{table.source}: need at least 2 rows and 1 feature, got {x.shape}")
    if not np.isfinite(x).all():
        row, column = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"{table.source} row {row + 2}, column {table.features[column]!r}: NaN or inf")
    task = data.choose_task(table.target, settings["task"], f"the target column {table.target_name!r}")
    losses = LOSSES[task]
    loss = settings["loss"] or losses[0]
    if loss not in losses:
        raise ValueError(f"--loss {loss} is not for a {task}; choose from {', '.join(losses)}")
    run = {"format": RUN_FORMAT, "task": task, "loss": loss, "features": table.features,
           "target": table.target_name, "source": table.source}
    if task == "classification":
        if table.target.dtype.kind == "f" and not np.array_equal(table.target, np.round(table.target)):
            raise ValueError(f"--task classification: the target column {table.target_name!r} holds fractions; "
                             "classes are names or whole numbers (or say --task regression)")
        labels = data.Labels.fit(table.target)
        if len(labels) < 2:
            raise ValueError(f"the target column {table.target_name!r} holds {len(labels)} class; training needs 2")
        y = labels.encode(table.target)
        run["labels"] = labels.to_dict()
    else:
        y = table.target.astype(np.float64)
    n_test = _fraction("--test-fraction", settings["test_fraction"], len(y), True)
    x_train, y_train, x_test, y_test = data.split(x, y, settings["test_fraction"], settings["seed"],
                                                  stratify=task == "classification")
    if n_test and len(y_test) == 0:
        raise ValueError(f"--test-fraction {settings['test_fraction']} leaves no test row")
    _fraction("--validation-fraction", settings["validation_fraction"], len(y_train), False)
    if task == "classification" and len(np.unique(y_train)) < 2:
        raise ValueError("the training split holds a single class; training needs 2")
    scaling = data.Scaling.fit(x_train, settings["scale"])
    run["scaling"] = scaling.to_dict()
    target_scaling = None
    if task == "regression":
        target_scaling = data.Scaling.fit(y_train.reshape(-1, 1), settings["scale"])
        run["target_scaling"] = target_scaling.to_dict()
        y_train, y_test = (target_scaling.apply(v.reshape(-1, 1)) for v in (y_train, y_test))
    return (scaling.apply(x_train), y_train, scaling.apply(x_test), y_test, target_scaling), run


def _loss(name):
    from .. import losses

    return {"cross_entropy": losses.softmax_cross_entropy, "mse": losses.mean_squared_error,
            "mae": losses.mean_absolute_error, "huber": losses.Huber(1.0)}[name]


def _schedule(settings, lr, steps_per_epoch, epochs):
    """``(schedule, per_batch)`` over ``epochs`` epochs; ``plateau`` is the caller's."""
    from .. import schedules

    name = settings["schedule"]
    if name == "step":
        built, per_batch = schedules.step_decay(lr, step_size=max(1, epochs // 3), gamma=0.3), False
    elif name == "cosine":
        built, per_batch = schedules.cosine_annealing(lr, T_max=max(1, epochs), eta_min=lr / 100), False
    elif name == "onecycle":
        built, per_batch = schedules.one_cycle(lr, total_steps=max(2, epochs * steps_per_epoch)), True
    else:
        built, per_batch = schedules.constant(lr), False
    if settings["warmup"]:
        built = schedules.warmup(built, steps=settings["warmup"] * (steps_per_epoch if per_batch else 1))
    return built, per_batch


def train(args, out):
    """``fastopt train``; returns the exit status."""
    from .. import MLP, ReduceLROnPlateau, Scheduler, Trainer
    from ..train import data
    from ..train.checkpoint import load_checkpoint
    from ..train.trainer import Checkpoint

    path = os.path.join(args.checkpoint, "checkpoint.npz") if args.checkpoint else None
    saved, resumed_epoch = None, 0
    if args.resume:
        if not os.path.exists(path):
            raise ValueError(f"--resume: no checkpoint at {path}")
        _, meta = load_checkpoint(path)
        saved = _saved_settings(meta, path)
        resumed_epoch = meta.get("epoch", 0)
    settings, differing = settings_of(args, saved)
    if args.resume:
        check_resume(differing, saved, args.replan, resumed_epoch, settings)
    for name in ("dropout", "l2", "momentum"):
        if not 0.0 <= settings[name] < math.inf or (name == "dropout" and settings[name] >= 1):
            raise ValueError(f"{FLAG[name]} must be a number in [0, {'1)' if name == 'dropout' else 'inf)'}, "
                             f"got {settings[name]}")
    if settings["batch_size"] < 1 or settings["epochs"] < 1 or settings["warmup"] < 0:
        raise ValueError(f"--batch-size and --epochs must be >= 1 and --warmup >= 0, got {settings['batch_size']}, "
                         f"{settings['epochs']} and {settings['warmup']}")
    hidden = _widths(settings["hidden"])
    check_outputs(args)
    if args.device == "cuda":
        from ..nn.arrays import for_device

        try:
            for_device("cuda")
        except RuntimeError as error:  # no GPU, numba-cuda or CuPy: say which, as a usage error
            raise ValueError(f"--device cuda: {error}") from None
    table = data.load_digits() if settings["data"] is None else data.load_table(settings["data"], settings["target"])
    (x_train, y_train, x_test, y_test, target_scaling), run = prepare(settings, table)
    run["settings"] = settings
    classes = len(run["labels"]["values"]) if "labels" in run else 1
    model = MLP((x_train.shape[1], *hidden, classes), activation=settings["activation"],
                dropout=settings["dropout"], seed=settings["seed"], device=args.device)
    lr = settings["lr"] = DEFAULT_LR[settings["optimizer"]] if settings["lr"] is None else settings["lr"]
    cls, extra = OPTIMIZERS[settings["optimizer"]]
    biases = [name for name in model.params if name.endswith(".bias")]
    options = dict(lr=lr, weight_decay=settings["l2"], groups=[ParamGroup(biases, weight_decay=0.0)],
                   **extra(settings))
    if settings["state_dtype"] is not None:
        if cls.per_tensor and cls is not LAMB:
            raise ValueError(f"--state-dtype {settings['state_dtype']} is for the element-wise optimizers and lamb; "
                             f"{settings['optimizer']} keeps its state in float32")
        options["state_dtype"] = settings["state_dtype"]
    optimizer, ranks, out = _optimizer(args, model, cls, options, out)
    steps_per_epoch = -(-int(round(len(x_train) * (1 - settings["validation_fraction"]))) // settings["batch_size"])
    plateau = ReduceLROnPlateau(optimizer, factor=0.5, patience=3) if settings["schedule"] == "plateau" else None
    schedule, per_batch = _schedule(settings, lr, steps_per_epoch, settings["epochs"])
    scheduler = None if plateau is not None else Scheduler(optimizer, schedule)
    callbacks = [Checkpoint(args.checkpoint)] if args.checkpoint else []
    trainer = Trainer(model, optimizer, _loss(run["loss"]), scheduler=scheduler, per_batch=per_batch,
                      plateau=plateau, callbacks=callbacks, seed=settings["seed"],
                      progress=False if args.no_progress else None, log=out,
                      target_scale=1.0 if target_scaling is None else float(target_scaling.std[0]), metadata=run)
    if args.resume:
        old_settings = saved
        trainer.load(path)
        trainer.metadata = run
        print(f"resumed from {path} at epoch {trainer.epoch}", file=out)
        if args.replan and any(name in PLAN for name in differing):
            _replan(trainer, settings, old_settings, lr, steps_per_epoch, out)
    print(f"fastopt train: {run['source']}, {run['task']} ({run['loss']}), {len(x_train)} training / "
          f"{len(x_test)} test samples, " + (f"{classes} classes, " if classes > 1 else "")
          + f"MLP {model.sizes}, {settings['optimizer']} lr={optimizer.lr:.4g}"
          + (f" ({settings['state_dtype']} state)" if settings["state_dtype"] else "")
          + f", schedule {settings['schedule']}, "
          f"l2={settings['l2']}, dropout={settings['dropout']}, epochs {settings['epochs']}"
          + ("" if settings["scale"] else ", features not scaled") + ranks
          + (", on the GPU" if args.device == "cuda" else ""), file=out)
    start = time.perf_counter()
    trainer.fit(x_train, y_train, epochs=settings["epochs"], batch_size=settings["batch_size"],
                validation_split=settings["validation_fraction"])
    seconds = time.perf_counter() - start
    if args.plot and trainer.history and trainer.rank == 0:
        from ..train.plot import plot_history

        plot_history(trainer.history, args.plot)
        print(f"wrote {args.plot}", file=out)
    if trainer.stop_reason and "loss became" in trainer.stop_reason:
        return 1
    result = trainer.evaluate(x_test, y_test)
    if run["task"] == "classification":
        print(f"test accuracy {result['accuracy']:.4f}, test loss {result['loss']:.4f} ({seconds:.1f} s of training)",
              file=out)
    else:
        print(f"test r2 {result['r2']:.4f}, test rmse {result['rmse']:.4g} ({seconds:.1f} s of training)", file=out)
    return 0


def _widths(text):
    try:
        widths = [int(h) for h in str(text).split(",") if h.strip()]
    except ValueError:
        raise ValueError(f"--hidden must be widths separated by commas, e.g. 256,128; got {text!r}") from None
    if any(w < 1 for w in widths):
        raise ValueError(f"--hidden widths must be >= 1, got {text!r}")
    return widths


def _optimizer(args, model, cls, options, out):
    parallel = args.parallel
    if parallel == "auto":
        from ..distributed import launched_under_mpi

        parallel = "zero" if launched_under_mpi() else "none"
    if parallel == "none":
        return cls(model.params, **options), "", out
    from .. import distributed

    wrapper = distributed.ShardedOptimizer if parallel == "zero" else distributed.AllReduceOptimizer
    optimizer = wrapper(model.params, cls, **options)
    if optimizer.rank != 0:
        out = io.StringIO()  # rank 0 alone prints and writes outputs
    return optimizer, f", data-parallel ({parallel}) over {optimizer.size} ranks", out


def _replan(trainer, settings, old, lr, steps_per_epoch, out):
    """Apply a new plan from the resume point: the optimizer's new hyperparameters, and the
    schedule planned again over the epochs left (starting at its own step 0)."""
    from .. import ReduceLROnPlateau, Scheduler

    changes = {"lr": lr, "weight_decay": settings["l2"]}
    if "momentum" in trainer.optimizer.config.__dataclass_fields__:
        changes["momentum"] = settings["momentum"]
    trainer.optimizer.set_hyperparameters(**changes)
    left = max(1, settings["epochs"] - trainer.epoch)
    if settings["schedule"] == "plateau":
        trainer.scheduler, trainer.plateau = None, ReduceLROnPlateau(trainer.optimizer, factor=0.5, patience=3)
    else:
        schedule, per_batch = _schedule(settings, lr, steps_per_epoch, left)
        trainer.plateau, trainer.per_batch = None, per_batch
        trainer.scheduler = Scheduler(trainer.optimizer, schedule)
    trainer.metadata["replanned_at"] = trainer.epoch
    changed = ", ".join(f"{name} {old.get(name)!r} -> {settings[name]!r}" for name in PLAN
                        if old.get(name) != settings[name])
    print(f"replanned from epoch {trainer.epoch}: {changed}; the schedule runs over the {left} epochs left",
          file=out)


def _saved_settings(meta, path):
    run = meta.get("run")
    if not isinstance(run, dict) or run.get("format") != RUN_FORMAT or not isinstance(run.get("settings"), dict):
        raise ValueError(f"--resume: {path} was not written by fastopt train (no run settings in it)")
    settings = run["settings"]
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"--resume: {path} holds unknown settings {sorted(unknown)}")
    return settings


def predict(args, out):
    """``fastopt predict``: the trained model on new rows, in the user's labels or units."""
    from .. import MLP
    from ..train import data
    from ..train.checkpoint import load_checkpoint

    path = args.checkpoint
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.npz")
    arrays, meta = load_checkpoint(path)
    run = meta.get("run")
    if not isinstance(run, dict) or run.get("format") != RUN_FORMAT or "features" not in run:
        raise ValueError(f"--checkpoint {path} was not written by fastopt train (no run data in it)")
    if args.out:
        _check_writable_file("--out", args.out)
    config = meta.get("model") or {}
    try:
        model = MLP(config["sizes"], activation=config["activation"], dropout=config["dropout"],
                    seed=config["seed"], dtype=np.dtype(config["dtype"]))
    except (KeyError, TypeError) as error:
        raise ValueError(f"--checkpoint {path}: its model description is incomplete ({error})") from None
    params = arrays.get("params")
    if params is None or params.shape != model.params.data.shape:
        raise ValueError(f"--checkpoint {path}: its parameters do not fit its model {config.get('sizes')}")
    model.params.data[:] = params
    table = data.load_table(args.data, run["target"], need_target=False)
    features = run["features"]
    if args.data.endswith(".npz"):
        if table.x.shape[1] != len(features):
            raise ValueError(f"--data {args.data}: X has {table.x.shape[1]} columns, the model {len(features)}")
        x = table.x
    else:
        missing = [name for name in features if name not in table.features]
        if missing:
            raise ValueError(f"--data {args.data} lacks the columns {missing[:5]} the model was trained on")
        x = table.x[:, [table.features.index(name) for name in features]]
    if not np.isfinite(x).all():
        row, column = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"--data {args.data} row {row + 2}, column {features[column]!r}: NaN or inf")
    scaling = data.Scaling.from_dict(run["scaling"], len(features))
    outputs = model.predict(scaling.apply(x).astype(model.params.dtype))
    if run["task"] == "classification":
        labels = data.Labels.from_dict(run["labels"])
        predictions = labels.decode(outputs.argmax(axis=1))
    else:
        values = data.Scaling.from_dict(run["target_scaling"], 1).undo(outputs.astype(np.float64)).reshape(-1)
        predictions = [repr(float(v)) for v in values]
    lines = ["prediction"] + predictions
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as stream:
            stream.write(text)
        print(f"wrote {len(predictions)} predictions to {args.out}", file=out)
    else:
        out.write(text)
    if table.target is not None and len(table.target):
        if run["task"] == "classification":
            known = data.Labels.from_dict(run["labels"])
            truth = [known.format(v) if known.kind == "number" else str(v) for v in table.target.tolist()]
            accuracy = float(np.mean([a == b for a, b in zip(predictions, truth)]))
            print(f"accuracy {accuracy:.4f} on {len(truth)} rows with targets", file=out if args.out else _stderr())
        else:
            r2, rmse = data.r2_and_rmse(values, table.target.astype(np.float64))
            print(f"r2 {r2:.4f}, rmse {rmse:.4g} on {len(values)} rows with targets", file=out if args.out else _stderr())
    return 0


def _stderr():
    import sys

    return sys.stderr
