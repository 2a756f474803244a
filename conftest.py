"""Collection rules for the whole tree (pytest runs the doctests of fastopt/ too)."""

import importlib.util
import os

import pytest

# fastopt.torch needs PyTorch, an optional dependency (the `torch` extra): its doctests are
# collected only where torch is installed. Decided here, before collection, from what is
# installed; tests/test_torch_dropin.py skips the same way (importorskip).
collect_ignore_glob = [] if importlib.util.find_spec("torch") else ["fastopt/torch/*"]

#: Set by .ci/run: CI installs everything the tests use (torch, mpi4py and MPICH, NVVM and
#: ptxas), so there a skip can only mean something went missing, and it fails instead.
REQUIRE_ALL = bool(os.environ.get("FASTOPT_REQUIRE_ALL"))


def _fail_a_skip(report):
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped ({reason}), but FASTOPT_REQUIRE_ALL is set: CI runs every test"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_a_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_a_skip(outcome.get_result())
