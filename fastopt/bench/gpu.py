"""GPU cases: fastopt's CUDA kernels against torch.optim on the same card, timed with CUDA
events, with a device-to-device copy as the roofline; plus CPU/GPU parity on fresh data and the
CUDA issue's bars. Used by ``fastopt bench`` (GPU rows), ``bench/gpu_vs_cpu.py`` and the
pytest-benchmark suite.

Nothing here runs without a usable GPU, except under the CUDA simulator, where the tests run
it end to end at tiny sizes (its timings are meaningless there).
"""

import time

import numpy as np

import fastopt

from .. import device as _device
from . import cpu as _bench

#: torch.optim on CUDA at its fastest: fused where it has it (SGD, Adam, AdamW), else foreach.
TORCH_MODE = {"SGD": "fused", "Adam": "fused", "AdamW": "fused", "RMSprop": "foreach", "Adagrad": "fused",
              "Adamax": "foreach", "NAdam": "foreach", "RAdam": "foreach", "Adafactor": "foreach"}


def gpu_available():
    """``(True, name)`` with a usable GPU, else ``(False, why)``."""
    try:
        cuda = _device.cuda()
    except RuntimeError as error:
        return False, str(error)
    import numba

    if numba.config.ENABLE_CUDASIM:
        return True, "the CUDA simulator"
    name = cuda.get_current_device().name
    return True, name.decode() if isinstance(name, bytes) else str(name)


def _to_device(array):
    return _device.to_device(array)


class CudaFastoptStep:
    def __init__(self, rule, n):
        cls, options = _bench.FASTOPT[rule]
        data = _to_device(_bench.random_buffer(n, 0))
        grad = _to_device(_bench.random_buffer(n, 1) * np.float32(1e-3))
        self.params = fastopt.FlatParams.wrap(data, grad, {"p": _bench.shape_of(rule, n)})
        self.optimizer = cls(self.params, **options)
        self.step = self.optimizer.step


class CudaTorchStep:
    """``torch.optim`` on the GPU over one tensor of ``n`` (fused or foreach, see TORCH_MODE)."""

    timer = "torch"

    def __init__(self, rule, n):
        import torch

        name, options = _bench.TorchStep.TORCH[rule]
        shape = _bench.shape_of(rule, n)
        p = torch.from_numpy(_bench.random_buffer(n, 0).reshape(shape)).cuda().requires_grad_()
        p.grad = torch.from_numpy(_bench.random_buffer(n, 1).reshape(shape) * np.float32(1e-3)).cuda()
        self.optimizer = getattr(torch.optim, name)([p], **options, **{TORCH_MODE[name]: True})
        self.step = self.optimizer.step


class CudaCopyStep:
    """A device-to-device copy of ``n`` float32: 8 bytes per element, the bandwidth ceiling."""

    def __init__(self, n):
        self.source = _to_device(_bench.random_buffer(n, 2))
        self.target = _device.cuda().device_array(n, np.float32)

    def step(self):
        self.target.copy_to_device(self.source)


class CudaDropoutStep:
    BYTES_PER_ELEMENT = 8

    def __init__(self, implementation, n):
        self.t = 0
        if implementation == "torch":
            import torch

            tensor = torch.from_numpy(_bench.random_buffer(n, 3)).cuda()
            self.step = lambda: torch.nn.functional.dropout(tensor, 0.1, training=True, inplace=True)
            self.timer = "torch"
        else:
            self.x = _to_device(_bench.random_buffer(n, 3))
            self.step = self._fastopt

    def _fastopt(self):
        self.t += 1
        fastopt.dropout(self.x, 0.1, seed=1234, step=self.t)


