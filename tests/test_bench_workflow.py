"""The performance-tracking workflow, and `fastopt bench`, as a user runs them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastopt import cli
from fastopt.bench import cpu as _bench

SLOWABLE = Path(__file__).parent / "benchmark_workflow" / "slowable_bench.py"


def _pytest(storage, *arguments, slowdown=1):
    command = [sys.executable, "-m", "pytest", str(SLOWABLE), "-q", "-p", "no:cacheprovider",
               "--benchmark-only", f"--benchmark-storage={storage}", *arguments]
    environment = {**os.environ, "FASTOPT_BENCH_SLOWDOWN": str(slowdown)}
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)


def test_compare_catches_a_deliberately_slowed_kernel(tmp_path):
    """A kernel slowed 10-fold fails the comparison, an unchanged one passes. Each call has a
    2 ms sleep as its floor (see slowable_bench.py) and the bar is 200 % on the median: the runs
    share a 2-core machine with whatever else runs, and a CPU-bound step alone swung 80-fold."""
    storage = tmp_path / "benchmarks"
    saved = _pytest(storage, "--benchmark-save=baseline")
    assert saved.returncode == 0, saved.stdout[-3000:] + saved.stderr[-3000:]
    assert list(storage.rglob("0001_baseline.json"))

    slowed = _pytest(storage, "--benchmark-compare=0001", "--benchmark-compare-fail=median:200%", slowdown=10)
    assert slowed.returncode != 0
    assert "Performance has regressed" in slowed.stdout + slowed.stderr

    same = _pytest(storage, "--benchmark-compare=0001", "--benchmark-compare-fail=median:200%")
    assert same.returncode == 0, same.stdout[-3000:] + same.stderr[-3000:]


def test_bench_command_prints_a_table_and_writes_json_and_png(tmp_path, capsys):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    assert cli.main(["bench", "--sizes", "1e4,3e4", "--kernels", "adam,dropout",
                     "--json", str(out_json), "--plot", str(out_png)]) == 0
    printed = capsys.readouterr().out
    assert "% roof" in printed and "vs numpy" in printed
    rows = json.loads(out_json.read_text())["rows"]
    assert {(r["kernel"], r["size"]) for r in rows} == {(k, s) for k in ("adam", "dropout") for s in (10_000, 30_000)}
    for row in rows:
        assert row["ms"] > 0 and row["gbps"] > 0 and row["pct_roofline"] > 0
        if row["implementation"] == "fastopt":
            assert row["speedup"]["numpy"] > 0
    assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_bench_command_times_the_added_rules_on_request(capsys):
    assert cli.main(["bench", "--sizes", "1e4", "--kernels", "nadam,lion"]) == 0
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines() if line.startswith(("nadam", "lion"))]
    assert sorted((row[0], row[3]) for row in rows) == [
        ("lion", "fastopt"), ("lion", "numpy"), ("nadam", "fastopt"), ("nadam", "numpy"), ("nadam", "torch")]


def test_bench_command_times_fewer_bytes_of_state_and_parameters(capsys):
    kernels = ("adamw_int8", "adamw_bf16", "adamw_bf16_params")
    assert cli.main(["bench", "--sizes", "1e4", "--kernels", ",".join(kernels)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(kernels)]
    assert sorted((row[0], row[3]) for row in rows) == sorted((k, i) for k in kernels for i in ("fastopt", "torch"))
    assert all(float(row[4]) > 0 for row in rows)
    assert cli.main(["bench", "--sizes", "1e4", "--kernels", "lamb_int8,lamb_bf16"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("lamb_")]
    assert sorted((row[0], row[3]) for row in rows) == [("lamb_bf16", "fastopt"), ("lamb_bf16", "numpy"),
                                                        ("lamb_int8", "fastopt"), ("lamb_int8", "numpy")]
    assert all(float(row[4]) > 0 for row in rows)


@pytest.mark.parametrize("arguments, message", [(["--sizes", "abc"], "--sizes"), (["--sizes", "0"], "--sizes"),
                                                (["--kernels", "nosuch"], "unknown ['nosuch']")])
def test_bench_command_refuses_bad_arguments(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", *arguments])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_format_table_lists_every_row():
    rows = [{"kernel": "adam", "size": 10, "device": "cpu", "implementation": name, "ms": 1.0, "gbps": 2.0,
             "pct_roofline": 50.0, **({"speedup": {"numpy": 3.0}} if name == "fastopt" else {})}
            for name in ("fastopt", "numpy")]
    table = _bench.format_table(rows).splitlines()
    assert len(table) == 4 and "x3.00" in table[2]
