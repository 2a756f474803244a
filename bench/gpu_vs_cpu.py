"""fastopt on the GPU against the CPU and against torch.optim on the same card, in one run.

    python bench/gpu_vs_cpu.py [--sizes 1e6,1e7,1e8] [--adam-size 1e9] [--json gpu.json]

1. Parity: every optimizer family and dropout on fresh random data (1,000,003 float32, five
   steps), CPU kernels against CUDA kernels: the number of differing elements (0 expected).
2. The table of ``fastopt bench`` for both devices: each kernel at each size, fastopt on the
   GPU (CUDA events, median after warm-up) against torch.optim fused (foreach for RMSprop) on
   the same card, with GB/s and % of a device-to-device copy measured at the same size, and
   AdamW with int8 or bfloat16 state, or over bfloat16 parameters, against torch's fused AdamW
   over float32 or bfloat16 parameters; then fastopt and torch on the CPU, against the in-place
   roofline.
3. The CUDA issue's bars: Adam over ``--adam-size`` float32 (28 bytes per parameter) as a
   percentage of the copy bandwidth and against torch fused Adam; host time per step for a
   1e5-parameter model.

Exits with status 2, saying why, where no usable GPU is found.
"""

import argparse
import json
import platform
import sys

from fastopt.bench import cpu as _bench
from fastopt.bench import gpu as _gpu_bench


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e6,1e7,1e8")
    parser.add_argument("--cpu-sizes", default="1e6,1e7")
    parser.add_argument("--adam-size", default="1e9")
    parser.add_argument("--parity-size", default="1000003")
    parser.add_argument("--host-size", default="1e5")
    parser.add_argument("--host-steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",") if s]
    cpu_sizes = [int(float(s)) for s in args.cpu_sizes.split(",") if s]
    available, device = _gpu_bench.gpu_available()
    if not available:
        print(f"no GPU run: {device}", file=sys.stderr)
        return 2
    print(f"# GPU: {device}; CPU: {platform.machine()}")
    parity = _gpu_bench.parity(int(float(args.parity_size)))
    print("parity (CPU vs CUDA, elements that differ):",
          ", ".join(f"{k} {v['differing']}" for k, v in parity.items()))
    rows = _gpu_bench.gpu_report(sizes, (*_gpu_bench.DEFAULT_GPU_KERNELS, *_bench.STATE_DTYPE_KERNELS),
                                 repeats=args.repeats)
    rows += _bench.report(cpu_sizes, ["adam", "sgd_nesterov", "rmsprop", "dropout"]) if cpu_sizes else []
    print(_bench.format_table(rows))
    bars = _gpu_bench.bars(int(float(args.adam_size)), int(float(args.host_size)),
                           repeats=max(5, args.repeats // 5), host_steps=args.host_steps)
    print(f"Adam {bars['n_adam']:.0e}: {bars['fastopt_ms']:.3f} ms, {bars['fastopt_gbps']:.0f} GB/s, "
          f"{bars['pct_copy']:.1f}% of the copy's {bars['copy_gbps']:.0f} GB/s (bar 90%)"
          + (f"; torch fused {bars['torch_fused_ms']:.3f} ms, torch / fastopt {bars['torch_over_fastopt']:.3f}"
             if "torch_fused_ms" in bars else ""))
    print(f"host time per step, {float(args.host_size):.0e} parameters: {bars['host_us_per_step']:.1f} us (bar 30 us)"
          + (f"; torch fused {bars['torch_host_us_per_step']:.1f} us" if "torch_host_us_per_step" in bars else "")
          + f" (fastopt's preparation {bars['host_us_breakdown']['prepare']:.1f} us, numba-cuda's launch "
          f"{bars['host_us_breakdown']['launch']:.1f} us specialised, "
          f"{bars['host_us_breakdown']['launch_generic']:.1f} us through the generic dispatcher)")
    if args.json:
        with open(args.json, "w") as stream:
            json.dump({"gpu": device, "parity": parity, "rows": rows, "bars": bars}, stream, indent=2)
        print(f"wrote {args.json}")
    bitwise = all(v["differing"] == 0 for v in parity.values())
    return 0 if bitwise else 1


if __name__ == "__main__":
    sys.exit(main())
