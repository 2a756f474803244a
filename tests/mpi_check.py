"""Run under ``mpiexec -n N``: data-parallel optimizers against one process on the whole batch.

``python mpi_check.py equivalence OUT.json`` trains a small least-squares model for 100 steps
with every optimizer family, the batch split unevenly over the ranks, both sharded (ZeRO-1) and
all-reduce, in float64 and float32, and on each rank also runs the same optimizer in one
process over the whole batch; rank 0 writes the largest relative differences, the state bytes
of every rank and of the single process, and the shard bounds.

``python mpi_check.py checkpoint save|resume FILE OUT.json`` takes 50 steps and saves (state
gathered on rank 0), or loads and takes 50 more; rank 0 writes the parameters and the
single-process parameters after the same total steps.

tests/test_distributed.py launches it; it is a script, not a test module.
"""

import json
import sys

import numpy as np

import fastopt
from fastopt import ParamGroup
from fastopt.train.checkpoint import load_checkpoint, save_checkpoint
from fastopt.distributed import AllReduceOptimizer, ShardedOptimizer, world

#: 3,567 elements in all, which divides by neither 2 nor 4 nor 16; every shard boundary falls
#: inside w1, which has a group of its own.
SHAPES = {"w1": (113, 31), "b": 31, "w2": (18,), "scale": (3, 5)}
FEATURES, OUTPUTS, BATCH, STEPS = 113, 31, 37, 100

CASES = {
    "sgd": (fastopt.SGD, dict(lr=0.05, weight_decay=1e-3)),
    "sgd_nesterov": (fastopt.SGD, dict(lr=0.02, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    "sgd_dampening": (fastopt.SGD, dict(lr=0.02, momentum=0.8, dampening=0.3, maximize=False)),
    "adam": (fastopt.Adam, dict(lr=1e-2, weight_decay=1e-3)),
    "adam_amsgrad": (fastopt.Adam, dict(lr=1e-2, amsgrad=True)),
    "adamw": (fastopt.AdamW, dict(lr=1e-2, weight_decay=1e-2)),
    "adamw_amsgrad": (fastopt.AdamW, dict(lr=1e-2, weight_decay=1e-2, amsgrad=True)),
    "rmsprop": (fastopt.RMSProp, dict(lr=1e-3, weight_decay=1e-3)),
    "rmsprop_centered_momentum": (fastopt.RMSProp, dict(lr=1e-3, centered=True, momentum=0.9)),
    "adagrad": (fastopt.Adagrad, dict(lr=0.05, lr_decay=1e-3, weight_decay=1e-3, initial_accumulator_value=0.1)),
    "adamax": (fastopt.Adamax, dict(lr=1e-2, weight_decay=1e-3)),
    "radam": (fastopt.RAdam, dict(lr=1e-2, weight_decay=1e-3)),
    "radamw": (fastopt.RAdam, dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True)),
    "nadam": (fastopt.NAdam, dict(lr=1e-2, weight_decay=1e-3, momentum_decay=0.02)),
    "nadamw": (fastopt.NAdam, dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True, maximize=True)),
    "lion": (fastopt.Lion, dict(lr=1e-3, weight_decay=0.1)),
    "lamb": (fastopt.LAMB, dict(lr=1e-2, weight_decay=1e-2)),
    "adafactor": (fastopt.Adafactor, dict(lr=1e-2, weight_decay=1e-2)),
}
#: Rules over whole tensors: ShardedOptimizer cuts their shards at tensor boundaries.
WHOLE_TENSORS = {"lamb", "adafactor"}
GROUPS = [ParamGroup(["w1"], lr_factor=0.5), ParamGroup(["scale"], lr_factor=2.0, weight_decay=0.0)]


def make_params(dtype):
    params = fastopt.FlatParams(SHAPES, dtype=dtype)
    params.data[:] = np.random.default_rng(7).standard_normal(params.size) * 0.1
    return params


def batch(step):
    rng = np.random.default_rng([11, step])
    return rng.standard_normal((BATCH, FEATURES)), rng.standard_normal((BATCH, OUTPUTS))


