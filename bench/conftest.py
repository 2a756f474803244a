"""Shared fixtures of the benchmark suite: sizes, and the roofline measured in the same run."""

import os

import pytest

import cases

#: Sizes to run: 1e6 and 1e7 by default; FASTOPT_BENCH_MAX_SIZE=1e8 adds 1e8 (about 5 GB).
MAX_SIZE = int(float(os.environ.get("FASTOPT_BENCH_MAX_SIZE", "1e7")))
SIZES = [n for n in (10**6, 10**7, 10**8) if n <= MAX_SIZE]

_roofline = {}


@pytest.fixture(scope="session")
def roofline_gbps():
    """``roofline_gbps(n)``: in-place ``x *= s`` bandwidth over ``n`` float32, every thread,
    measured once per size in this run (bytes read + written)."""

    def measure(n):
        if n not in _roofline:
            step = cases.RooflineStep(n)
            _roofline[n] = 8 * n / cases.median_seconds(step.step, 50 if n < 10**8 else 10) / 1e9
        return _roofline[n]

    return measure


def record(benchmark, bytes_per_step, roofline):
    """Attach bytes moved, GB/s and the percentage of the same run's roofline to a result."""
    seconds = benchmark.stats.stats.median
    gbps = bytes_per_step / seconds / 1e9
    benchmark.extra_info.update(
        bytes=bytes_per_step, gbps=round(gbps, 2), roofline_gbps=round(roofline, 2),
        pct_roofline=round(100 * gbps / roofline, 1),
    )
