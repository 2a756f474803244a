"""The trainer's GPU path against the CPU: an MLP on ``device="cuda"`` trained by the same
Trainer, checkpoints across devices, and ``fastopt train --device cuda``.

``python cuda_trainer_check.py --simulator`` runs under NUMBA_ENABLE_CUDASIM=1 (as
tests/test_cuda_simulator.py does). The simulator's device arrays are host memory, so NumPy
stands in for CuPy there (:class:`SimulatedCupy`): what runs is the model's and trainer's GPU
code path (parameters in device buffers, the backend's views of them, data gathered on the
"device", dropout and the optimizer step as CUDA kernels), and it must agree with the CPU run
bit for bit. Only CuPy's own arithmetic is not exercised.

Without ``--simulator`` it runs on a real GPU with CuPy (bench/gpu_check.sh does): CuPy's
matrix products are not the CPU BLAS's, so float64 runs must agree to 1e-8 and float32
ones to 5e-3 (Adam's first steps are about lr times the gradient's sign); ``fastopt train --device cuda`` on digits must reach 97%.

It prints one JSON object: failures (empty when all is well), what was checked, and timings.
"""

import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def use_numpy_as_cupy():
    """Give device="cuda" models a NumPy backend over the simulator's device arrays."""
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    from fastopt.nn import arrays as _backend

    class SimulatedCupy(_backend.NumpyBackend):
        device = "cuda"

        @staticmethod
        def asarray(array, dtype=None):  # a simulator device array wraps a host array: share it
            return np.asarray(getattr(array, "_ary", array), dtype=dtype)

        @staticmethod
        def to_host(array):
            return np.array(array)

        @staticmethod
        def kernel_view(array):
            return FakeCUDAArray(array)

    _backend._BACKENDS["cuda"] = SimulatedCupy()


def data(rows, features, classes, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features))
    y = (x[:, :classes] + 0.3 * rng.standard_normal((rows, classes))).argmax(axis=1)
    return x, y


