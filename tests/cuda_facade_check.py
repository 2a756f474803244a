"""The CUDA façade against the CPU: optimizers on GPU-resident FlatParams, dropout on device
arrays, state dicts across devices, zero-copy wrapping, and the errors.

``python cuda_facade_check.py --simulator`` runs under NUMBA_ENABLE_CUDASIM=1 (as
tests/test_cuda_simulator.py does), with small launches; without ``--simulator`` it runs on a real GPU
(bench/gpu_check.sh does), where the same comparisons must hold bit for bit. It prints one JSON
object: failures (empty when all is well) and what was checked.
"""

import json
import sys
import numpy as np

OPTIMIZERS = {
    "sgd": ("SGD", dict(lr=0.05, weight_decay=1e-3)),
    "sgd_momentum": ("SGD", dict(lr=0.02, momentum=0.8, dampening=0.3)),
    "sgd_nesterov": ("SGD", dict(lr=0.02, momentum=0.9, nesterov=True, weight_decay=1e-3, maximize=True)),
    "adam": ("Adam", dict(lr=1e-2, weight_decay=1e-3)),
    "adam_amsgrad": ("Adam", dict(lr=1e-2, amsgrad=True)),
    "adamw": ("AdamW", dict(lr=1e-2, weight_decay=1e-2)),
    "adamw_amsgrad": ("AdamW", dict(lr=1e-2, weight_decay=1e-2, amsgrad=True)),
    "rmsprop": ("RMSProp", dict(lr=1e-3, weight_decay=1e-3)),
    "rmsprop_centered_momentum": ("RMSProp", dict(lr=1e-3, centered=True, momentum=0.9)),
    "adagrad": ("Adagrad", dict(lr=0.05, lr_decay=1e-3, weight_decay=1e-3, initial_accumulator_value=0.1)),
    "adamax": ("Adamax", dict(lr=1e-2, weight_decay=1e-3)),
    "radam": ("RAdam", dict(lr=1e-2, weight_decay=1e-3)),
    "radamw": ("RAdam", dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True)),
    "nadam": ("NAdam", dict(lr=1e-2, weight_decay=1e-3, momentum_decay=0.02)),
    "nadamw": ("NAdam", dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True, maximize=True)),
    "lion": ("Lion", dict(lr=1e-3, weight_decay=0.1)),
    "lamb": ("LAMB", dict(lr=1e-2, weight_decay=1e-2, maximize=True)),
}


def patch_simulator():
    """Small launches, so that the grid-stride loops over tiles and elements, and the blocks'
    loops over Philox counters, all turn over at test sizes. (The simulator needs nothing else:
    under it the CUDA target binds the plain-Python primitives of fastopt.kernels.primitives,
    a correctly rounded fma and a dtype-preserving square root.)"""
    from fastopt.kernels import chunks, cuda, quantized

    cuda.THREADS_PER_BLOCK, cuda.MAX_BLOCKS, cuda.TILE_SIZE = 8, 3, 16
    # LAMB's tiles: more than one per tensor, and more elements than a tile has lanes (256)
    chunks.TENSOR_TILE = 300
    # int8 blocks: several per tensor at test sizes (the kernels' scratch holds the full 2,048)
    quantized.BLOCK = 300
    strict_host_copies()


def strict_host_copies():
    """Make the simulator's copies between host and device take a host array as numba-cuda's
    driver does, through the buffer protocol, so that a copy a GPU would refuse fails here
    too: ml_dtypes' bfloat16 has no buffer format ("cannot include dtype 'E' in a buffer")."""
    from numba import cuda
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    def as_driver_takes(array):
        if isinstance(array, np.ndarray):
            memoryview(array)
        return array

    to_device, copy_to_device, copy_to_host = cuda.to_device, FakeCUDAArray.copy_to_device, FakeCUDAArray.copy_to_host
    cuda.to_device = lambda array, *args, **kwargs: to_device(as_driver_takes(array), *args, **kwargs)
    FakeCUDAArray.copy_to_device = lambda self, array, *args, **kwargs: copy_to_device(
        self, as_driver_takes(array), *args, **kwargs)
    FakeCUDAArray.copy_to_host = lambda self, array=None, *args, **kwargs: copy_to_host(
        self, None if array is None else as_driver_takes(array), *args, **kwargs)


def host(array):
    return array if isinstance(array, np.ndarray) else array.copy_to_host()


