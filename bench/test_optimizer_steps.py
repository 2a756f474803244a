"""pytest-benchmark suite: one optimizer step, per rule, size and implementation.

    pytest bench/ --benchmark-only                       # 1e3 to 1e7
    FASTOPT_BENCH_MAX_SIZE=1e8 pytest bench/ --benchmark-only
    pytest bench/ --benchmark-only --benchmark-save=baseline
    pytest bench/ --benchmark-only --benchmark-compare=0001 --benchmark-compare-fail=median:10%

Each result carries ``bytes``, ``gbps`` and ``pct_roofline`` (against ``x *= s`` over the same
size, measured in the same run) in its extra info. Peers: best-effort numpy (``out=``, one
scratch buffer) and, when installed, torch.optim (fused where it has it, else foreach).
"""

import numpy as np
import pytest

from fastopt.bench import cpu as cases
from fastopt.bench.cpu import record

SIZES = cases.SUITE_SIZES

IMPLEMENTATIONS = {"fastopt": cases.FastoptStep, "numpy": cases.NumpyStep, "torch": cases.TorchStep}


def rounds(n):
    return 30 if n <= 10**6 else 10 if n <= 10**7 else 5


def timed(benchmark, step, size, rounds_factor=1):
    """``step`` timed at ``size``; below 1e4 elements each round runs it several times
    (pytest-benchmark reports the time of one call)."""
    benchmark.pedantic(step, rounds=rounds(size) * rounds_factor, warmup_rounds=2,
                       iterations=cases.calls_per_sample(size))


@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n:.0e}")
def test_roofline(benchmark, size, roofline_gbps):
    step = cases.RooflineStep(size)
    timed(benchmark, step.step, size, rounds_factor=3)
    record(benchmark, 8 * size, roofline_gbps(size))


#: Every (rule, implementation) there is: torch has no Lion or LAMB, numpy no Adafactor.
STEPS = [(rule, implementation) for rule in cases.BYTES_PER_ELEMENT for implementation in IMPLEMENTATIONS
         if (implementation != "torch" or rule in cases.TorchStep.TORCH)
         and (implementation != "numpy" or hasattr(cases.NumpyStep, "_" + rule))]


@pytest.mark.parametrize("rule, implementation", STEPS, ids=[f"{r}-{i}" for r, i in STEPS])
@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n:.0e}")
def test_step(benchmark, rule, size, implementation, roofline_gbps):
    if implementation == "torch":
        pytest.importorskip("torch")
    step = IMPLEMENTATIONS[implementation](rule, size)
    benchmark.group = f"{rule} {size:.0e}"
    timed(benchmark, step.step, size)
    record(benchmark, cases.BYTES_PER_ELEMENT[rule] * size, roofline_gbps(size))


STATE_DTYPE_STEPS = ["fastopt float32", "fastopt int8", "fastopt bfloat16", "torch fused", "fastopt bf16 params",
                     "fastopt bf16 params f32 state", "fastopt bf16 params int8 state", "torch fused bf16 params"]


@pytest.mark.parametrize("implementation", STATE_DTYPE_STEPS)
@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n:.0e}")
def test_state_dtype(benchmark, implementation, size, roofline_gbps):
    """AdamW with float32, int8 and bfloat16 state against torch's fused AdamW (float32), and
    over bfloat16 parameters (bfloat16, float32 or int8 state, stochastic rounding) against
    torch's fused AdamW over bfloat16 parameters (bfloat16 state, rounded to nearest)."""
    if not cases.StateDtypeStep.available(implementation):
        pytest.skip(f"{implementation} needs a library that is not installed")
    step = cases.StateDtypeStep(implementation, size)
    params = "bfloat16 params" if "bf16 params" in implementation else "state"
    benchmark.group = f"adamw {params} {size:.0e}"
    timed(benchmark, step.step, size)
    record(benchmark, cases.StateDtypeStep.BYTES[implementation] * size, roofline_gbps(size))