def check(simulator):
    import fastopt
    from fastopt import cli, losses

    failures, checked, timings = [], [], {}

    def expect(condition, what):
        checked.append(what)
        if not condition:
            failures.append(what)

    def host(array):
        return array if isinstance(array, np.ndarray) else array.copy_to_host()

    def agree(a, b, dtype):
        a, b = host(a), host(b)
        if simulator:
            return np.array_equal(a, b)
        tolerance = 1e-8 if dtype == np.float64 else 5e-3
        return np.allclose(a, b, rtol=tolerance, atol=tolerance)

    def history_agrees(a, b, dtype):
        def close(key, u, v):
            if simulator:
                # the cost adds the L2 penalty, whose CUDA reduction sums in another order:
                # equal to 1e-12, not bitwise (see fastopt.kernels.cuda.Penalty)
                return (u == v or (np.isnan(u) and np.isnan(v))  # r2 of targets without spread: NaN
                        or (key.endswith("cost") and np.isclose(u, v, rtol=1e-12, atol=0)))
            tolerance = 1e-8 if dtype == np.float64 else 5e-3
            return np.isclose(u, v, rtol=tolerance, atol=tolerance, equal_nan=True)

        return len(a) == len(b) and all(r.keys() == s.keys() and all(close(k, r[k], s[k]) for k in r)
                                        for r, s in zip(a, b))

    sizes, rows, batch, epochs = ((5, 7, 6, 3), 24, 7, 2) if simulator else ((20, 64, 48, 4), 600, 50, 3)
    x, y = data(rows, sizes[0], sizes[-1])

    def trainer(device, dtype, activation="relu", loss=losses.softmax_cross_entropy, folder=None, out=None):
        outputs = sizes[-1] if loss is losses.softmax_cross_entropy else 1
        model = fastopt.MLP((*sizes[:-1], outputs), activation=activation, dropout=0.25, seed=3, dtype=dtype,
                            device=device)
        biases = [name for name in model.params if name.endswith(".bias")]
        optimizer = fastopt.AdamW(model.params, lr=1e-2, weight_decay=1e-2,
                                  groups=[fastopt.ParamGroup(biases, weight_decay=0.0)])
        scheduler = fastopt.Scheduler(optimizer, fastopt.schedules.one_cycle(1e-2, total_steps=200))
        callbacks = [fastopt.Checkpoint(folder)] if folder else []
        return fastopt.Trainer(model, optimizer, loss, scheduler=scheduler, per_batch=True, seed=5,
                               callbacks=callbacks, progress=False, log=out)

    def targets(loss):  # class labels, or one column of 0/1 for the single-output losses
        return y if loss is losses.softmax_cross_entropy else (y == 0).astype(np.float64).reshape(-1, 1)

    cases = [(activation, np.float32, losses.softmax_cross_entropy) for activation in ("relu", "tanh", "sigmoid", "gelu")]
    cases += [(activation, np.float64, losses.softmax_cross_entropy) for activation in ("relu", "gelu")]
    cases += [("relu", np.float64, losses.Huber(0.5)), ("tanh", np.float32, losses.binary_cross_entropy_with_logits)]
    for activation, dtype, loss in cases:
        name = f"{activation}/{np.dtype(dtype).name}/{type(loss).__name__}"
        runs = {}
        for device in ("cpu", "cuda"):
            t = trainer(device, dtype, activation, loss)
            start = time.perf_counter()
            t.fit(x, targets(loss), epochs=epochs, batch_size=batch, validation_split=0.25)
            runs[device] = (t, time.perf_counter() - start)
        (cpu, _), (gpu, _) = runs["cpu"], runs["cuda"]
        expect(gpu.model.params.device == "cuda" and gpu.optimizer.device == "cuda", f"{name}: on the device")
        expect(agree(cpu.model.params.data, gpu.model.params.data, dtype), f"{name}: parameters")
        cpu_state, gpu_state = cpu.optimizer.state_dict()["state"], gpu.optimizer.state_dict()["state"]
        expect(all(agree(cpu_state[k], gpu_state[k], dtype) for k in cpu_state), f"{name}: optimizer state")
        expect(history_agrees(cpu.history, gpu.history, dtype), f"{name}: history")
        prediction = gpu.predict(x[:9])
        expect(isinstance(prediction, np.ndarray) and agree(cpu.predict(x[:9]), prediction, dtype),
               f"{name}: predict returns the CPU's outputs, on the host")
        expect(history_agrees([cpu.evaluate(x, targets(loss))], [gpu.evaluate(x, targets(loss))], dtype),
               f"{name}: evaluate")
        timings[name] = {device: round(seconds, 3) for device, (_, seconds) in runs.items()}

    # On the GPU an epoch's loss and correct count stay on the device: read once per epoch (with
    # no progress bar), not per batch; a diverged loss is caught at the epoch's end.
    from fastopt.train import trainer as trainer_module

    reads = []
    original_read = trainer_module._DeviceSums.read
    trainer_module._DeviceSums.read = lambda self: reads.append(1) or original_read(self)
    try:
        counted = trainer("cuda", np.float32)
        counted.fit(x, y, epochs=2, batch_size=batch)
    finally:
        trainer_module._DeviceSums.read = original_read
    batches = -(-rows // batch)
    expect(len(reads) == 2 and batches > 2, f"the GPU epoch sums are read once per epoch ({len(reads)} reads, "
                                            f"{batches} batches per epoch)")
    diverging = trainer("cuda", np.float32)
    diverging.optimizer.lr = 1e30
    diverging.scheduler = None
    diverging.fit(x, y, epochs=3, batch_size=batch)
    expect(diverging.stop_reason is not None and "at epoch 1, its end" in diverging.stop_reason
           and not diverging.history, f"a diverged loss stops the GPU run at its epoch's end ({diverging.stop_reason})")

    # Checkpoints move between devices: a GPU run saved after one epoch resumes on the CPU and
    # on the GPU and ends where the uninterrupted GPU run does.
    for dtype in (np.float64, np.float32):
        name = np.dtype(dtype).name
        whole = trainer("cuda", dtype)
        whole.fit(x, y, epochs=2, batch_size=batch)
        with tempfile.TemporaryDirectory() as folder:
            first = trainer("cuda", dtype, folder=folder)
            first.fit(x, y, epochs=1, batch_size=batch)
            for device in ("cuda", "cpu"):
                resumed = trainer(device, dtype)
                resumed.load(Path(folder) / "checkpoint.npz")
                resumed.fit(x, y, epochs=2, batch_size=batch)
                expect(agree(whole.model.params.data, resumed.model.params.data, dtype)
                       and history_agrees(whole.history, resumed.history, dtype),
                       f"{name}: a GPU checkpoint resumed on {device} ends as the uninterrupted run")
            # a checkpoint of another model changes nothing on the GPU
            other = fastopt.MLP((sizes[0], 4, sizes[-1]), seed=3, dtype=dtype, device="cuda")
            refused = fastopt.Trainer(other, fastopt.Adam(other.params), losses.softmax_cross_entropy)
            before = host(other.params.data).copy()
            try:
                refused.load(Path(folder) / "checkpoint.npz")
                expect(False, f"{name}: a checkpoint of another model is refused")
            except ValueError as error:
                expect("different model" in str(error) and np.array_equal(before, host(other.params.data)),
                       f"{name}: a checkpoint of another model is refused, nothing changed")

    # The command line: the same run on both devices prints the same results.
    with tempfile.TemporaryDirectory() as folder:
        if simulator:
            csv = Path(folder) / "data.csv"
            small_x, small_y = data(60, 6, 3, seed=1)
            np.savetxt(csv, np.column_stack([small_x, small_y]), delimiter=",", comments="",
                       header=",".join([f"f{i}" for i in range(6)] + ["label"]), fmt="%.6g")
            arguments = ["train", "--data", str(csv), "--target", "label", "--hidden", "5", "--epochs", "2",
                         "--batch-size", "16", "--dropout", "0.2", "--no-progress"]
        else:
            arguments = ["train", "--no-progress"]
        printed = {}
        for device in ("cpu", "cuda"):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                start = time.perf_counter()
                code = cli.main([*arguments, "--device", device, "--checkpoint", str(Path(folder) / device)])
                timings[f"fastopt train {device}"] = round(time.perf_counter() - start, 2)
            printed[device] = out.getvalue()
            expect(code == 0 and "test accuracy" in printed[device], f"fastopt train --device {device} runs")
        expect("on the GPU" in printed["cuda"], "fastopt train says it runs on the GPU")
        cpu_lines = [line.split(" (")[0] for line in printed["cpu"].splitlines() if line.startswith("test accuracy")]
        gpu_lines = [line.split(" (")[0] for line in printed["cuda"].splitlines() if line.startswith("test accuracy")]
        accuracy = float(gpu_lines[-1].split()[2].rstrip(","))
        timings["fastopt train cuda accuracy"] = accuracy
        if simulator:
            expect(cpu_lines == gpu_lines, "fastopt train: the same test accuracy and loss on both devices")
        else:
            expect(accuracy >= 0.97, f"fastopt train --device cuda reaches 97% on digits (got {accuracy})")
    return {"failures": failures, "checked": len(checked), "timings": timings}


def main(argv):
    simulator = "--simulator" in argv
    if simulator:
        from cuda_facade_check import patch_simulator

        patch_simulator()
        use_numpy_as_cupy()
    report = check(simulator)
    print(json.dumps(report))
    return 1 if report["failures"] else 0


if __name__ == "__main__":  # not on import (pytest --doctest-modules imports every module)
    sys.exit(main(sys.argv[1:]))
