"""The ``fastopt`` command.

    fastopt demo [--optimizer adamw] [--lr 0.01] [--steps 300] [--features 200] ...
    fastopt schedule NAME --param value ... [--steps N] [--out lr.png]
    fastopt train [--data FILE --target COLUMN] [--optimizer adamw] [--epochs 30] ...
    fastopt bench [--sizes 1e5,1e6,1e7] [--json out.json] [--plot throughput.png]

``schedule`` builds a schedule from :mod:`fastopt.schedules` by name, prints a few of its values
and, with ``--out``, draws it (matplotlib): ``fastopt schedule cyclic --base_value 0.001
--max_value 0.006 --step_size_up 500 --mode triangular2 --steps 3000 --out lr.png``.

``demo`` fits a linear least-squares model on seeded synthetic data with the chosen optimizer:
the weights and the bias are views into one :class:`~fastopt.FlatParams`, the bias sits in a
parameter group without weight decay, and every step is one kernel call. It prints the loss
(mean squared error), the batch cost (loss plus the L2 penalty) and the time per step.
"""

import argparse
import io
import os
import sys
import time

import numpy as np

from .. import SGD, Adam, AdamW, FlatParams, ParamGroup, RMSProp

#: Per optimizer, the options it takes beyond ``lr``, ``weight_decay`` and ``groups``.
OPTIMIZERS = {
    "sgd": (SGD, lambda a: dict(momentum=a.momentum, nesterov=a.momentum > 0)),
    "adam": (Adam, lambda a: {}),
    "adamw": (AdamW, lambda a: {}),
    "rmsprop": (RMSProp, lambda a: dict(momentum=a.momentum)),
}


