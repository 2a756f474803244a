"""Measure the hot-path bars in one run, fastopt and torch taking turns.

    python bench/hot_path.py [--json results.json]

Over 1e3 float32 parameters with AdamW: a scheduler step (one-cycle with cycled momentum)
against torch's ``OneCycleLR.step()``; ``opt.lr = value`` against one AdamW step of the same
run; and a scheduled step (``step()`` then the scheduler's) against torch's fused AdamW with
``OneCycleLR``. Each figure is the median over rounds of the median of many calls in a row.
"""

import argparse
import json
import platform

import numpy as np

from fastopt.bench import hot_path
from fastopt.bench.cpu import median_seconds

ROUNDS = 7


def measure():
    """``{(kind, implementation): seconds}``, the cases taking turns round by round."""
    cases = {(kind, name): hot_path.Case(kind, name) for kind in hot_path.KINDS for name in ("fastopt", "torch")}
    times = {key: [] for key in cases}
    for _ in range(ROUNDS):
        for key, case in cases.items():
            times[key].append(median_seconds(case.step, 31, warmup=200, inner=200))
    return {key: float(np.median(samples)) for key, samples in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args(argv)
    import torch

    print(f"# {platform.machine()}, torch {torch.__version__}, AdamW over {hot_path.SIZE} float32")
    t = measure()
    us = {f"{kind} {name}": seconds * 1e6 for (kind, name), seconds in t.items()}
    for key, value in us.items():
        print(f"{key:<28} {value:8.3f} us")
    bars = [
        ("Scheduler.step() (one-cycle, momentum cycled)", "<= torch OneCycleLR.step()",
         us["scheduler_step fastopt"], us["scheduler_step torch"],
         us["scheduler_step fastopt"] <= us["scheduler_step torch"]),
        ("opt.lr = value", "<= 0.3 x one AdamW step (1e3)",
         us["set_lr fastopt"], us["optimizer_step fastopt"],
         us["set_lr fastopt"] <= 0.3 * us["optimizer_step fastopt"]),
        ("AdamW step + scheduler step", ">= 3x torch fused AdamW + OneCycleLR",
         us["scheduled_step fastopt"], us["scheduled_step torch"],
         us["scheduled_step torch"] >= 3 * us["scheduled_step fastopt"]),
    ]
    print()
    for case, bar, ours, peer, passed in bars:
        print(f"{case:<48} {ours:7.3f} us  against {peer:8.3f} us  ratio {peer / ours:6.2f}  {bar}: "
              f"{'PASS' if passed else 'FAIL'}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"us": us, "bars": [dict(zip(("case", "bar", "fastopt_us", "peer_us", "passed"), b))
                                          for b in bars]}, handle, indent=1)


if __name__ == "__main__":
    main()
