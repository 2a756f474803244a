"""The ``fastopt`` command.

    fastopt demo [--optimizer adamw] [--lr 0.01] [--steps 300] [--features 200] ...
    fastopt schedule NAME --param value ... [--warmup N] [--steps N] [--out lr.png]
    fastopt train [--data FILE --target COLUMN] [--task auto] [--optimizer adamw] [--epochs 30] ...
    fastopt predict --checkpoint PATH --data FILE [--out predictions.csv]
    fastopt bench [--sizes 1e5,1e6,1e7] [--json out.json] [--plot throughput.png]

``schedule`` builds a schedule from :mod:`fastopt.schedules` by name (``fastopt schedule NAME
--help`` lists its arguments and defaults), prints a few of its values and, with ``--out``,
draws it (matplotlib): ``fastopt schedule cyclic --base_value 0.001 --max_value 0.006
--step_size_up 500 --mode triangular2 --steps 3000 --out lr.png``; ``--warmup N`` puts a linear
warm-up of N steps in front of it. ``train`` and ``predict`` are in :mod:`.train`.

A refused argument, file or value is one line on stderr naming it, and exit status 2.

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

from .. import LAMB, SGD, Adafactor, Adagrad, Adam, Adamax, AdamW, FlatParams, Lion, NAdam, ParamGroup, RAdam, RMSProp

#: Per optimizer, the options it takes beyond ``lr``, ``weight_decay`` and ``groups``.
OPTIMIZERS = {
    "sgd": (SGD, lambda a: dict(momentum=a.momentum, nesterov=a.momentum > 0)),
    "adam": (Adam, lambda a: {}),
    "adamw": (AdamW, lambda a: {}),
    "rmsprop": (RMSProp, lambda a: dict(momentum=a.momentum)),
    "adagrad": (Adagrad, lambda a: {}),
    "adamax": (Adamax, lambda a: {}),
    "nadam": (NAdam, lambda a: {}),
    "radam": (RAdam, lambda a: {}),
    "lion": (Lion, lambda a: {}),
    "lamb": (LAMB, lambda a: {}),
    "adafactor": (Adafactor, lambda a: {}),
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


#: Schedules built from others: not from the command line (``--warmup`` puts one in front).
COMPOSITE_SCHEDULES = ("warmup", "sequence", "product")


def schedule(args, out=None):
    from .. import schedules

    out = out or sys.stdout
    fields = _schedule_fields(args.name)
    arguments = {name: getattr(args, name) for name in fields if getattr(args, name) is not _UNSET}
    missing = [name for name, default in fields.items() if default is _UNSET and name not in arguments]
    if missing:
        raise ValueError(f"schedule {args.name} needs " + ", ".join(f"--{name}" for name in missing))
    built = schedules.by_name(args.name, **arguments)
    if args.warmup:
        built = schedules.warmup(built, steps=args.warmup, start_value=args.warmup_start)
    values = schedules.evaluate(built, args.steps)
    marks = sorted({t for t in (0, 1, args.steps // 4, args.steps // 2, 3 * args.steps // 4, args.steps - 1)
                    if t < args.steps})
    print(f"{args.name}: " + ", ".join(f"step {t}: {values[t]:.6g}" for t in marks), file=out)
    print(f"min {values.min():.6g}, max {values.max():.6g} over {args.steps} steps", file=out)
    if args.out:
        from ..train.plot import plot_schedules

        plot_schedules({args.name: built}, args.steps, args.out, title=f"{args.name} {arguments}")
        print(f"wrote {args.out}", file=out)
    return 0


_UNSET = object()


def _schedule_fields(name):
    """``{argument: default or _UNSET}`` of a schedule, from its dataclass."""
    import dataclasses

    from ..schedules import _REGISTRY

    fields = {}
    for field in dataclasses.fields(_REGISTRY[name]):
        default = field.default if field.default is not dataclasses.MISSING else _UNSET
        fields[field.name] = default
    return fields


def bench(args, out=None):
    import json
    import platform

    from ..bench import cpu as _bench

    out = out or sys.stdout
    try:
        sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    except (ValueError, OverflowError):
        raise ValueError(f"--sizes must be finite numbers separated by commas, got {args.sizes!r}") from None
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
    from .. import __version__
    from ..schedules import NAMES
    from . import train as training

    parser = argparse.ArgumentParser(prog="fastopt", description="fused Numba optimizer kernels")
    parser.add_argument("--version", action="version", version=f"fastopt {__version__}")
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

    d = training.DEFAULTS
    fit = commands.add_parser(
        "train", help="train an MLP on a table (default: the digits set)",
        description="Train an MLP classifier or regressor on a CSV or NPZ table. Features (and a regression's "
                    "target) are standardised on the training rows unless --no-scale. With --resume, the "
                    "checkpoint's settings are used: flags that differ are refused, except the plan (--lr, "
                    "--l2, --momentum, --schedule, --warmup, --epochs), which --replan applies from the "
                    "resume point.")
    fit.add_argument("--data", help="CSV (header row) or NPZ (arrays X, y) file; default: digits")
    fit.add_argument("--target", help="target column of the CSV (default: the last) or array of the NPZ")
    fit.add_argument("--task", choices=("auto", "classification", "regression"),
                     help="default auto: text or few whole numbers are classes, fractions a regression")
    fit.add_argument("--loss", choices=("cross_entropy", "mse", "mae", "huber"),
                     help="default: cross_entropy for a classification, mse for a regression")
    fit.add_argument("--no-scale", dest="scale", action="store_const", const=False,
                     help="do not standardise the features (and a regression's target)")
    fit.add_argument("--optimizer", choices=sorted(training.OPTIMIZERS), help=f"default {d['optimizer']}")
    fit.add_argument("--state-dtype", choices=["int8", "bfloat16"],
                     help="store the optimizer state as block-wise int8 or stochastically rounded bfloat16 "
                          "(the element-wise optimizers; default: float32)")
    fit.add_argument("--lr", type=_nonnegative_float, help="default: per optimizer")
    fit.add_argument("--momentum", type=_nonnegative_float, help=f"SGD and RMSProp (default {d['momentum']})")
    fit.add_argument("--schedule", choices=training.SCHEDULES, help=f"default {d['schedule']}")
    fit.add_argument("--warmup", type=int, help="epochs of linear warm-up before the schedule (default 0)")
    fit.add_argument("--l2", type=_nonnegative_float, help=f"weight decay, not on biases (default {d['l2']})")
    fit.add_argument("--dropout", type=_nonnegative_float, help=f"default {d['dropout']}")
    fit.add_argument("--hidden", help=f"hidden widths, e.g. 256,128 (default {d['hidden']})")
    fit.add_argument("--activation", choices=["relu", "tanh", "sigmoid", "gelu"], help=f"default {d['activation']}")
    fit.add_argument("--epochs", type=int, help=f"default {d['epochs']}")
    fit.add_argument("--batch-size", type=int, help=f"default {d['batch_size']}")
    fit.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                     help="cuda: the model, optimizer state and data on the GPU (needs numba-cuda and "
                          "CuPy: pip install 'fastopt[cuda13]' or [cuda12])")
    fit.add_argument("--seed", type=int, help="default 0")
    fit.add_argument("--parallel", choices=["auto", "zero", "allreduce", "none"], default="auto",
                     help="data parallelism over MPI ranks (run under mpiexec -n N): optimizer state "
                          "sharded (zero), or replicated with an all-reduce; auto: zero when "
                          "started by mpiexec with several ranks, else none")
    fit.add_argument("--test-fraction", type=_nonnegative_float, help=f"default {d['test_fraction']}")
    fit.add_argument("--validation-fraction", type=_nonnegative_float, help=f"default {d['validation_fraction']}")
    fit.add_argument("--checkpoint", help="folder for checkpoint.npz, written every epoch")
    fit.add_argument("--resume", action="store_true", help="continue from --checkpoint with its settings")
    fit.add_argument("--replan", action="store_true",
                     help="with --resume: apply a new --lr/--l2/--momentum/--schedule/--epochs from the resume point")
    fit.add_argument("--plot", help="image file for loss, accuracy and learning rate per epoch")
    fit.add_argument("--no-progress", action="store_true", help="no progress bar")

    answer = commands.add_parser("predict", help="the model of a fastopt train checkpoint on new rows")
    answer.add_argument("--checkpoint", required=True, help="checkpoint.npz, or the folder holding it")
    answer.add_argument("--data", required=True, help="CSV or NPZ with the training columns (target optional)")
    answer.add_argument("--out", help="write the predictions here (CSV); default: print them")

    measure = commands.add_parser("bench", help="time the kernels against numpy and torch here")
    measure.add_argument("--sizes", default="1e5,1e6,1e7", help="elements, comma-separated")
    measure.add_argument("--kernels", help="comma-separated kernels: adam,sgd_nesterov,rmsprop,dropout (the "
                         "default), adagrad,adamax,nadam,radam,lion,lamb,adafactor, and AdamW with int8 or "
                         "bfloat16 state or bfloat16 parameters: adamw_int8,adamw_bf16,adamw_bf16_params")
    measure.add_argument("--json", help="write the rows here")
    measure.add_argument("--plot", help="image of GB/s against size, roofline dashed")

    draw = commands.add_parser("schedule", help="print and draw a learning-rate schedule",
                               description="fastopt schedule NAME --help lists a schedule's arguments.")
    kinds = draw.add_subparsers(dest="name", required=True, metavar="NAME")
    for name in NAMES:
        if name in COMPOSITE_SCHEDULES:
            continue
        from ..schedules import _REGISTRY

        doc = (_REGISTRY[name].__doc__ or "").strip()
        kind = kinds.add_parser(name, help=doc.splitlines()[0] if doc else name, description=doc)
        for field, default in _schedule_fields(name).items():
            kind.add_argument(f"--{field}", type=_schedule_value, default=_UNSET,
                              help="required" if default is _UNSET else f"default {default!r}")
        kind.add_argument("--warmup", type=int, default=0, help="steps of linear warm-up in front (default 0)")
        kind.add_argument("--warmup_start", type=float, default=0.0, help="the warm-up's first value (default 0)")
        kind.add_argument("--steps", type=_positive_int, default=100, help="steps to print and draw (default 100)")
        kind.add_argument("--out", help="image file to draw into (needs matplotlib)")
    args = parser.parse_args(argv)
    try:
        if args.command == "schedule":
            if args.out:
                training.check_image_output("--out", args.out)
            return schedule(args)
        if args.command == "bench":
            if args.plot:
                training.check_image_output("--plot", args.plot)
            return bench(args)
        if args.command == "train":
            if args.resume and not args.checkpoint:
                raise ValueError("--resume needs --checkpoint DIR")
            if args.replan and not args.resume:
                raise ValueError("--replan goes with --resume")
            return training.train(args, sys.stdout)
        if args.command == "predict":
            return training.predict(args, sys.stdout)
        return demo(args)
    except (ValueError, TypeError, ImportError, OSError) as error:
        # One line naming the argument or file, and usage's exit status; no traceback.
        message = " ".join(str(error).split())
        print(f"fastopt {args.command}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _schedule_value(text):
    from ..schedules import parse_value

    return parse_value(text)
