"""No result depends on the number of threads: tests/thread_check.py compares 1 thread with 4 in
a fresh interpreter started with NUMBA_NUM_THREADS=4, so the comparison is 1 against 4 even on
a one-core machine (where the default would make it 1 against 1)."""

import os
import subprocess
import sys
from pathlib import Path


def test_every_kernel_gives_the_same_bits_on_1_and_4_threads():
    script = Path(__file__).parent / "thread_check.py"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "NUMBA_NUM_THREADS": "4"})
    assert result.stdout.strip() == "same bits", result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0


pytest_plugins = ["pytester"]


def test_under_ci_a_skip_fails(pytester, monkeypatch):
    """.ci/run sets FASTOPT_REQUIRE_ALL: a test that skips (a tool gone missing) fails there,
    whether it skips while running or at collection."""
    pytester.makeconftest((Path(__file__).parent.parent / "conftest.py").read_text())
    pytester.makepyfile(test_one="import pytest\n\ndef test_skips():\n    pytest.skip('no ptxas')\n",
                        test_two="import pytest\n\npytest.importorskip('no_such_module')\n")
    monkeypatch.delenv("FASTOPT_REQUIRE_ALL", raising=False)
    assert pytester.runpytest_subprocess().ret == 0  # plain: skips are skips
    monkeypatch.setenv("FASTOPT_REQUIRE_ALL", "1")
    running = pytester.runpytest_subprocess("test_one.py")
    running.assert_outcomes(failed=1)
    running.stdout.fnmatch_lines(["*skipped*no ptxas*FASTOPT_REQUIRE_ALL is set*"])
    collecting = pytester.runpytest_subprocess("test_two.py")
    assert collecting.ret != 0
    collecting.stdout.fnmatch_lines(["*no_such_module*FASTOPT_REQUIRE_ALL is set*"])


def test_under_ci_an_expected_failure_is_not_a_skip(pytester, monkeypatch):
    pytester.makeconftest((Path(__file__).parent.parent / "conftest.py").read_text())
    pytester.makepyfile(test_three="import pytest\n\n@pytest.mark.xfail(strict=True)\ndef test_x():\n    assert False\n")
    monkeypatch.setenv("FASTOPT_REQUIRE_ALL", "1")
    pytester.runpytest_subprocess().assert_outcomes(xfailed=1)