def event_ms(case, repeats, warmup=5):
    """Median GPU time of ``case.step()`` in ms, from a pair of CUDA events around each call
    (torch's events for torch cases, on torch's stream)."""
    if getattr(case, "timer", None) == "torch":
        import torch

        make, sync = (lambda: torch.cuda.Event(enable_timing=True)), torch.cuda.synchronize
    else:
        cuda = _device.cuda()
        make, sync = cuda.event, cuda.synchronize
    for _ in range(warmup):
        case.step()
    sync()
    times = []
    for _ in range(repeats):
        start, end = make(), make()
        start.record()
        case.step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return max(float(np.median(times)), 1e-6)  # the simulator's clock reads 0


def host_us_per_step(case, steps=2000):
    """Host time per ``step()`` in µs: calls enqueued back to back, no synchronisation inside."""
    return _host_us(case.step, steps)


def _host_us(action, steps):
    cuda = _device.cuda()
    for _ in range(min(10, steps)):
        action()
    cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        action()
    elapsed = time.perf_counter() - start
    cuda.synchronize()
    return elapsed / steps * 1e6


def host_breakdown_us(case, steps=2000):
    """Where a step's host time goes, in µs per call: fastopt's own preparation of the scalar
    arguments; numba-cuda's launch of the kernel specialised for the argument types, as a step
    does it (argument marshalling and the driver call); and, for comparison, the launch through
    numba's generic dispatcher, which resolves the types on every call."""
    from ..kernels import cuda

    optimizer = case.optimizer
    arguments = (*optimizer._plan.buffers, optimizer._scalars(optimizer.step_count + 1))
    generic = cuda.configure(cuda.rule_kernel(optimizer.rule), cuda.blocks_for(arguments[4].size))
    launches = {"launch": optimizer._plan.launch, "launch_generic": generic}

    result = {"prepare": _host_us(lambda: optimizer._scalars(optimizer.step_count + 1), steps)}
    result.update({name: _host_us(lambda: launch(*arguments), steps) for name, launch in launches.items()})
    return result


def launch_shapes(sizes=(10**5, 10**6, 10**7, 10**9)):
    """The grid a rule kernel gets on this device at each size (tiles, blocks, threads)."""
    from ..kernels import cuda

    return [cuda.launch_shape(n) for n in sizes]


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


GPU_KERNELS = {
    "adam": _bench.BYTES_PER_ELEMENT["adam"],
    "adamw": _bench.BYTES_PER_ELEMENT["adamw"],
    "sgd_nesterov": _bench.BYTES_PER_ELEMENT["sgd_nesterov"],
    "rmsprop": _bench.BYTES_PER_ELEMENT["rmsprop"],
    "dropout": CudaDropoutStep.BYTES_PER_ELEMENT,
    **{rule: _bench.BYTES_PER_ELEMENT[rule] for rule in ("adagrad", "adamax", "nadam", "radam", "lion", "lamb",
                                                         "adafactor")},
    **{kernel: {"fastopt": _bench.StateDtypeStep.BYTES[mine], "torch": _bench.StateDtypeStep.BYTES[peer]}
       for kernel, (mine, peer) in _bench.STATE_DTYPE_KERNELS.items()},
}
#: What the GPU report times unless told: the first five.
DEFAULT_GPU_KERNELS = ("adam", "adamw", "sgd_nesterov", "rmsprop", "dropout")


def _case(kernel, implementation, n):
    if kernel == "dropout":
        return CudaDropoutStep(implementation, n)
    if kernel in _bench.STATE_DTYPE_KERNELS:
        mine, peer = _bench.STATE_DTYPE_KERNELS[kernel]
        return _bench.StateDtypeStep(mine if implementation == "fastopt" else peer, n, device="cuda")
    return (CudaTorchStep if implementation == "torch" else CudaFastoptStep)(kernel, n)