def gradient(params, x, y, rows, scale):
    """Gradient of ``scale * sum over rows`` of a squared error that touches every parameter."""
    w1, b, w2, s = (params[name].astype(np.float64) for name in SHAPES)
    x, y = x[rows], y[rows]
    residual = x @ w1 + b + w2.sum() * 1e-2 + s.sum() * 1e-2 - y
    grads = {"w1": x.T @ residual, "b": residual.sum(axis=0),
             "w2": np.full(w2.shape, residual.sum() * 1e-2), "scale": np.full(s.shape, residual.sum() * 1e-2)}
    return np.concatenate([g.ravel() for g in grads.values()]) * scale


def local_rows(step, rank, size):
    first, last = BATCH * rank // size, BATCH * (rank + 1) // size
    return slice(first, last)


def run_steps(optimizer, params, steps, first_step, rank, size):
    for step in range(first_step, first_step + steps):
        x, y = batch(step)
        # Each rank's gradient is its rows' sum over BATCH / size, so that the average over
        # the ranks is the mean over the whole batch, as the Trainer does.
        params.grad[:] = gradient(params, x, y, local_rows(step, rank, size), size / BATCH)
        optimizer.step()


def relative_difference(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def equivalence(out):
    comm = world()
    rank, size = comm.Get_rank(), comm.Get_size()
    results = []
    for dtype in (np.float64, np.float32):
        for name, (cls, options) in CASES.items():
            single_params = make_params(dtype)
            single = cls(single_params, groups=GROUPS, **options)
            run_steps(single, single_params, STEPS, 0, 0, 1)
            for mode, wrapper in (("zero", ShardedOptimizer), ("allreduce", AllReduceOptimizer)):
                params = make_params(dtype)
                optimizer = wrapper(params, cls, groups=GROUPS, **options)
                run_steps(optimizer, params, STEPS, 0, rank, size)
                whole = optimizer.state_dict()
                state_error = max((relative_difference(whole["state"][k], v) for k, v in single.state.items()),
                                  default=0.0)
                same_everywhere = comm.allgather(params.data.tobytes())
                results.append({
                    "optimizer": name, "mode": mode, "dtype": np.dtype(dtype).name,
                    "params_error": relative_difference(params.data, single_params.data),
                    "state_error": state_error,
                    "penalty": optimizer.l2_penalty(), "single_penalty": single.l2_penalty(),
                    "identical_on_ranks": all(d == same_everywhere[0] for d in same_everywhere),
                    "state_bytes": comm.gather(optimizer.state_nbytes(), root=0),
                    "single_state_bytes": sum(b.nbytes for b in single.state.values()),
                    "shards": comm.gather(list(getattr(optimizer, "shard", (0, params.size))), root=0),
                    "steps": optimizer.step_count,
                })
    # A buffer smaller than one aligned unit per rank: all but the last shard are empty.
    tiny = fastopt.FlatParams({"w": 5}, dtype=np.float64)
    tiny_single = fastopt.FlatParams({"w": 5}, dtype=np.float64)
    optimizer, single = ShardedOptimizer(tiny, fastopt.Adam, lr=0.1), fastopt.Adam(tiny_single, lr=0.1)
    for step in range(STEPS):
        grads = np.random.default_rng([5, step]).standard_normal((size, 5))
        tiny.grad[:], tiny_single.grad[:] = grads[rank], grads.mean(axis=0)
        optimizer.step()
        single.step()
    tiny_result = {"shard": comm.gather(list(optimizer.shard), root=0),
                   "params_error": relative_difference(tiny.data, tiny_single.data)}
    refusals = refused(comm)
    muon_results = muon(comm)
    quantized_results = quantized_state(comm)
    if rank == 0:
        with open(out, "w") as stream:
            json.dump({"ranks": size, "size": make_params(np.float32).size,
                       "segments": {n: make_params(np.float32).segment(n) for n in SHAPES},
                       "results": results, "tiny": tiny_result, "refusals": refusals, "muon": muon_results,
                       "quantized": quantized_results}, stream)


def muon(comm):
    """Muon (2-D parameters only) over three matrices, 30 steps, each rank its own gradient:
    sharded (whole matrices per rank) and all-reduce against one process on the mean gradient."""
    rank, size = comm.Get_rank(), comm.Get_size()
    shapes = {"a": (20, 10), "b": (10, 30), "c": (5, 5)}
    results = {}
    for mode, wrapper in (("zero", ShardedOptimizer), ("allreduce", AllReduceOptimizer)):
        params = fastopt.FlatParams(shapes, dtype=np.float64)
        single_params = fastopt.FlatParams(shapes, dtype=np.float64)
        params.data[:] = single_params.data[:] = np.random.default_rng(3).standard_normal(params.size)
        optimizer = wrapper(params, fastopt.Muon, lr=0.02, groups=[ParamGroup(["b"], lr_factor=0.5)])
        single = fastopt.Muon(single_params, lr=0.02, groups=[ParamGroup(["b"], lr_factor=0.5)])
        for step in range(30):
            grads = np.random.default_rng([9, step]).standard_normal((size, params.size))
            params.grad[:], single_params.grad[:] = grads[rank], grads.mean(axis=0)
            optimizer.step()
            single.step()
        whole = optimizer.state_dict()
        results[mode] = {"params_error": relative_difference(params.data, single_params.data),
                         "state_error": relative_difference(whole["state"]["momentum_buffer"],
                                                            single.state["momentum_buffer"]),
                         "shards": comm.gather(list(getattr(optimizer, "shard", (0, params.size))), root=0)}
    results["adafactor_empty"] = adafactor_with_empty_tensors(comm)
    return results


def adafactor_with_empty_tensors(comm):
    """Sharded Adafactor over tensors with no elements but state (a (3, 0) matrix keeps 3 row
    factors): the gathered state dict has a single process's sections, and the single
    process's state dict loads into the shards and back."""
    rank, size = comm.Get_rank(), comm.Get_size()
    shapes = {"a": (3, 0), "w": (5, 6), "e": (0,), "v": 4, "z": (0, 2)}
    params, single_params = fastopt.FlatParams(shapes, dtype=np.float64), fastopt.FlatParams(shapes, dtype=np.float64)
    params.data[:] = single_params.data[:] = np.arange(params.size) * 0.1
    optimizer, single = ShardedOptimizer(params, fastopt.Adafactor), fastopt.Adafactor(single_params)
    for step in range(5):
        grads = np.random.default_rng([4, step]).standard_normal((size, params.size))
        params.grad[:], single_params.grad[:] = grads[rank], grads.mean(axis=0)
        optimizer.step()
        single.step()
    whole, alone = optimizer.state_dict(), single.state_dict()
    shapes_equal = all(whole["state"][k].shape == v.shape for k, v in alone["state"].items())
    state_error = max(relative_difference(whole["state"][k], v) for k, v in alone["state"].items() if v.size)
    optimizer.load_state_dict(alone)
    reloaded = optimizer.state_dict()
    single.load_state_dict(whole)
    return {"shapes_equal": shapes_equal, "state_error": state_error,
            "reload_error": max(relative_difference(reloaded["state"][k], v) for k, v in alone["state"].items() if v.size)}


def quantized_state(comm):
    """int8 and bfloat16 state, sharded (whole tensors per rank) and all-reduce, against one
    process: rank 0 holds the whole gradient and the others zeros, summed (average=False), so
    every rank's shard sees one process's gradient exactly and the steps, codes, absmax and
    stochastic roundings must be the same bits. Then state dicts across the layouts: the
    gathered one loads into one process, one process's into the shards, a float32 one into the
    int8 shards, all continuing bit for bit."""
    rank, size = comm.Get_rank(), comm.Get_size()
    shapes = {"a": (40, 70), "b": 70, "c": (3000,), "d": (5,)}  # c: two blocks, a short one
    results = {}
    for state_dtype in ("int8", "bfloat16"):
        for name, (cls, options) in (("adamw", (fastopt.AdamW, dict(lr=1e-2))),
                                     ("rmsprop", (fastopt.RMSProp, dict(lr=1e-3, centered=True, momentum=0.5))),
                                     ("lamb", (fastopt.LAMB, dict(lr=1e-2, weight_decay=0.01)))):
            for mode, wrapper in (("zero", ShardedOptimizer), ("allreduce", AllReduceOptimizer)):
                params = fastopt.FlatParams(shapes)
                params.data[:] = np.random.default_rng(3).standard_normal(params.size)
                optimizer = wrapper(params, cls, average=False, state_dtype=state_dtype, state_seed=5, **options)
                alone = fastopt.FlatParams(shapes)
                alone.data[:] = params.data
                reference = cls(alone, state_dtype=state_dtype, state_seed=5, **options)

                def steps(first, count):
                    for step in range(first, first + count):
                        g = np.random.default_rng([6, step]).standard_normal(params.size).astype(np.float32)
                        params.grad[:] = g if rank == 0 else 0.0
                        alone.grad[:] = g
                        optimizer.step()
                        reference.step()

                steps(0, 6)
                whole, expected = optimizer.state_dict(), reference.state_dict()
                same_state = set(whole["state"]) == set(expected["state"]) and all(
                    np.array_equal(whole["state"][k], v) for k, v in expected["state"].items())
                same_params = np.array_equal(params.data, alone.data)
                # the single process's state dict into the shards, and the gathered one into one process
                optimizer.load_state_dict(expected)
                reference.load_state_dict(whole)
                steps(6, 3)
                continued = np.array_equal(params.data, alone.data) and all(
                    np.array_equal(optimizer.state_dict()["state"][k], v)
                    for k, v in reference.state_dict()["state"].items())
                # a float32 state dict into the quantized shards: quantized as one process does
                plain = cls(fastopt.FlatParams(shapes), **options)
                plain.params.data[:] = params.data
                plain.params.grad[:] = 1e-3
                plain.step()
                optimizer.load_state_dict(plain.state_dict())
                reference.load_state_dict(plain.state_dict())
                converted = all(np.array_equal(optimizer.state_dict()["state"][k], v)
                                for k, v in reference.state_dict()["state"].items())
                results[f"{name} {state_dtype} {mode}"] = {
                    "same_params": bool(same_params), "same_state": bool(same_state), "continued": bool(continued),
                    "converted": bool(converted),
                    "shards": comm.gather(list(getattr(optimizer, "shard", (0, params.size))), root=0)}
    return results


def refused(comm):
    """``{case: message}`` of what the distributed optimizers refuse, on every rank alike."""
    messages = {}

    def attempt(case, action):
        try:
            action()
        except (TypeError, ValueError) as error:
            messages[case] = f"{type(error).__name__}: {error}"
        else:
            messages[case] = None

    rank = comm.Get_rank()
    attempt("layout_differs", lambda: ShardedOptimizer(
        fastopt.FlatParams({"w": 10 + rank}), fastopt.Adam, comm))
    attempt("not_a_class", lambda: ShardedOptimizer(make_params(np.float32), fastopt.Adam(make_params(np.float32))))
    attempt("not_a_comm", lambda: AllReduceOptimizer(make_params(np.float32), fastopt.Adam, comm="world"))
    attempt("unknown_option", lambda: ShardedOptimizer(make_params(np.float32), fastopt.Adam, momentum=0.9))
    params = make_params(np.float64)
    optimizer = ShardedOptimizer(params, fastopt.Adam, comm, groups=GROUPS)
    run_steps(optimizer, params, 3, 0, rank, comm.Get_size())
    before = (params.data.copy(), {k: v.copy() for k, v in optimizer.state.items()}, optimizer.step_count)
    wrong = optimizer.state_dict()
    wrong["layout"] = [["w1", [3503]], ["rest", [64]]]
    attempt("wrong_layout", lambda: optimizer.load_state_dict(wrong))
    wrong = optimizer.state_dict()
    wrong["state"]["exp_avg"] = wrong["state"]["exp_avg"][:-1]
    attempt("short_state", lambda: optimizer.load_state_dict(wrong))
    unchanged = (np.array_equal(before[0], params.data) and before[2] == optimizer.step_count
                 and all(np.array_equal(v, optimizer.state[k]) for k, v in before[1].items()))
    messages["unchanged_after_refusals"] = unchanged
    return comm.gather(messages, root=0)


def checkpoint(action, path, out):
    comm = world()
    rank, size = comm.Get_rank(), comm.Get_size()
    cls, options = CASES["adamw_amsgrad"]
    params = make_params(np.float64)
    optimizer = ShardedOptimizer(params, cls, groups=GROUPS, **options)
    first = 0
    if action == "resume":
        arrays, meta = load_checkpoint(path)
        state = dict(meta["optimizer"], state={k[6:]: v for k, v in arrays.items() if k.startswith("state.")})
        optimizer.load_state_dict(state)
        params.data[:] = arrays["params"]
        first = optimizer.step_count
    run_steps(optimizer, params, STEPS // 2, first, rank, size)
    state = optimizer.state_dict(root=0)
    if rank == 0:
        if action == "save":
            arrays = {"params": params.data, **{f"state.{k}": v for k, v in state.pop("state").items()}}
            save_checkpoint(path, arrays, {"optimizer": state})
        single_params = make_params(np.float64)
        single = cls(single_params, groups=GROUPS, **options)
        run_steps(single, single_params, first + STEPS // 2, 0, 0, 1)
        with open(out, "w") as stream:
            json.dump({"ranks": size, "steps": optimizer.step_count,
                       "params_error": relative_difference(params.data, single_params.data),
                       "state_bytes": optimizer.state_nbytes()}, stream)


def gpu(out):
    """Under the CUDA simulator: the same data-parallel run with parameters on the "GPU"
    (collectives staged through host memory) and on the CPU: the same bits."""
    import cuda_facade_check

    cuda_facade_check.patch_simulator()
    comm = world()
    rank, size = comm.Get_rank(), comm.Get_size()
    results = []
    for name in ("adamw_amsgrad", "sgd_nesterov"):
        cls, options = CASES[name]
        for mode, wrapper in (("zero", ShardedOptimizer), ("allreduce", AllReduceOptimizer)):
            cpu = make_params(np.float32)
            device = make_params(np.float32).to("cuda")
            cpu_opt = wrapper(cpu, cls, groups=GROUPS, **options)
            gpu_opt = wrapper(device, cls, groups=GROUPS, **options)
            for step in range(10):
                x, y = batch(step)
                g = gradient(cpu, x, y, local_rows(step, rank, size), size / BATCH).astype(np.float32)
                cpu.grad[:] = g
                device.grad.copy_to_device(g)
                cpu_opt.step()
                gpu_opt.step()
            cpu_state, gpu_state = cpu_opt.state_dict(), gpu_opt.state_dict()
            results.append({
                "optimizer": name, "mode": mode,
                "params_equal": bool(np.array_equal(cpu.data, device.data.copy_to_host())),
                "state_equal": all(np.array_equal(cpu_state["state"][k], gpu_state["state"][k]) for k in cpu_state["state"]),
                "penalty": [cpu_opt.l2_penalty(), gpu_opt.l2_penalty()],
            })
    results.append(trainer_on_the_gpu(comm))
    gathered = comm.gather(results, root=0)
    if rank == 0:
        with open(out, "w") as stream:
            json.dump({"ranks": size, "results": gathered}, stream)


def trainer_on_the_gpu(comm):
    """A data-parallel Trainer (ZeRO-1) over an MLP on the "GPU" and the same over one on the
    CPU: the same parameters and history (the cost to 1e-12: the penalty's CUDA reduction)."""
    import cuda_trainer_check

    cuda_trainer_check.use_numpy_as_cupy()
    x, y = cuda_trainer_check.data(45, 6, 3)
    runs = {}
    for device in ("cpu", "cuda"):
        model = fastopt.MLP((6, 8, 3), dropout=0.3, seed=2, device=device)
        optimizer = ShardedOptimizer(model.params, fastopt.AdamW, lr=1e-2, weight_decay=1e-2)
        trainer = fastopt.Trainer(model, optimizer, fastopt.losses.softmax_cross_entropy, seed=4, progress=False)
        trainer.fit(x, y, epochs=2, batch_size=10, validation_split=0.2)
        data = model.params.data
        runs[device] = (data if isinstance(data, np.ndarray) else data.copy_to_host(), trainer.history)
    (cpu, cpu_history), (gpu, gpu_history) = runs["cpu"], runs["cuda"]
    costs_close = all(np.isclose(a[k], b[k], rtol=1e-12, atol=0) for a, b in zip(cpu_history, gpu_history)
                      for k in a if k.endswith("cost"))
    others_equal = [{k: v for k, v in r.items() if not k.endswith("cost")} for r in cpu_history] == \
        [{k: v for k, v in r.items() if not k.endswith("cost")} for r in gpu_history]
    return {"optimizer": "trainer", "mode": "zero", "params_equal": bool(np.array_equal(cpu, gpu)),
            "history_equal": bool(costs_close and others_equal and len(cpu_history) == 2)}


def main(argv):
    if argv[0] == "gpu":
        gpu(argv[1])
    elif argv[0] == "equivalence":
        equivalence(argv[1])
    elif argv[0] == "checkpoint":
        checkpoint(argv[1], argv[2], argv[3])
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
