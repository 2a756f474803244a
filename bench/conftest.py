"""Shared fixture of the benchmark suite: the roofline measured in the same run."""

import pytest

from fastopt.bench import cpu as cases

_roofline = {}


@pytest.fixture(scope="session")
def roofline_gbps():
    """``roofline_gbps(n)``: in-place ``x *= s`` bandwidth over ``n`` float32, every thread,
    measured once per size in this run (bytes read + written)."""

    def measure(n):
        if n not in _roofline:
            step = cases.RooflineStep(n)
            seconds = cases.median_seconds(step.step, 50 if n < 10**8 else 10, inner=cases.calls_per_sample(n))
            _roofline[n] = 8 * n / seconds / 1e9
        return _roofline[n]

    return measure