@pytest.mark.parametrize("kernel", ["lamb_int8", "lamb_bf16"])
@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n:.0e}")
def test_lamb_state_dtype(benchmark, kernel, size, roofline_gbps):
    """LAMB with int8 or bfloat16 state (its two passes decode the state twice), grouped with
    the float32 LAMB steps of :func:`test_step` (fastopt's and numpy's)."""
    bytes_of, makers = cases.REPORT_KERNELS[kernel]
    step = makers["fastopt"](size)
    benchmark.group = f"lamb {size:.0e}"
    timed(benchmark, step.step, size)
    record(benchmark, bytes_of["fastopt"] * size, roofline_gbps(size))


def _gpu():
    from fastopt.bench import gpu as _gpu_bench

    import numba

    available, why = _gpu_bench.gpu_available()
    if not available or numba.config.ENABLE_CUDASIM:
        pytest.skip(f"no GPU: {why}")
    return _gpu_bench


CUDA_STEPS = [(rule, implementation) for rule, implementation in STEPS if implementation != "numpy"]


@pytest.mark.parametrize("rule, implementation", CUDA_STEPS, ids=[f"{r}-{i}" for r, i in CUDA_STEPS])
@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n:.0e}")
def test_step_cuda(benchmark, rule, size, implementation):
    """The same steps on the GPU (skipped without one); the timed call synchronises, and the
    roofline is a device-to-device copy of the same size."""
    gpu = _gpu()
    if implementation == "torch" and not gpu._torch_cuda():
        pytest.skip("torch without CUDA")
    from numba import cuda

    copy = gpu.CudaCopyStep(size)
    roofline = 8 * size / (gpu.event_ms(copy, 20) / 1e3) / 1e9
    del copy
    step = (gpu.CudaTorchStep if implementation == "torch" else gpu.CudaFastoptStep)(rule, size).step

    def synchronised():
        step()
        cuda.synchronize()

    benchmark.group = f"{rule} {size:.0e} cuda"
    benchmark.pedantic(synchronised, rounds=rounds(size) * 3, warmup_rounds=3)
    record(benchmark, cases.BYTES_PER_ELEMENT[rule] * size, roofline)


@pytest.mark.parametrize("implementation", ["fastopt", "torch"])
def test_adam_many_tensors(benchmark, implementation, roofline_gbps):
    """2,000 tensors of 5,000: one flat buffer against torch's fused loop over the tensors."""
    n = 2000 * 5000
    if implementation == "torch":
        pytest.importorskip("torch")
        step = cases.TorchStep("adam", n, tensors=2000)
    else:
        step = cases.FastoptStep("adam", n)
    benchmark.group = "adam 2000 x 5000"
    benchmark.pedantic(step.step, rounds=10, warmup_rounds=2)
    record(benchmark, 28 * n, roofline_gbps(n))


@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n:.0e}")
def test_l2_penalty(benchmark, size, roofline_gbps):
    import fastopt

    params = fastopt.FlatParams.wrap(cases.random_buffer(size, 0), np.zeros(size, np.float32), {"p": size})
    optimizer = fastopt.SGD(params, weight_decay=1e-4)
    benchmark.group = f"l2 penalty {size:.0e}"
    timed(benchmark, optimizer.l2_penalty, size)
    record(benchmark, 4 * size, roofline_gbps(size))


@pytest.mark.parametrize("implementation", ["fastopt", "numpy", "torch"])
@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n:.0e}")
def test_dropout(benchmark, size, implementation, roofline_gbps):
    """In-place inverted dropout, p = 0.1; 8 bytes per element; a new mask every call."""
    if implementation == "torch":
        pytest.importorskip("torch")
    step = cases.DropoutStep(implementation, size)
    benchmark.group = f"dropout {size:.0e}"
    timed(benchmark, step.step, size)
    record(benchmark, cases.DropoutStep.BYTES_PER_ELEMENT * size, roofline_gbps(size))


@pytest.mark.parametrize("implementation", ["fastopt", "torch"])
def test_trainer_step(benchmark, implementation):
    """Forward, backward and AdamW of a 256-512-512-10 MLP on a batch of 256."""
    if implementation == "torch":
        pytest.importorskip("torch")
    step = cases.TrainerStep(implementation)
    benchmark.group = "trainer step 256-512-512-10, batch 256"
    benchmark.pedantic(step.step, rounds=30, warmup_rounds=3)


