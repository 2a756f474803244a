"""Run by test_threads.py with NUMBA_NUM_THREADS=4 (whatever the machine's cores): every rule's
kernel, dropout and the L2 penalty give the same bits on 1 thread and on 4. Prints "same bits"
or what differs."""

import sys
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from kernel_cases import ELEMENTWISE, FACTORED, TENSORWISE, make_case, make_factored_case, make_tensor_case  # noqa: E402

from fastopt.kernels import cpu, dropout, factored, penalty, tensorwise  # noqa: E402
from fastopt.kernels.chunks import CHUNK_SIZE, chunk_table  # noqa: E402


def on_threads(threads, action):
    numba.set_num_threads(threads)
    try:
        return action()
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def main():
    assert numba.config.NUMBA_NUM_THREADS >= 2, "run with NUMBA_NUM_THREADS=4"
    failures = []
    size = 9 * CHUNK_SIZE + 3
    for name in ELEMENTWISE:
        results = []
        for threads in (1, 4):
            case, _ = make_case(name, size, np.float32, np.random.default_rng(0), n_groups=3)
            on_threads(threads, lambda: cpu.rule_kernel(case.rule)(*case.arguments()))
            results.append(case.mutated())
        failures += [f"{name} {k}" for k in results[0] if not np.array_equal(results[0][k], results[1][k], equal_nan=True)]
    for name in TENSORWISE:
        results = []
        for threads in (1, 4):
            case, _ = make_tensor_case(name, [size // 3, 5, size // 2], np.float32, np.random.default_rng(0))
            on_threads(threads, lambda: tensorwise.kernel(case.rule)(*case.arguments()))
            results.append(case.mutated())
        failures += [f"{name} {k}" for k in results[0] if not np.array_equal(results[0][k], results[1][k], equal_nan=True)]
    for name in FACTORED:  # many rows, many column blocks, a long vector and a batch of matrices
        results = []
        for threads in (1, 4):
            case, _ = make_factored_case(name, [(300, 500), (size // 4,), (3, 40, 70)], np.float32,
                                         np.random.default_rng(0))
            on_threads(threads, lambda: factored.kernel(case.rule)(
                case.param, case.grad, case.groups, case.table, case.scalars, case.factors,
                np.zeros(case.layout.means, np.float32), case.tensor_tiles, *case.layout.tables(),
                np.zeros((case.layout.row_start.size, 2)), np.zeros(case.layout.size),
                np.zeros((case.layout.tensor_numel.size, 2))))
            results.append(case.mutated())
        failures += [f"{name} {k}" for k in results[0] if not np.array_equal(results[0][k], results[1][k], equal_nan=True)]
    x = np.random.default_rng(1).standard_normal(size).astype(np.float32)
    u = np.uint64
    masks = [x.copy(), x.copy()]
    for threads, buffer in zip((1, 4), masks):
        on_threads(threads, lambda: dropout.dropout_step(buffer, u(5), u(7), u(0), u(1), u(2), u(2**31), np.float32(2)))
    if not np.array_equal(*masks):
        failures.append("dropout")
    bounds, groups = chunk_table([(0, size // 2, 0), (size // 2, size, 1)])
    table = np.array([[1.0, 0.1], [1.0, 2.0]])
    sums = [on_threads(t, lambda: penalty.l2_penalty(x, bounds, groups, table, 1)) for t in (1, 4)]
    if sums[0] != sums[1]:
        failures.append(f"l2_penalty {sums}")
    print("\n".join(failures) if failures else "same bits")
    return 1 if failures else 0


if __name__ == "__main__":  # not on import (pytest --doctest-modules imports every module)
    sys.exit(main())
