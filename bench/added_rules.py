"""Speed bars of the rules added on the one-source spec, against torch in the same run.

    python bench/added_rules.py [--json results.json]

Adagrad, Adamax, NAdam, RAdam, Lion, LAMB and Adafactor (over a 1000-row matrix) in one float32 buffer: at 1e6 elements against torch.optim's
best CPU implementation of the rule (fused where torch has one: Adagrad; else the faster of
foreach and the for-loop; Adafactor's default is the for-loop), bar >= 1.5x; at 1e7, the share of the in-place roofline
(``x *= s``, every thread, measured in the same process) at least Adam's share in this run.
torch has no Lion and no LAMB: their peer at 1e6 is the best-effort numpy step. The contenders take turns
(``compare`` in ``bench/bars.py``). Muon, whose time is its Newton-Schulz iteration on BLAS (a
roofline share says nothing there), is timed against torch.optim.Muon at 1e6 (bar >= 1.5x)
and 1e7 parameters (pairs of 500 x 1000 and 1000 x 500 matrices), with the iteration's GFLOP/s.
"""

import argparse
import json

import numpy as np

from bars import compare, roofline_gbps
from fastopt.bench import cpu as cases

RULES = ("adagrad", "adamax", "nadam", "radam", "lion", "lamb", "adafactor")


def numpy_compare(rule, n, repeats, rounds=5):
    steps = {"fastopt": cases.FastoptStep(rule, n).step, "numpy": cases.NumpyStep(rule, n).step}
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(cases.median_seconds(step, max(1, repeats // rounds), warmup=1))
    return float(np.median(times["fastopt"])), "numpy", float(np.median(times["numpy"]))


def muon_compare(n, rounds):
    """Median seconds of a Muon step: fastopt (float32 iteration), fastopt (bfloat16, as
    torch's) and torch.optim.Muon, taking turns; and the matrices' shapes."""
    steps = {name: cases.MuonStep(name, n) for name in cases.MuonStep.IMPLEMENTATIONS}
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, case in steps.items():
            times[name].append(cases.median_seconds(case.step, 3 if n <= 10**6 else 1, warmup=1))
    medians = [float(np.median(times[name])) for name in cases.MuonStep.IMPLEMENTATIONS]
    return (*medians, steps["fastopt"].shapes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args(argv)
    import torch

    print(f"# torch {torch.__version__} ({torch.get_num_threads()} threads)")
    n6, n7 = 10**6, 10**7
    rows = []

    def row(case, ours, peer_name, peer, pct, bar, passed):
        rows.append({"case": case, "fastopt_ms": ours * 1e3, "peer": peer_name, "peer_ms": peer * 1e3,
                     "speedup": peer / ours, "pct_roofline": pct, "bar": bar, "passed": passed})
        print(f"{case:<22} {ours * 1e3:8.3f} ms  {peer_name:<16} {peer * 1e3:8.3f} ms  x{peer / ours:5.2f}  "
              f"{pct:5.1f}% roof  {bar}: {'PASS' if passed else 'FAIL'}", flush=True)

    roof6, roof7 = roofline_gbps(n6, 200), roofline_gbps(n7, 30)
    ours, mode, peer = compare("adam", n7, 30)
    adam_pct = 100 * cases.BYTES_PER_ELEMENT["adam"] * n7 / ours / 1e9 / roof7
    row("adam 1e7 (reference)", ours, f"torch {mode}", peer, adam_pct, "-", True)
    for rule in RULES:
        size = cases.BYTES_PER_ELEMENT[rule]
        if rule in cases.TorchStep.TORCH:
            modes = ("fused",) if rule == "adagrad" else ("foreach", "for-loop")
            ours, mode, peer = compare(rule, n6, 300, torch_modes=modes)
            mode = f"torch {mode}"
        else:
            ours, mode, peer = numpy_compare(rule, n6, 300)
        row(f"{rule} 1e6", ours, mode, peer, 100 * size * n6 / ours / 1e9 / roof6, ">= 1.5x", peer / ours >= 1.5)
        if rule in cases.TorchStep.TORCH:
            ours, mode, peer = compare(rule, n7, 30, torch_modes=modes)
            mode = f"torch {mode}"
        else:
            ours, mode, peer = numpy_compare(rule, n7, 30)
        pct = 100 * size * n7 / ours / 1e9 / roof7
        row(f"{rule} 1e7", ours, mode, peer, pct, f">= Adam's {adam_pct:.0f}% roof", pct >= adam_pct)
    for n in (n6, n7):
        ours, ours_bf16, peer, shapes = muon_compare(n, rounds=5 if n == n6 else 3)
        gflops = cases.muon_flops(shapes) / 1e9
        for name, seconds in (("muon", ours), ("muon bf16", ours_bf16)):
            passed = peer / seconds >= 1.5 if n == n6 else True
            row(f"{name} {n:.0e}", seconds, "torch Muon", peer, float("nan"),
                f">= 1.5x ({gflops / seconds:.0f} GFLOP/s, torch {gflops / peer:.0f})" if n == n6
                else f"({gflops / seconds:.0f} GFLOP/s, torch {gflops / peer:.0f})", passed)
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(rows, stream, indent=1)


if __name__ == "__main__":
    main()