def check(simulator):
    import fastopt
    from numba import cuda

    failures, checked = [], []

    def expect(condition, what):
        checked.append(what)
        if not condition:
            failures.append(what)

    def same(a, b):
        return np.array_equal(host(a), host(b), equal_nan=True)

    def raises(kind, text, action):
        try:
            action()
        except kind as error:
            return text in str(error)
        return False

    # Sizes: 16,411 elements span two chunks of the chunk table; the groups cut inside them.
    common = {"w": (121, 131), "b": 131, "scale": (11, 9)} if not simulator else {"w": (7, 9), "b": 9, "s": 5}
    # LAMB sums per tensor: under the simulator, a tensor of two tiles, one of 300 elements
    tensorwise = common if not simulator else {"w": (20, 16), "b": 31, "s": 5}
    last = list(common)[-1]
    groups = [fastopt.ParamGroup(["b"], lr_factor=0.5, weight_decay=0.0), fastopt.ParamGroup([last], lr_factor=2.0)]
    steps = 4 if simulator else 20
    for dtype in (np.float32, np.float64):
        for name, (cls_name, options) in OPTIMIZERS.items():
            cls = getattr(fastopt, cls_name)
            shapes = tensorwise if name == "lamb" else common
            rng = np.random.default_rng(1)
            cpu = fastopt.FlatParams(shapes, dtype=dtype)
            cpu.data[:] = rng.standard_normal(cpu.size)
            gpu = cpu.to("cuda")
            cpu_opt, gpu_opt = cls(cpu, groups=groups, **options), cls(gpu, groups=groups, device="cuda", **options)
            for step in range(steps):
                g = (rng.standard_normal(cpu.size) * 10 ** rng.uniform(-3, 1, cpu.size)).astype(dtype)
                cpu.grad[:] = g
                gpu.grad.copy_to_device(g)
                cpu_opt.step()
                gpu_opt.step()
                if step == 1:  # a new learning rate: a launch scalar, nothing copied
                    cpu_opt.lr = gpu_opt.lr = options["lr"] * 0.3
                if step == 2:  # the fast path: a weight decay (the group table is copied) and momentum
                    for optimizer in (cpu_opt, gpu_opt):
                        optimizer.set_hyperparameters(weight_decay=0.02)
                        if "momentum" in options or cls_name.startswith("Adam"):
                            optimizer.set_momentum(0.7)
            label = f"{name} {dtype.__name__}"
            expect(same(cpu.data, gpu.data), f"{label}: parameters bitwise equal")
            cpu_state, gpu_state = cpu_opt.state_dict(), gpu_opt.state_dict()
            expect(all(same(cpu_state["state"][k], gpu_state["state"][k]) for k in cpu_state["state"]),
                   f"{label}: state bitwise equal")
            expect(all(isinstance(v, np.ndarray) for v in gpu_state["state"].values()),
                   f"{label}: the CUDA state dict holds host arrays")
            penalty_cpu, penalty_gpu = cpu_opt.l2_penalty(), gpu_opt.l2_penalty()
            expect(abs(penalty_gpu - penalty_cpu) <= 1e-12 * abs(penalty_cpu),
                   f"{label}: L2 penalty within 1e-12 ({penalty_gpu!r} vs {penalty_cpu!r})")
            # A state dict moves across devices: CPU state into a CUDA optimizer and back.
            moved = cls(cpu.to("cuda"), groups=groups, **options)
            moved.load_state_dict(cpu_state)
            back = cls(fastopt.FlatParams(shapes, dtype=dtype), groups=groups, **options)
            back.params.data[:] = cpu.data
            back.load_state_dict(gpu_state)
            g = rng.standard_normal(cpu.size).astype(dtype)
            for optimizer in (cpu_opt, moved, back):
                if optimizer.device == "cuda":
                    optimizer.params.grad.copy_to_device(g)
                else:
                    optimizer.params.grad[:] = g
                optimizer.step()
            expect(same(moved.params.data, cpu.data) and same(back.params.data, cpu.data),
                   f"{label}: state dicts continue across devices bitwise")

    # int8 and bfloat16 state over float32 parameters, and bfloat16 parameters with each encoding
    # of their state: the same steps on both devices (one skipping a parameter: fastopt.torch's
    # path), the parameters and state bit for bit (the stochastic roundings included), the L2
    # penalty, and a CPU state dict continuing on the GPU.
    bfloat16 = fastopt.checks.bfloat16()

    def same_bits(a, b):
        a, b = host(a), host(b)
        return a.dtype == b.dtype and np.array_equal(a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}"))

    def upload(buffer, values):
        """Host ``values`` into a device buffer: bfloat16 through its uint16 bits, as README says."""
        if values.dtype == bfloat16:
            buffer.view(np.uint16).copy_to_device(values.view(np.uint16))
        else:
            buffer.copy_to_device(values)

    def encoded_pair(cls_name, options, dtype, state_dtype, seed, state_seed):
        cls = getattr(fastopt, cls_name)
        shapes = {"w": (20, 31), "b": 31, "s": 5} if simulator else {"w": (121, 131), "b": 131, "s": 5}
        rng = np.random.default_rng(seed)
        cpu = fastopt.FlatParams(shapes, dtype=dtype)
        cpu.data[:] = rng.standard_normal(cpu.size)
        gpu = cpu.to("cuda")
        label = f"{cls_name} over {cpu.dtype} parameters, {state_dtype} state"
        expect(gpu.device == "cuda" and gpu.dtype == cpu.dtype and same_bits(gpu["w"].copy_to_host(), cpu["w"]),
               f"{label}: to('cuda') keeps the dtype and the values")
        made = [cls(p, groups=groups, state_dtype=state_dtype, state_seed=state_seed, **options) for p in (cpu, gpu)]
        for step in range(steps):
            g = rng.standard_normal(cpu.size).astype(cpu.dtype)
            cpu.grad[:] = g
            upload(gpu.grad, g)
            for optimizer in made:
                if step == 2:
                    optimizer._step_at(optimizer.step_count + 1, skipped=frozenset({"b"}))
                    optimizer._step_count += 1
                else:
                    optimizer.step()
        expect(same_bits(cpu.data, gpu.data), f"{label}: parameters bitwise equal")
        cpu_state, gpu_state = made[0].state_dict(), made[1].state_dict()
        expect(set(cpu_state["state"]) == set(gpu_state["state"]) and
               all(same(cpu_state["state"][k], gpu_state["state"][k]) for k in cpu_state["state"]),
               f"{label}: state bitwise equal")
        penalty_cpu, penalty_gpu = made[0].l2_penalty(), made[1].l2_penalty()
        expect(penalty_cpu > 0 and abs(penalty_gpu - penalty_cpu) <= 1e-12 * abs(penalty_cpu),
               f"{label}: L2 penalty within 1e-12 ({penalty_gpu!r} vs {penalty_cpu!r})")
        moved = cls(cpu.to("cuda"), groups=groups, state_dtype=state_dtype, **options)
        moved.load_state_dict(cpu_state)
        g = rng.standard_normal(cpu.size).astype(cpu.dtype)
        cpu.grad[:] = g
        upload(moved.params.grad, g)
        made[0].step()
        moved.step()
        expect(same_bits(moved.params.data, cpu.data), f"{label}: a CPU state dict continues on the GPU bitwise")

    for state_dtype in ("int8", "bfloat16"):
        for cls_name, options in (("AdamW", {"lr": 1e-2}), ("SGD", {"lr": 1e-2, "momentum": 0.9, "weight_decay": 1e-3}),
                                  ("RMSProp", {"lr": 1e-3, "momentum": 0.5, "centered": True, "weight_decay": 1e-3}),
                                  ("LAMB", {"lr": 1e-2, "weight_decay": 0.01})):  # LAMB: three launches
            encoded_pair(cls_name, options, np.float32, state_dtype, seed=2, state_seed=11)
    for state_dtype in ("bfloat16", "float32", "int8"):
        for cls_name, options in (("AdamW", {"lr": 1e-2, "weight_decay": 0.05}),
                                  ("SGD", {"lr": 1e-2, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
                                  ("RMSProp", {"lr": 1e-3, "momentum": 0.5, "centered": True, "weight_decay": 1e-3}),
                                  ("Lion", {"lr": 1e-3, "weight_decay": 0.1})):
            encoded_pair(cls_name, options, "bfloat16", state_dtype, seed=3, state_seed=5)

    # Zero-copy over bfloat16 device arrays; views, zero_grad and to('cpu') keep the dtype.
    host_data, host_grad = np.ones(10, bfloat16), np.full(10, 0.5, bfloat16)
    data = cuda.to_device(host_data.view(np.uint16)).view(bfloat16)
    grad = cuda.to_device(host_grad.view(np.uint16)).view(bfloat16)
    params = fastopt.FlatParams.wrap(data, grad, {"w": (2, 5)})
    fastopt.SGD(params, lr=0.1).step()  # 0.95 rounds stochastically to one of its two neighbours
    fastopt.SGD(fastopt.FlatParams.wrap(host_data, host_grad, {"w": (2, 5)}), lr=0.1).step()
    values = data.copy_to_host().astype(np.float64)
    expect(np.all((values == 0.94921875) | (values == 0.953125)) and same_bits(data, host_data),
           f"wrap: the user's bfloat16 device array is stepped and rounded in place as on the CPU ({values})")
    params["w"] = np.full((2, 5), 3.0)
    params.zero_grad()
    expect(np.all(data.copy_to_host() == 3.0) and np.all(grad.copy_to_host() == 0.0),
           "bfloat16 views and zero_grad work on the device")
    # What a PyTorch bfloat16 CUDA tensor becomes through __cuda_array_interface__ ("<V2"):
    untyped = fastopt.FlatParams.wrap(data.view("V2"), grad.view("V2"), {"w": 10})
    expect(untyped.dtype == bfloat16 and same_bits(untyped.data, data), "bfloat16 buffers typed '<V2' are adopted")
    values = fastopt.device.to_device(np.linspace(-1, 1, 10).astype(bfloat16).reshape(2, 5))
    params["w"] = values.view("V2")
    expect(same_bits(data.reshape(2, 5), values), "a '<V2' device value is copied into bfloat16 parameters")
    params["w"] = np.full((2, 5), 3.0)
    expect(raises(TypeError, "value for 'w' must have dtype bfloat16", lambda: params.__setitem__(
        "w", cuda.to_device(np.zeros((2, 5), np.float32)))) and np.all(data.copy_to_host() == 3.0),
        "a device value of another dtype is refused, naming it, and nothing changes")
    made = fastopt.FlatParams.from_arrays({"w": np.linspace(0, 1, 7), "b": [0.1, 0.2]}, dtype="bfloat16", device="cuda")
    expect(made.device == "cuda" and same_bits(made["w"].copy_to_host(), np.linspace(0, 1, 7).astype(bfloat16)),
           "from_arrays(dtype='bfloat16', device='cuda')")
    void = cuda.to_device(np.zeros(4, "V4"))
    expect(raises(TypeError, "data.dtype must be float32, float64 or 'bfloat16'",
                  lambda: fastopt.FlatParams.wrap(void, void, {"w": 4})), "other void buffers are refused")
    expect(params.to("cpu").dtype == bfloat16 and fastopt.FlatParams({"w": 3}, dtype="bfloat16", device="cuda")
           .data.copy_to_host().view(np.uint16).tolist() == [0, 0, 0], "bfloat16: new device buffers are zeros")

    # Zero-copy: the optimizer updates the user's own device arrays.
    data, grad = cuda.to_device(np.ones(10, np.float32)), cuda.to_device(np.full(10, 0.5, np.float32))
    params = fastopt.FlatParams.wrap(data, grad, {"w": (2, 5)})
    fastopt.SGD(params, lr=0.1).step()
    expect(np.allclose(data.copy_to_host(), 0.95), "wrap: the user's device array is updated in place")
    params["w"] = np.full((2, 5), 3.0)
    params.zero_grad()
    expect(np.all(data.copy_to_host() == 3.0) and np.all(grad.copy_to_host() == 0.0),
           "views and zero_grad work on the device")
    expect(params["w"].shape == (2, 5) and params.to("cpu").device == "cpu", "views keep their shapes; to('cpu')")

    # Errors, before anything changes.
    expect(raises(TypeError, "same device", lambda: fastopt.FlatParams.wrap(data, np.zeros(10, np.float32), {"w": 10})),
           "host grad with device data is refused")
    expect(raises(ValueError, "params.to('cuda')", lambda: fastopt.Adam(fastopt.FlatParams({"w": 3}), device="cuda")),
           "a CUDA optimizer over host params is refused, saying how to move them")
    expect(raises(ValueError, "params live on 'cuda'", lambda: fastopt.Adam(params, device="cpu")),
           "a CPU optimizer over device params is refused")

    # Dropout on device arrays: the CPU's mask, bit for bit.
    for size, offset, p in ((1, 0, 0.5), (37, 3, 0.1), (1000, 5, 0.9)):
        for dtype in (np.float32, np.float64):
            x = np.random.default_rng(size).standard_normal(size).astype(dtype)
            on_gpu = cuda.to_device(x)
            fastopt.dropout(x, p, seed=99, stream=2, step=7, offset=offset)
            fastopt.dropout(on_gpu, p, seed=99, stream=2, step=7, offset=offset)
            expect(same(x, on_gpu), f"dropout size {size} offset {offset} p {p} {dtype.__name__}: bitwise equal")
        mask = fastopt.dropout_mask(size, p, seed=99, stream=2, step=7, offset=offset)
        expect(same(mask, fastopt.dropout_mask(size, p, seed=99, stream=2, step=7, offset=offset, device="cuda")),
               f"dropout_mask size {size}: bitwise equal")
    return {"failures": failures, "checked": len(checked)}


def main(argv):
    simulator = "--simulator" in argv
    if simulator:
        patch_simulator()
    report = check(simulator)
    print(json.dumps(report))
    return 1 if report["failures"] else 0


if __name__ == "__main__":  # not on import (pytest --doctest-modules imports every module)
    sys.exit(main(sys.argv[1:]))
