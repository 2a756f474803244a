"""Step time of data-parallel AdamW over MPI ranks: ZeRO-1 sharding against all-reduce.

Run it under ``mpiexec -n N`` for each N, e.g.::

    for n in 1 2 4; do
        OMPI_MCA_mpi_yield_when_idle=1 NUMBA_NUM_THREADS=1 \\
        mpiexec --oversubscribe --allow-run-as-root -n $n python bench/mpi_scaling.py --json mpi-$n.json
    done

For each size it times (median over ``--repeat`` steps, each step started together after a
barrier, the slowest rank's time) the plain optimizer in one process on the whole buffer, the
sharded and the all-reduce optimizers' whole ``step()``, and the kernel alone on this rank's
part. It prints state bytes per rank and the bytes each rank sends per step as a ring
reduce-scatter plus all-gather would: ``2 (N - 1) / N`` times the buffer.
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np

import fastopt
from fastopt.distributed import AllReduceOptimizer, ShardedOptimizer, world


def timed(comm, action, repeat, warmup=3):
    for _ in range(warmup):
        action()
    times = []
    for _ in range(repeat):
        comm.Barrier()
        start = time.perf_counter()
        action()
        elapsed = time.perf_counter() - start
        times.append(comm.allreduce(elapsed, op=_max(comm)))
    return statistics.median(times)


def _max(comm):
    from mpi4py import MPI

    return MPI.MAX


def measure(comm, size, repeat):
    rank, ranks = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng(rank)
    rows = []
    for mode, wrapper in (("single", None), ("zero", ShardedOptimizer), ("allreduce", AllReduceOptimizer)):
        params = fastopt.FlatParams({"w": size})
        params.data[:] = 0.01
        params.grad[:] = rng.standard_normal(size, dtype=np.float32)
        if wrapper is None:
            if ranks > 1:
                continue
            optimizer = fastopt.AdamW(params, lr=1e-3)
            step = kernel = timed(comm, optimizer.step, repeat)
            state = sum(b.nbytes for b in optimizer.state.values())
        else:
            optimizer = wrapper(params, fastopt.AdamW, comm, lr=1e-3)
            step = timed(comm, optimizer.step, repeat)
            kernel = timed(comm, optimizer.local.step, repeat)
            state = optimizer.state_nbytes()
        rows.append({
            "ranks": ranks, "size": size, "mode": mode, "step_ms": step * 1e3, "kernel_ms": kernel * 1e3,
            "communication_ms": (step - kernel) * 1e3,
            "state_bytes_per_rank": comm.allreduce(state, op=_max(comm)),
            "sent_bytes_per_rank": 2 * (ranks - 1) / ranks * size * 4,
        })
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e6,1e7")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    comm = world()
    rows = [row for s in args.sizes.split(",") for row in measure(comm, int(float(s)), args.repeat)]
    if comm.Get_rank() == 0:
        print(f"{'ranks':>5} {'size':>9} {'mode':>9} {'step ms':>8} {'kernel ms':>9} {'comm ms':>8} "
              f"{'state MB/rank':>13} {'sent MB/rank':>12}")
        for r in rows:
            print(f"{r['ranks']:>5} {r['size']:>9.0e} {r['mode']:>9} {r['step_ms']:>8.2f} {r['kernel_ms']:>9.2f} "
                  f"{r['communication_ms']:>8.2f} {r['state_bytes_per_rank'] / 1e6:>13.1f} "
                  f"{r['sent_bytes_per_rank'] / 1e6:>12.1f}")
        if args.json:
            with open(args.json, "w") as stream:
                json.dump(rows, stream, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
