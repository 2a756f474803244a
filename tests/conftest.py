import os
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("ci", deadline=None, max_examples=120, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "default")

@pytest.fixture
def rng(request):
    """A generator seeded from the test's id: the same data on every run and machine."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
