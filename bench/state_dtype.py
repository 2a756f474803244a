"""AdamW with its state in fewer bytes, against torch's fused AdamW, in one run.

    python bench/state_dtype.py [--size 1e8] [--rounds 3] [--params bfloat16] [--json results.json]

fastopt's AdamW with float32, int8 (block-wise dynamic quantization) and bfloat16
(stochastically rounded) state over one float32 buffer, against torch.optim.AdamW(fused=True)
(float32 state), and, where installed, bitsandbytes' and torchao's 8-bit AdamW on the CPU.
The contenders take turns, ``--rounds`` times (median of each one's round medians), so drift
on a noisy machine falls on all alike; the in-place roofline (``x *= s``) is measured in the
same run. Bars: int8 >= 1.4x torch fused, bfloat16 >= 1.2x.

``--params bfloat16``: AdamW over bfloat16 parameters instead: fastopt with bfloat16 state (the
default over bfloat16 parameters) and with float32 state, against torch's fused AdamW over
bfloat16 parameters (rounded to nearest) and torchao's AdamW with ``bf16_stochastic_round``
where installed, with the float32 contenders for scale. The ratios are then against torch
fused over bfloat16 parameters.
"""

import argparse
import json

import numpy as np

from bars import roofline_gbps
from fastopt.bench import cpu as cases

BARS = {"fastopt int8": 1.4, "fastopt bfloat16": 1.2}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=1e8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--params", choices=("float32", "bfloat16"), default="float32",
                        help="the contenders over float32 parameters (default) or over bfloat16 ones")
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args(argv)
    n = int(args.size)
    import torch

    bfloat16 = args.params == "bfloat16"
    print(f"# AdamW over {n:.0e} {args.params} parameters; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    roof = roofline_gbps(n, 10)
    steps = {}
    for name in (cases.StateDtypeStep.BFLOAT16_IMPLEMENTATIONS if bfloat16 else cases.StateDtypeStep.IMPLEMENTATIONS):
        if cases.StateDtypeStep.available(name):
            steps[name] = cases.StateDtypeStep(name, n)
            steps[name].step()  # compiles (torchao: tens of seconds) before any timing
        else:
            print(f"# {name}: not installed, left out")
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, case in steps.items():
            slow = name in ("bitsandbytes 8-bit", "torchao 8-bit", "torchao bf16 params")
            times[name].append(cases.median_seconds(case.step, 1 if slow else 3, warmup=1))
    peer_name = "torch fused bf16 params" if bfloat16 else "torch fused"
    peer = float(np.median(times[peer_name]))
    rows = []
    for name in steps:
        seconds = float(np.median(times[name]))
        moved = cases.StateDtypeStep.BYTES.get(name)
        pct = None if moved is None else 100 * moved * n / seconds / 1e9 / roof
        bar = None if bfloat16 else BARS.get(name)
        rows.append({"implementation": name, "ms": seconds * 1e3, "vs_torch_fused": peer / seconds,
                     "state_bytes_per_param": cases.StateDtypeStep.STATE_BYTES[name], "pct_roofline": pct,
                     "bar": bar, "passed": None if bar is None else peer / seconds >= bar})
        verdict = "" if bar is None else f"  >= {bar}x: {'PASS' if peer / seconds >= bar else 'FAIL'}"
        share = "" if pct is None else f"  {pct:5.1f}% roof"
        print(f"{name:<30} {seconds * 1e3:9.1f} ms  x{peer / seconds:5.2f} vs {peer_name}  "
              f"{cases.StateDtypeStep.STATE_BYTES[name]:5.2f} B/param of state{share}{verdict}", flush=True)
    print(f"# roofline (x *= s, in place): {roof:.1f} GB/s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"size": n, "params": args.params, "peer": peer_name, "roofline_gbps": roof, "rows": rows}, out,
                      indent=1)


if __name__ == "__main__":
    main()
