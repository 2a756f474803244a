"""Collection rules for the whole tree (pytest runs the doctests of fastopt/ too)."""

import importlib.util

# fastopt.torch needs PyTorch, an optional dependency (the `torch` extra): its doctests are
# collected only where torch is installed. Decided here, before collection, from what is
# installed; tests/test_torch_dropin.py skips the same way (importorskip).
collect_ignore_glob = [] if importlib.util.find_spec("torch") else ["fastopt/torch/*"]