def gpu_report(sizes, kernels=None, repeats=50):
    """Rows like :func:`fastopt.bench.cpu.report`'s, with ``device`` "cuda": fastopt's CUDA kernel
    and torch on the same card (when torch has CUDA), GB/s and % of the copy bandwidth measured
    at the same size in this run."""
    kernels = [k for k in (kernels or DEFAULT_GPU_KERNELS) if k in GPU_KERNELS]
    implementations = ["fastopt"] + (["torch"] if _torch_cuda() else [])
    rows = []
    for n in sizes:
        copy_ms = event_ms(CudaCopyStep(n), repeats)
        roofline = 8 * n / (copy_ms / 1e3) / 1e9
        for kernel in kernels:
            medians = {name: event_ms(_case(kernel, name, n), repeats) / 1e3 for name in implementations
                       if name == "fastopt" or kernel in _bench.TorchStep.TORCH or kernel == "dropout"
                       or kernel in _bench.STATE_DTYPE_KERNELS}
            rows += _bench.report_rows(kernel, n, "cuda", GPU_KERNELS[kernel], medians, roofline)
    return rows


def parity(n=1_000_003, steps=5):
    """Every optimizer family and dropout, CPU against CUDA on fresh random data: the number of
    elements that differ after ``steps`` steps, and the largest difference in ulps."""
    results = {}
    for seed, (rule, (cls, options)) in enumerate(_bench.FASTOPT.items()):
        rng = np.random.default_rng(seed)
        cpu = fastopt.FlatParams({"p": n})
        cpu.data[:] = rng.standard_normal(n, dtype=np.float32)
        gpu = cpu.to("cuda")
        cpu_opt, gpu_opt = cls(cpu, **options), cls(gpu, **options)
        for _ in range(steps):
            g = rng.standard_normal(n, dtype=np.float32) * np.float32(1e-2)
            cpu.grad[:] = g
            gpu.grad.copy_to_device(g)
            cpu_opt.step()
            gpu_opt.step()
        results[rule] = _difference(cpu.data, gpu.data.copy_to_host())
    x = np.random.default_rng(5).standard_normal(n, dtype=np.float32)
    on_gpu = _to_device(x)
    fastopt.dropout(x, 0.3, seed=11, step=3, offset=7)
    fastopt.dropout(on_gpu, 0.3, seed=11, step=3, offset=7)
    results["dropout"] = _difference(x, on_gpu.copy_to_host())
    return results


def _difference(a, b):
    differ = ~((a == b) | (np.isnan(a) & np.isnan(b)))
    ulps = np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))
    return {"differing": int(differ.sum()), "max_ulps": int(ulps[differ].max()) if differ.any() else 0}


def bars(n_adam=10**9, n_host=10**5, repeats=20, host_steps=2000):
    """The CUDA issue's bars: Adam over ``n_adam`` float32 against the copy bandwidth and torch
    fused Adam; host time per step at ``n_host``."""
    result = {"n_adam": n_adam}
    copy = CudaCopyStep(n_adam)
    result["copy_ms"] = event_ms(copy, repeats)
    del copy
    result["copy_gbps"] = 8 * n_adam / (result["copy_ms"] / 1e3) / 1e9
    case = CudaFastoptStep("adam", n_adam)
    result["fastopt_ms"] = event_ms(case, repeats)
    del case
    result["fastopt_gbps"] = 28 * n_adam / (result["fastopt_ms"] / 1e3) / 1e9
    result["pct_copy"] = 100 * result["fastopt_gbps"] / result["copy_gbps"]
    if _torch_cuda():
        import torch

        case = CudaTorchStep("adam", n_adam)
        result["torch_fused_ms"] = event_ms(case, repeats)
        del case
        torch.cuda.empty_cache()
        result["torch_over_fastopt"] = result["torch_fused_ms"] / result["fastopt_ms"]
    result["host_us_per_step"] = host_us_per_step(CudaFastoptStep("adam", n_host), host_steps)
    result["host_us_breakdown"] = host_breakdown_us(CudaFastoptStep("adam", n_host), host_steps)
    if _torch_cuda():
        result["torch_host_us_per_step"] = host_us_per_step(CudaTorchStep("adam", n_host), host_steps)
    return result
