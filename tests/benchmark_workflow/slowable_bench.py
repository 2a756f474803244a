"""A tiny benchmark for the test of the tracking workflow (not collected on its own).

Each timed call is a small Adam step (1e3 elements, a few microseconds) and a 2 ms sleep;
FASTOPT_BENCH_SLOWDOWN=k makes it k of each: the deliberately slowed kernel that
``pytest --benchmark-compare --benchmark-compare-fail`` must catch. The sleep sets the time,
which a busy machine hardly moves (a CPU-bound step of 0.1 ms swung to 8 ms under another
process's load, which no margin survives).
"""

import os
import time

from fastopt.bench import cpu as _bench


def test_adam_step(benchmark):
    step = _bench.FastoptStep("adam", 1_000).step
    repeat = int(os.environ.get("FASTOPT_BENCH_SLOWDOWN", "1"))

    def timed():
        for _ in range(repeat):
            step()
            time.sleep(0.002)

    benchmark.pedantic(timed, rounds=20, warmup_rounds=2)
