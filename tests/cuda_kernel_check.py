"""Every CUDA kernel against its CPU kernel: ``python cuda_kernel_check.py --simulator`` under
NUMBA_ENABLE_CUDASIM=1 (test_cuda_simulator.py runs it so), or on a real GPU without the flag
(bench/gpu_check.sh runs it so). It prints "all equal" or what differs.

Every rule's CUDA kernel (built by fastopt.kernels.cuda from the same source as the CPU's)
against its CPU kernel on the same random data, every dtype and option: bitwise equal, with
the GPU's own work decomposition (tiles, not the CPU's chunks) and launches small enough that
every grid-stride loop turns over. Then dropout and its mask (CPU and CUDA masks are the same
bits) and the L2 penalty (equal to 1e-12: the two sum in different orders).

Under the simulator the CUDA target binds the plain-Python primitives of
``fastopt.kernels.primitives`` (a correctly rounded fma, a dtype-preserving square root), so
what this proves there is that the one source, the two loops and the tables agree; that NVVM
and ptxas then round as the source says is tests/test_cuda_ptx.py's job, and a GPU run's.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from cuda_facade_check import patch_simulator  # noqa: E402
from kernel_cases import (ELEMENTWISE, FACTORED, MATRIXWISE, TENSORWISE, make_case, make_factored_case,  # noqa: E402
                          make_matrix_case, make_tensor_case)

from fastopt.kernels import cpu, cuda, dropout, factored, matrixwise, penalty, quantized, tensorwise  # noqa: E402


def main():
    patch_simulator()  # small launches on a real GPU too: every loop turns over
    failures = (rule_failures() + tensorwise_failures() + matrixwise_failures() + factored_failures()
                + quantized_failures() + bfloat16_params_failures() + tensorwise_quantized_failures() + dropout_failures()
                + penalty_failures())
    print("\n".join(failures) if failures else "all equal")
    return 1 if failures else 0


def rule_failures():
    failures = []
    for name in ELEMENTWISE:
        for dtype in (np.float32, np.float64):
            for size, seed in ((0, 0), (1, 1), (7, 2), (133, 3)):
                rng = np.random.default_rng(seed)
                case, segments = make_case(name, size, dtype, rng, 3 if size > 2 else 1, chunk_size=40)
                if size == 133:  # the middle group skips this step (group -1) on both devices
                    segments = [(a, b, -1 if k == 1 else k) for a, b, k in segments]
                    case = case.with_table(segments, 40)
                on_gpu = case.copy().with_table(segments, cuda.TILE_SIZE)
                arguments = [device(a) if isinstance(a, np.ndarray) else a for a in on_gpu.arguments()]
                cpu.rule_kernel(case.rule)(*case.arguments())
                cuda.rule_launch(case.rule, arguments)(*arguments)
                on_gpu.param, on_gpu.state = arguments[0].copy_to_host(), arguments[1].copy_to_host()
                for buffer, a in case.mutated().items():
                    b = on_gpu.mutated()[buffer]
                    if not np.array_equal(a, b, equal_nan=True):
                        failures.append(f"{name} {dtype.__name__} size {size} {buffer}: {np.flatnonzero(a != b)[:5]}")
    return failures


def tensorwise_failures():
    """Rules with per-tensor sums: the CPU kernel and the three CUDA launches, on tiles of
    TENSOR_TILE (small under the simulator: several per tensor, more elements than lanes),
    with a tensor skipped (group -1) and an empty one."""
    failures = []
    for name in TENSORWISE:
        for dtype in (np.float32, np.float64):
            # more tensors than a (small) grid has threads: the sums' grid-stride loop turns over
            for sizes, skipped in (([0], ()), ([1, 700, 0, 5], (3,)), ([301, 7, 2, 650], ()), ([3] * 30, (4,))):
                case, _ = make_tensor_case(name, sizes, dtype, np.random.default_rng(len(sizes)), skipped)
                on_gpu = case.copy()
                arguments = [device(a) if isinstance(a, np.ndarray) else a for a in on_gpu.arguments()[:7]]
                tensors = (device(case.tile_tensor), device(case.tensor_tiles))
                tensorwise.kernel(case.rule)(*case.arguments())
                cuda.TensorwiseLaunch(case.rule, arguments, tensors)(*arguments)
                on_gpu.param, on_gpu.state = arguments[0].copy_to_host(), arguments[1].copy_to_host()
                for buffer, a in case.mutated().items():
                    b = on_gpu.mutated()[buffer]
                    if not np.array_equal(a, b, equal_nan=True):
                        failures.append(f"{name} {dtype.__name__} sizes {sizes} {buffer}: {np.flatnonzero(a != b)[:5]}")
    return failures


def matrixwise_failures():
    """Rules that transform each matrix: the CPU and CUDA builds of stage 1 (state and
    direction) and stage 3 (the step), bitwise, around the same NumPy transform of the
    direction (CuPy runs it on a GPU; it is not here), with a skipped and an empty matrix."""
    failures = []
    for name in MATRIXWISE:
        for dtype in (np.float32, np.float64):
            for shapes, skipped in (([(0, 3)], ()), ([(7, 5), (4, 9), (0, 3), (33, 20)], (1,)), ([(3, 3)] * 30, (4,))):
                case, _ = make_matrix_case(name, shapes, dtype, np.random.default_rng(len(shapes)), skipped)
                on_gpu = case.copy()
                arguments = [device(a) if isinstance(a, np.ndarray) else a for a in on_gpu.arguments()]
                work = device(on_gpu.work)
                first, second = matrixwise.kernels(case.rule)
                gpu_first, gpu_second = cuda.matrix_kernels(case.rule)
                first(*case.arguments(), case.work)
                cuda.configure(gpu_first, 3)(*arguments, work)
                active = case.groups[case.tensor_tiles[:-1]] >= 0
                directions = work.copy_to_host()
                if not np.array_equal(directions, case.work, equal_nan=True):
                    failures.append(f"{name} {dtype.__name__} shapes {shapes} directions differ")
                case.matrices.transform(case.work, case.rule.matrixwise.transform, case.scalars, active)
                case.matrices.transform(directions, case.rule.matrixwise.transform, case.scalars, active)
                work.copy_to_device(directions)
                second(case.param, case.work, *case.arguments()[3:7], case.tile_tensor, case.matrices.dims)
                cuda.configure(gpu_second, 3)(arguments[0], work, *arguments[3:7], device(case.tile_tensor),
                                              device(case.matrices.dims))
                on_gpu.param, on_gpu.state = arguments[0].copy_to_host(), arguments[1].copy_to_host()
                for buffer, a in case.mutated().items():
                    b = on_gpu.mutated()[buffer]
                    if not np.array_equal(a, b, equal_nan=True):
                        failures.append(f"{name} {dtype.__name__} shapes {shapes} {buffer}: {np.flatnonzero(a != b)[:5]}")
    return failures


def factored_failures():
    """Rules with factored state: the CPU kernel and the six CUDA launches, bitwise, over
    matrices, a batch of matrices, a vector longer than a row, a scalar, an empty and a skipped
    tensor, and rows shorter and longer than the lanes."""
    failures = []
    cases = (([(0, 3)], (), np.float32), ([(7, 5), (300,), (2, 3, 70), (), (0, 4), (3, 1)], (1,), np.float32),
             ([(7, 5), (300,), (2, 3, 70), (), (0, 4), (3, 1)], (1,), np.float64), ([(2,)] * 12, (4,), np.float32),
             ([(2, 300)], (), np.float64))  # (a CUDA block of 256 threads per row is slow to simulate)
    for name in FACTORED:
        for shapes, skipped, dtype in cases:
            case, _ = make_factored_case(name, shapes, dtype, np.random.default_rng(len(shapes)), skipped)
            on_gpu = case.copy()
            factored.CpuLaunch(case.rule, case.param.size, dtype, case.tensors())(*case.arguments())
            arguments = [device(a) if isinstance(a, np.ndarray) else a for a in on_gpu.arguments()]
            factors = device(on_gpu.factors)
            tensors = (device(case.tile_tensor), device(case.tensor_tiles), case.layout, factors)
            cuda.FactoredLaunch(case.rule, arguments, tensors)(*arguments)
            on_gpu.param, on_gpu.factors = arguments[0].copy_to_host(), factors.copy_to_host()
            for buffer, a in case.mutated().items():
                b = on_gpu.mutated()[buffer]
                if not np.array_equal(a, b, equal_nan=True):
                    failures.append(f"{name} {dtype.__name__} shapes {shapes} {buffer}: {np.flatnonzero(a != b)[:5]}")
    return failures


def quantized_failures():
    """int8 and bfloat16 state: every element-wise rule with state, CPU kernel against CUDA
    kernel on the same blocks (int8) or on their own tables (bfloat16), a group skipping, a
    NaN gradient, and two blocks with a short one."""
    failures = []
    for name in ELEMENTWISE:
        for size, seed in ((0, 0), (1, 1), (7, 2), (700, 3)):
            rng = np.random.default_rng(seed)
            case, segments = make_case(name, size, np.float32, rng, 3 if size > 2 else 1, chunk_size=40)
            rule = case.rule
            if not rule.state:
                break
            if size == 700:
                segments = [(a, b, -1 if k == 1 else k) for a, b, k in segments]
                case.grad[-1] = np.nan
            blocks, block_groups = quantized.block_table(segments)
            codes, absmax = quantized.encode_reference(case.state, blocks, rule.state)
            on_cpu = [case.param.copy(), codes.copy(), absmax.copy()]
            no_words = (np.uint64(0),) * 4
            quantized.int8_kernel(rule)(on_cpu[0], on_cpu[1], on_cpu[2], case.grad, blocks, block_groups, case.table,
                                        case.scalars, *no_words)
            on_gpu = [device(a) for a in (case.param, codes, absmax, case.grad, blocks, block_groups, case.table)]
            cuda.quantized_launch("int8", rule, block_groups.size)(*on_gpu, case.scalars, *no_words)
            for label, a, b in zip(("param", "codes", "absmax"), on_cpu, on_gpu[:3]):
                if not np.array_equal(a, b.copy_to_host(), equal_nan=True):
                    failures.append(f"int8 {name} size {size} {label}: {np.flatnonzero(a != b.copy_to_host())[:5]}")
            bits = quantized.round_bfloat16_nearest(case.state)
            key = (np.uint64(0xDEADBEEF), np.uint64(0x1234), np.uint64(9), np.uint64(size % 5))  # offset too
            cpu_bounds, cpu_groups = cpu_table(segments)
            on_cpu = [case.param.copy(), bits.copy()]
            quantized.bfloat16_kernel(rule)(*on_cpu, case.grad, cpu_bounds, cpu_groups, case.table, case.scalars, *key)
            tiles = cuda.tile_table(segments)
            on_gpu = [device(a) for a in (case.param, bits, case.grad, *tiles, case.table)]
            cuda.quantized_launch("bfloat16", rule, tiles[1].size)(*on_gpu, case.scalars, *key)
            for label, a, b in zip(("param", "state"), on_cpu, on_gpu[:2]):
                if not np.array_equal(a, b.copy_to_host(), equal_nan=True):
                    failures.append(f"bfloat16 {name} size {size} {label}: {np.flatnonzero(a != b.copy_to_host())[:5]}")
    return failures


def bfloat16_params_failures():
    """bfloat16 parameters (as uint16 bits), with float32, bfloat16 or int8 state: every element-wise
    rule at a few elements, and over several tiles with a group skipping (a stateless rule,
    one with two state rows and one with three: each Philox stream), CPU kernel against CUDA
    kernel, a NaN gradient, an offset. (The simulator runs Philox in Python: minutes a rule.)"""
    failures = []
    for name in ELEMENTWISE:
        sizes = ((0, 0), (1, 1), (7, 2))
        if name in ("sgd_step", "adam_step", "adamw_amsgrad_step"):
            sizes += ((300, 3),)
        for size, seed in sizes:
            rng = np.random.default_rng(seed + 10)
            case, segments = make_case(name, size, np.float32, rng, 3 if size > 2 else 1, chunk_size=40)
            rule = case.rule
            if size == 300:
                segments = [(a, b, -1 if k == 1 else k) for a, b, k in segments]
            param, grad = (quantized.round_bfloat16_nearest(a) for a in (case.param, case.grad))
            if size:
                grad[-1] = 0x7FC0
            key = (np.uint64(0xFEEDF00D), np.uint64(0x77), np.uint64(4), np.uint64(size % 3))
            cpu_bounds, cpu_groups = cpu_table(segments)
            tiles = cuda.tile_table(segments)
            for state_kind in (None, "bfloat16"):
                state = case.state if state_kind is None else quantized.round_bfloat16_nearest(case.state)
                on_cpu = [param.copy(), state.copy()]
                quantized.rounded_kernel(rule, state_kind, True)(*on_cpu, grad, cpu_bounds, cpu_groups, case.table,
                                                                 case.scalars, *key)
                on_gpu = [device(a) for a in (param, state, grad, *tiles, case.table)]
                cuda.quantized_launch(state_kind, rule, tiles[1].size, bfloat16_params=True)(*on_gpu, case.scalars,
                                                                                             *key)
                for label, a, b in zip(("param", "state"), on_cpu, on_gpu[:2]):
                    if not np.array_equal(a, b.copy_to_host(), equal_nan=True):
                        failures.append(f"bfloat16 params, {state_kind} state, {name} size {size} {label}: "
                                        f"{np.flatnonzero(a != b.copy_to_host())[:5]}")
            if not rule.state:
                continue
            blocks, block_groups = quantized.block_table(segments)
            codes, absmax = quantized.encode_reference(case.state, blocks, rule.state)
            on_cpu = [param.copy(), codes.copy(), absmax.copy()]
            quantized.int8_kernel(rule, True, True)(*on_cpu, grad, blocks, block_groups, case.table, case.scalars, *key)
            on_gpu = [device(a) for a in (param, codes, absmax, grad, blocks, block_groups, case.table)]
            cuda.quantized_launch("int8", rule, block_groups.size, bfloat16_params=True)(*on_gpu, case.scalars, *key)
            for label, a, b in zip(("param", "codes", "absmax"), on_cpu, on_gpu[:3]):
                if not np.array_equal(a, b.copy_to_host(), equal_nan=True):
                    failures.append(f"bfloat16 params, int8 state, {name} size {size} {label}: "
                                    f"{np.flatnonzero(a != b.copy_to_host())[:5]}")
    return failures


def tensorwise_quantized_failures():
    """Rules with per-tensor sums over int8 and bfloat16 state: the CPU kernel against the CUDA
    launches on the same tiles (int8: its blocks), with a tensor skipped, an empty one, and a
    NaN gradient; bfloat16 with an offset (a shard's) in the Philox counters."""
    failures = []
    for name in TENSORWISE:
        for sizes, skipped in (([0], ()), ([1, 700, 0, 5], (3,)), ([301, 7, 2, 650], ()), ([3] * 30, (4,))):
            case, _ = make_tensor_case(name, sizes, np.float32, np.random.default_rng(len(sizes) + 7), skipped)
            if sizes[0] == 301:
                case.grad[5] = np.nan
            codes, absmax = quantized.encode_reference(case.state, case.bounds, case.rule.state)
            on_cpu = [case.param.copy(), codes.copy(), absmax.copy()]
            tables = (case.tile_tensor, case.tensor_tiles)
            no_words = (np.uint64(0),) * 4
            quantized.EncodedTensorwiseLaunch(case.rule, "int8", case.param.size, tables)(
                on_cpu[0], on_cpu[1], on_cpu[2], case.grad, case.bounds, case.groups, case.table, case.scalars,
                *no_words)
            on_gpu = [device(a) for a in (case.param, codes, absmax, case.grad, case.bounds, case.groups, case.table)]
            launch = cuda.EncodedTensorwiseLaunch(case.rule, "int8", case.groups.size, tuple(device(t) for t in tables))
            launch(*on_gpu, case.scalars, *no_words)
            for label, a, b in zip(("param", "codes", "absmax"), on_cpu, on_gpu[:3]):
                if not np.array_equal(a, b.copy_to_host(), equal_nan=True):
                    failures.append(f"int8 {name} sizes {sizes} {label}: {np.flatnonzero(a != b.copy_to_host())[:5]}")
            bits = quantized.round_bfloat16_nearest(case.state)
            key = (np.uint64(0xDEADBEEF), np.uint64(0x1234), np.uint64(9), np.uint64(len(sizes) * 3))
            on_cpu = [case.param.copy(), bits.copy()]
            quantized.EncodedTensorwiseLaunch(case.rule, "bfloat16", case.param.size, tables)(
                *on_cpu, bits, case.grad, case.bounds, case.groups, case.table, case.scalars, *key)
            on_gpu = [device(a) for a in (case.param, bits, bits, case.grad, case.bounds, case.groups, case.table)]
            launch = cuda.EncodedTensorwiseLaunch(case.rule, "bfloat16", case.groups.size,
                                                  tuple(device(t) for t in tables))
            launch(*on_gpu, case.scalars, *key)
            for label, a, b in zip(("param", "state"), on_cpu, on_gpu[:2]):
                if not np.array_equal(a, b.copy_to_host(), equal_nan=True):
                    failures.append(f"bfloat16 {name} sizes {sizes} {label}: {np.flatnonzero(a != b.copy_to_host())[:5]}")
    return failures


def dropout_failures():
    """Dropout and its mask on the CUDA kernel against the CPU kernel: the same bits."""
    failures = []
    rng = np.random.default_rng(7)
    u = np.uint64
    for size, offset, p in ((0, 0, 0.5), (1, 0, 0.5), (7, 3, 0.1), (301, 5, 0.9), (64, 0, 0.5)):
        seed = int(rng.integers(0, 2**63))
        args = (u(offset), u(seed & 0xFFFFFFFF), u(seed >> 32), u(3), u(17), u(int((1 - p) * 2**32)))
        for dtype in (np.float32, np.float64, np.uint8):
            x = np.ones(size, dtype) if dtype is np.uint8 else rng.standard_normal(size).astype(dtype)
            scale = dtype(1) if dtype is np.uint8 else dtype(1 / (1 - p))
            on_gpu = device(x)
            dropout.dropout_step(x, *args, scale)
            cuda.launch_dropout(on_gpu, *args, scale)
            if not np.array_equal(x, on_gpu.copy_to_host()):
                failures.append(f"dropout {dtype.__name__} size {size} offset {offset}")
    return failures


def penalty_failures():
    failures = []
    rng = np.random.default_rng(8)
    for size in (0, 1, 133):
        param = rng.standard_normal(size)
        segments = [(0, size // 2, 0), (size // 2, size, 1)]
        table = np.array([[1.0, 0.3], [1.0, 2.0]])
        cpu_value = penalty.l2_penalty(param, *cpu_table(segments), table, 1)
        gpu_value = cuda.Penalty(device(param), *map(device, cuda.tile_table(segments)), device(table), 1)()
        if not abs(gpu_value - cpu_value) <= 1e-12 * abs(cpu_value):
            failures.append(f"penalty size {size}: {gpu_value!r} vs {cpu_value!r}")
    return failures


def device(array):
    """A device copy of a host array (host memory again under the simulator)."""
    from numba import cuda as numba_cuda

    return numba_cuda.to_device(array)


def cpu_table(segments):
    from fastopt.kernels.chunks import chunk_table

    return chunk_table(segments, chunk_size=40)


if __name__ == "__main__":  # not on import (pytest --doctest-modules imports every module)
    sys.exit(main())
