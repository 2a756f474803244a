"""A tiny benchmark for the test of the tracking workflow (not collected on its own).

FASTOPT_BENCH_SLOWDOWN=k runs the Adam step k times per timed call: the deliberately slowed
kernel that ``pytest --benchmark-compare --benchmark-compare-fail`` must catch.
"""

import os

from fastopt.bench import cpu as _bench


def test_adam_step(benchmark):
    step = _bench.FastoptStep("adam", 200_000).step
    repeat = int(os.environ.get("FASTOPT_BENCH_SLOWDOWN", "1"))

    def timed():
        for _ in range(repeat):
            step()

    benchmark.pedantic(timed, rounds=40, warmup_rounds=3)
