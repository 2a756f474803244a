"""Measure the core issue's speed bars in one run, against the peers measured in that run.

    python bench/bars.py [--json results.json] [--quick]

Prints one table: case, fastopt time, peer time, ratio, and percentage of the in-place
roofline (``x *= s`` over the same size, every thread) measured in the same process.
Needs torch installed (the ``torch`` extra) for the peer columns.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from fastopt.bench import cpu as cases  # noqa: E402


def roofline_gbps(n, repeats):
    step = cases.RooflineStep(n)
    return 8 * n / cases.median_seconds(step.step, repeats) / 1e9


def compare(rule, n, repeats, *, tensors=1, torch_modes=("fused",), rounds=5):
    """fastopt (one flat buffer) against torch (``tensors`` tensors) for ``rule`` at ``n``.

    The contenders take turns, ``rounds`` times, so that drift on a noisy machine (the
    other core busy, frequency changes) falls on all of them alike; each gets the median of
    its rounds' medians.
    """
    steps = {"fastopt": cases.FastoptStep(rule, n).step}
    for mode in torch_modes:
        steps[mode] = cases.TorchStep(rule, n, tensors=tensors, mode=mode).step
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(cases.median_seconds(step, max(1, repeats // rounds), warmup=1))
    medians = {name: float(np.median(t)) for name, t in times.items()}
    ours = medians.pop("fastopt")
    best_mode = min(medians, key=medians.get)
    return ours, best_mode, medians[best_mode]


def fastopt_step():
    import fastopt

    params = fastopt.FlatParams({"w": 1000})
    fastopt.Adam(params).step()


def fresh_process_seconds(code, repeats=5):
    """Median wall time of ``python -c code`` in a fresh interpreter."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here as JSON")
    parser.add_argument("--quick", action="store_true", help="skip the 1e8 case (needs ~5 GB)")
    args = parser.parse_args(argv)
    import torch

    rows = []

    def row(case, bar, ours, peer_name, peer, bytes_per_step=None, roof=None, passed=None):
        entry = {"case": case, "bar": bar, "fastopt_ms": ours * 1e3, "peer": peer_name,
                 "peer_ms": peer * 1e3 if peer is not None else None,
                 "speedup": peer / ours if peer is not None else None}
        if bytes_per_step is not None:
            entry["gbps"] = bytes_per_step / ours / 1e9
            entry["roofline_gbps"] = roof
            entry["pct_roofline"] = 100 * entry["gbps"] / roof
        entry["passed"] = passed
        rows.append(entry)
        peer_text = "" if peer is None else f"{peer * 1e3:9.3f} ms  x{peer / ours:5.2f}"
        roof_text = "" if bytes_per_step is None else f"{entry['pct_roofline']:5.1f}% roof"
        print(f"{case:<44} {ours * 1e3:9.3f} ms  {peer_name:<14} {peer_text:<22} {roof_text:<12} "
              f"{bar}: {'PASS' if passed else 'FAIL'}", flush=True)

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"numba threads {__import__('numba').get_num_threads()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), numpy {np.__version__}")

    n6, n7, n8 = 10**6, 10**7, 10**8
    roof6 = roofline_gbps(n6, 200)
    ours, mode, peer = compare("adam", n6, 300)
    row("Adam 1e6 float32", ">= 1.25x torch fused", ours, f"torch {mode}", peer,
        28 * n6, roof6, peer / ours >= 1.25)

    if not args.quick:
        roof8 = roofline_gbps(n8, 10)
        ours, mode, peer = compare("adam", n8, 10)
        pct = 100 * 28 * n8 / ours / 1e9 / roof8
        row("Adam 1e8 float32", ">= 92% roof, >= torch fused", ours, f"torch {mode}", peer,
            28 * n8, roof8, pct >= 92 and ours <= peer)

    roof_many = roofline_gbps(2000 * 5000, 30)
    ours, mode, peer = compare("adam", 2000 * 5000, 30, tensors=2000)
    row("Adam 2,000 x 5,000 (flat vs 2,000 tensors)", ">= 3.5x torch fused", ours, f"torch {mode}",
        peer, 28 * 2000 * 5000, roof_many, peer / ours >= 3.5)

    roof7 = roofline_gbps(n7, 30)
    ours, mode, peer = compare("rmsprop", n7, 30, torch_modes=("foreach", "for-loop"))
    row("RMSProp 1e7 float32", ">= 4x torch best", ours, f"torch {mode}", peer,
        20 * n7, roof7, peer / ours >= 4)
    ours, mode, peer = compare("sgd_nesterov", n7, 30)
    row("SGD Nesterov 1e7 float32", ">= 1.2x torch fused", ours, f"torch {mode}", peer,
        20 * n7, roof7, peer / ours >= 1.2)

    steps = {name: cases.DropoutStep(name, n7).step for name in ("fastopt", "torch")}
    times = {name: [] for name in steps}
    for _ in range(5):
        for name, step in steps.items():
            times[name].append(cases.median_seconds(step, 6, warmup=1))
    ours, theirs = (float(np.median(times[name])) for name in ("fastopt", "torch"))
    row("Dropout p=0.1, 1e7 float32, in place", ">= 6x torch F.dropout", ours, "torch inplace",
        theirs, 8 * n7, roof7, theirs / ours >= 6)
    del steps

    baseline = fresh_process_seconds("pass")
    imported = fresh_process_seconds("import fastopt") - baseline
    row("import fastopt (fresh process)", "<= 0.35 s", imported, "-", None, passed=imported <= 0.35)
    first_step = ("import time, fastopt; p = fastopt.FlatParams({'w': 1000}); o = fastopt.Adam(p); "
                  "t = time.perf_counter(); o.step(); print(time.perf_counter() - t)")
    fastopt_step()  # make sure the kernel cache is warm
    step_only = float(np.median([
        float(subprocess.run([sys.executable, "-c", first_step], check=True, capture_output=True,
                             text=True).stdout) for _ in range(7)]))
    row("first step() in a fresh process (cache warm)", "<= 0.6 s", step_only, "-", None,
        passed=step_only <= 0.6)
    whole = fresh_process_seconds(first_step.replace("print(", "(")) - baseline
    print(f"# a whole fresh process, import + build + first step, less the bare interpreter: "
          f"{whole:.3f} s")

    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": platform.processor(), "rows": rows}, out, indent=2)


if __name__ == "__main__":
    main()
