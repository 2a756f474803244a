"""The benchmark cases ``fastopt bench``, the pytest-benchmark suite and the GPU scripts run:
``cpu`` (fastopt against numpy and torch, with the memory roofline) and ``gpu``."""