@pytest.mark.parametrize("implementation", ["fastopt", "torch"])
def test_trainer_step_cuda(benchmark, implementation):
    """The same training step on the GPU (skipped without one): fastopt's CuPy model with its
    CUDA kernels against torch; the timed call synchronises."""
    gpu = _gpu()
    if implementation == "torch" and not gpu._torch_cuda():
        pytest.skip("torch without CUDA")
    from numba import cuda

    step = cases.TrainerStep(implementation, device="cuda").step

    def synchronised():
        step()
        cuda.synchronize()

    benchmark.group = "trainer step 256-512-512-10, batch 256, cuda"
    benchmark.pedantic(synchronised, rounds=100, warmup_rounds=5)


@pytest.mark.parametrize("implementation", ["fastopt", "torch"])
@pytest.mark.parametrize("kind", ["scheduler_step", "set_lr", "optimizer_step", "scheduled_step"])
def test_hot_path(benchmark, kind, implementation):
    """The Python around a step over 1e3 float32 (AdamW, one-cycle with cycled momentum):
    fastopt.bench.hot_path's cases; bench/hot_path.py checks the bars in one run."""
    if implementation == "torch":
        pytest.importorskip("torch")
    from fastopt.bench import hot_path

    case = hot_path.Case(kind, implementation)  # kept alive: torch's scheduler holds a weak reference
    benchmark.group = f"hot path: {kind}"
    benchmark.pedantic(case.step, rounds=50, warmup_rounds=5, iterations=200)


@pytest.mark.parametrize("implementation", ["fastopt", "torch"])
@pytest.mark.parametrize("kind", ["step", "training_step"])
def test_torch_dropin(benchmark, kind, implementation):
    """fastopt.torch.AdamW against torch's fused AdamW on a 41,642-parameter MLP in 8 tensors:
    the step alone and a whole training step; bench/torch_dropin.py checks the bars."""
    pytest.importorskip("torch")
    from fastopt.bench import torch_dropin

    case = torch_dropin.Case(kind, implementation)  # kept alive: torch's scheduler holds a weak reference
    benchmark.group = f"torch drop-in: {kind}"
    benchmark.pedantic(case.step, rounds=30, warmup_rounds=5, iterations=20 if kind == "step" else 5)


@pytest.mark.parametrize("implementation", ["fastopt", "torch"])
@pytest.mark.parametrize("problem", ["digits", "synthetic"])
def test_trainer_epoch(benchmark, problem, implementation):
    """One training epoch of the same MLP (ReLU, dropout 0.1, AdamW) by fastopt's Trainer and
    by a torch loop: digits (64-128-10, batch 32) and 20,000 synthetic samples (256-512-512-10,
    batch 256; bench/trainer_vs_torch.py takes 100,000, the two taking turns, and checks the
    ratio)."""
    if implementation == "torch":
        pytest.importorskip("torch")
    if problem == "digits":
        pytest.importorskip("sklearn")
    import trainer_vs_torch as epochs

    x, y, sizes, batch = epochs.problem(problem, samples=20_000)
    run = (epochs.fastopt_epochs if implementation == "fastopt" else epochs.torch_epochs)(x, y, sizes, batch, "cpu")
    benchmark.group = f"trainer epoch: {problem}"
    benchmark.pedantic(lambda: next(run), rounds=5 if problem == "synthetic" else 20, warmup_rounds=1)


@pytest.mark.parametrize("implementation", cases.MuonStep.IMPLEMENTATIONS)
@pytest.mark.parametrize("size", [n for n in (10**6, 10**7) if n <= max(SIZES)], ids=lambda n: f"{n:.0e}")
def test_muon(benchmark, size, implementation):
    """Muon over pairs of 500 x 1000 and 1000 x 500 float32 matrices: the Newton-Schulz
    iteration on BLAS decides the time (``gflops`` in the extra info: the iteration's)."""
    if implementation == "torch":
        pytest.importorskip("torch")
    step = cases.MuonStep(implementation, size)
    benchmark.group = f"muon {size:.0e}"
    benchmark.pedantic(step.step, rounds=10 if size <= 10**6 else 3, warmup_rounds=1)
    benchmark.extra_info["gflops"] = cases.muon_flops(step.shapes) / benchmark.stats.stats.median / 1e9