def build_optimizer(params, args):
    """The chosen optimizer, with the bias in a group without weight decay."""
    cls, extra = OPTIMIZERS[args.optimizer]
    return cls(params, lr=args.lr, weight_decay=args.l2,
               groups=[ParamGroup(["bias"], weight_decay=0.0)], **extra(args))


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _nonnegative_float(text):
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def demo(args, out=None):
    out = out or sys.stdout
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.samples, args.features)).astype(np.float32)
    true_weight = rng.standard_normal(args.features).astype(np.float32)
    y = x @ true_weight + np.float32(0.5) + np.float32(0.1) * rng.standard_normal(args.samples, dtype=np.float32)

    params = FlatParams({"weight": args.features, "bias": ()})
    optimizer = build_optimizer(params, args)
    weight, bias = params["weight"], params["bias"]
    grad_weight, grad_bias = params.grad_of("weight"), params.grad_of("bias")
    print(f"fastopt demo: {args.optimizer}, lr={args.lr}, l2={args.l2}, {args.samples} samples x "
          f"{args.features} features, {args.steps} steps", file=out)
    step_seconds = []
    for step in range(1, args.steps + 1):
        residual = x @ weight + bias - y
        loss = float(np.mean(residual**2))
        np.matmul(residual, x, out=grad_weight)
        grad_weight *= np.float32(2.0 / args.samples)
        grad_bias[...] = 2.0 * residual.mean()
        start = time.perf_counter()
        optimizer.step()
        step_seconds.append(time.perf_counter() - start)
        if not np.isfinite(loss):
            print(f"step {step}: loss is {loss}; stopping (try a smaller --lr)", file=out)
            return 1
        if step == 1 or step % max(1, args.steps // 10) == 0 or step == args.steps:
            cost = loss + optimizer.l2_penalty()
            print(f"step {step:5d}  loss {loss:.6f}  cost {cost:.6f}", file=out)
    final = float(np.mean((x @ weight + bias - y) ** 2))
    median_us = 1e6 * float(np.median(step_seconds[1:] or step_seconds))
    print(f"final loss {final:.6f} (noise floor 0.01); optimizer step {median_us:.1f} us median "
          f"(first step, with kernel load: {1e3 * step_seconds[0]:.1f} ms)", file=out)
    return 0


def schedule(args, extra, out=None):
    from .. import schedules

    out = out or sys.stdout
    if len(extra) % 2 or any(not key.startswith("--") for key in extra[::2]):
        raise ValueError(f"schedule parameters must come as '--name value' pairs, got {extra}")
    arguments = {key[2:].replace("-", "_"): schedules.parse_value(value)
                 for key, value in zip(extra[::2], extra[1::2])}
    built = schedules.by_name(args.name, **arguments)
    values = schedules.evaluate(built, args.steps)
    marks = sorted({0, 1, args.steps // 4, args.steps // 2, 3 * args.steps // 4, args.steps - 1})
    print(f"{args.name}: " + ", ".join(f"step {t}: {values[t]:.6g}" for t in marks), file=out)
    print(f"min {values.min():.6g}, max {values.max():.6g} over {args.steps} steps", file=out)
    if args.out:
        from ..train.plot import plot_schedules

        plot_schedules({args.name: built}, args.steps, args.out, title=f"{args.name} {arguments}")
        print(f"wrote {args.out}", file=out)
    return 0


DEFAULT_LR = {"sgd": 0.05, "adam": 2e-3, "adamw": 2e-3, "rmsprop": 1e-3}
TRAIN_SCHEDULES = ("constant", "step", "cosine", "onecycle", "plateau")


def _train_schedule(name, lr, epochs, steps_per_epoch):
    """(schedule, per_batch) for ``--schedule``; ``plateau`` is handled by the caller."""
    from .. import schedules

    if name == "step":
        return schedules.step_decay(lr, step_size=max(1, epochs // 3), gamma=0.3), False
    if name == "cosine":
        return schedules.cosine_annealing(lr, T_max=max(1, epochs), eta_min=lr / 100), False
    if name == "onecycle":
        return schedules.one_cycle(lr, total_steps=max(2, epochs * steps_per_epoch)), True
    return schedules.constant(lr), False


def train(args, out=None):
    from .. import MLP, ReduceLROnPlateau, Scheduler, Trainer, losses
    from ..train import data
    from ..train.trainer import Checkpoint

    out = out or sys.stdout
    if args.device == "cuda":
        from ..nn.arrays import for_device

        try:
            for_device("cuda")
        except RuntimeError as error:  # no GPU, numba-cuda or CuPy: say which, as a usage error
            raise ValueError(f"--device cuda: {error}") from None
    if args.data is None:
        x, y = data.load_digits()
        source = "digits (scikit-learn, bundled)"
    else:
        x, y = data.load_table(args.data, args.target)
        source = args.data
    y = data.class_labels(y)
    if len(x) != len(y):
        raise ValueError(f"X and y have different lengths: {len(x)} and {len(y)}")
    if not np.isfinite(x).all():
        raise ValueError(f"the features hold NaN or inf (first at row {np.argwhere(~np.isfinite(x))[0][0]})")
    classes = int(y.max()) + 1 if len(y) else 0
    if classes < 2:
        raise ValueError(f"training needs at least 2 classes in the labels, got {classes}")
    x_train, y_train, x_test, y_test = data.split(x.astype(np.float32), y, args.test_fraction, args.seed)
    hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    model = MLP((x.shape[1], *hidden, classes), activation=args.activation, dropout=args.dropout, seed=args.seed,
                device=args.device)
    lr = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
    cls, extra = OPTIMIZERS[args.optimizer]
    biases = [name for name in model.params if name.endswith(".bias")]
    options = dict(lr=lr, weight_decay=args.l2, groups=[ParamGroup(biases, weight_decay=0.0)], **extra(args))
    parallel = args.parallel
    if parallel == "auto":
        from ..distributed import launched_under_mpi

        parallel = "zero" if launched_under_mpi() else "none"
    if parallel == "none":
        optimizer, ranks = cls(model.params, **options), ""
    else:
        from .. import distributed

        wrapper = distributed.ShardedOptimizer if parallel == "zero" else distributed.AllReduceOptimizer
        optimizer = wrapper(model.params, cls, **options)
        ranks = f", data-parallel ({parallel}) over {optimizer.size} ranks"
        if optimizer.rank != 0:
            out = io.StringIO()  # rank 0 alone prints and writes outputs
    steps_per_epoch = -(-int(round(len(x_train) * (1 - args.validation_fraction))) // args.batch_size)
    plateau = ReduceLROnPlateau(optimizer, factor=0.5, patience=3) if args.schedule == "plateau" else None
    schedule, per_batch = _train_schedule(args.schedule, lr, args.epochs, steps_per_epoch)
    scheduler = None if plateau is not None else Scheduler(optimizer, schedule)
    callbacks = [Checkpoint(args.checkpoint)] if args.checkpoint else []
    trainer = Trainer(model, optimizer, losses.softmax_cross_entropy, scheduler=scheduler,
                      per_batch=per_batch, plateau=plateau, callbacks=callbacks, seed=args.seed,
                      progress=False if args.no_progress else None, log=out)
    if args.resume:
        path = os.path.join(args.checkpoint, "checkpoint.npz")
        if not os.path.exists(path):
            raise ValueError(f"--resume: no checkpoint at {path}")
        trainer.load(path)
        print(f"resumed from {path} at epoch {trainer.epoch}", file=out)
    print(f"fastopt train: {source}, {len(x_train)} training / {len(x_test)} test samples, "
          f"MLP {model.sizes}, {args.optimizer} lr={lr}, schedule {args.schedule}, l2={args.l2}, "
          f"dropout={args.dropout}{ranks}" + (", on the GPU" if args.device == "cuda" else ""), file=out)
    start = time.perf_counter()
    trainer.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                validation_split=args.validation_fraction)
    seconds = time.perf_counter() - start
    if args.plot and trainer.history and trainer.rank == 0:
        from ..train.plot import plot_history

        plot_history(trainer.history, args.plot)
        print(f"wrote {args.plot}", file=out)
    if trainer.stop_reason and "loss became" in trainer.stop_reason:
        return 1
    result = trainer.evaluate(x_test, y_test)
    print(f"test accuracy {result['accuracy']:.4f}, test loss {result['loss']:.4f} "
          f"({seconds:.1f} s of training)", file=out)
    return 0


def bench(args, out=None):
    import json
    import platform

    from ..bench import cpu as _bench

    out = out or sys.stdout
    try:
        sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--sizes must be numbers separated by commas, got {args.sizes!r}") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--sizes must be >= 1, got {args.sizes!r}")
    kernels = [k.strip() for k in args.kernels.split(",")] if args.kernels else None
    unknown = set(kernels or ()) - set(_bench.REPORT_KERNELS)
    if unknown:
        raise ValueError(f"--kernels: unknown {sorted(unknown)}; choose from {sorted(_bench.REPORT_KERNELS)}")
    import numba

    from ..bench import gpu as _gpu_bench

    gpu, gpu_name = _gpu_bench.gpu_available()
    gpu = gpu and not numba.config.ENABLE_CUDASIM
    print(f"# {platform.machine()}, {os.cpu_count()} cores, {numba.get_num_threads()} numba threads; "
          + (f"GPU: {gpu_name}" if gpu else f"no GPU rows ({gpu_name})"), file=out)
    rows = _bench.report(sizes, kernels)
    if gpu:
        rows += _gpu_bench.gpu_report(sizes, kernels)
    print(_bench.format_table(rows), file=out)
    if args.json:
        with open(args.json, "w") as stream:
            json.dump({"machine": platform.machine(), "cores": os.cpu_count(), "rows": rows}, stream, indent=2)
        print(f"wrote {args.json}", file=out)
    if args.plot:
        _bench.plot_report(rows, args.plot)
        print(f"wrote {args.plot}", file=out)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastopt", description="fused Numba optimizer kernels")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("demo", help="fit a linear model with a fastopt optimizer")
    run.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adamw")
    run.add_argument("--lr", type=_nonnegative_float, default=0.05)
    run.add_argument("--momentum", type=_nonnegative_float, default=0.0)
    run.add_argument("--l2", type=_nonnegative_float, default=1e-4, help="weight decay")
    run.add_argument("--steps", type=_positive_int, default=300)
    run.add_argument("--samples", type=_positive_int, default=2000)
    run.add_argument("--features", type=_positive_int, default=200)
    run.add_argument("--seed", type=int, default=0)
    fit = commands.add_parser("train", help="train an MLP classifier (default: the digits set)")
    fit.add_argument("--data", help="CSV (header row) or NPZ (arrays X, y) file; default: digits")
    fit.add_argument("--target", help="label column of the CSV (default: the last) or array of the NPZ")
    fit.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adamw")
    fit.add_argument("--lr", type=_nonnegative_float, default=None, help="default: per optimizer")
    fit.add_argument("--momentum", type=_nonnegative_float, default=0.9, help="SGD and RMSProp")
    fit.add_argument("--schedule", choices=TRAIN_SCHEDULES, default="cosine")
    fit.add_argument("--l2", type=_nonnegative_float, default=1e-4, help="weight decay (not on biases)")
    fit.add_argument("--dropout", type=_nonnegative_float, default=0.1)
    fit.add_argument("--hidden", default="128", help="hidden widths, e.g. 256,128")
    fit.add_argument("--activation", choices=["relu", "tanh", "sigmoid", "gelu"], default="relu")
    fit.add_argument("--epochs", type=_positive_int, default=30)
    fit.add_argument("--batch-size", type=int, default=32)
    fit.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                     help="cuda: the model, optimizer state and data on the GPU (needs numba-cuda and "
                          "CuPy: pip install 'fastopt[cuda13]' or [cuda12])")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--parallel", choices=["auto", "zero", "allreduce", "none"], default="auto",
                     help="data parallelism over MPI ranks (run under mpiexec -n N): optimizer state "
                          "sharded (zero), or replicated with an all-reduce; auto: zero when "
                          "started by mpiexec with several ranks, else none")
    fit.add_argument("--test-fraction", type=_nonnegative_float, default=0.2)
    fit.add_argument("--validation-fraction", type=_nonnegative_float, default=0.1)
    fit.add_argument("--checkpoint", help="folder for checkpoint.npz, written every epoch")
    fit.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    fit.add_argument("--plot", help="image file for loss, accuracy and learning rate per epoch")
    fit.add_argument("--no-progress", action="store_true", help="no progress bar")

    measure = commands.add_parser("bench", help="time the kernels against numpy and torch here")
    measure.add_argument("--sizes", default="1e5,1e6,1e7", help="elements, comma-separated")
    measure.add_argument("--kernels", help="comma-separated subset of adam,sgd_nesterov,rmsprop,dropout")
    measure.add_argument("--json", help="write the rows here")
    measure.add_argument("--plot", help="image of GB/s against size, roofline dashed")

    from ..schedules import NAMES

    draw = commands.add_parser(
        "schedule", help="print and draw a learning-rate schedule",
        description="Any other '--name value' pairs are the schedule's arguments.")
    draw.add_argument("name", choices=NAMES)
    draw.add_argument("--steps", type=_positive_int, default=100)
    draw.add_argument("--out", help="image file to draw into (needs matplotlib)")
    args, extra = parser.parse_known_args(argv)
    try:
        if args.command == "schedule":
            return schedule(args, extra)
        if args.command == "bench":
            if extra:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            return bench(args)
        if args.command == "train":
            if extra:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            if args.resume and not args.checkpoint:
                parser.error("--resume needs --checkpoint DIR")
            if args.batch_size < 1:
                parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
            return train(args)
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return demo(args)
    except (ValueError, TypeError, ImportError) as error:
        parser.error(str(error))
