import os
import sys

import pytest
import torch

# The tests import their helpers (naive_nsa, problems) by module name.
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def fresh_seed(request):
    """A different seed per test (fresh random inputs), printed on failure for reproduction."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield


def pytest_runtest_makereport(item, call):
    for name, value in item.user_properties:
        if name == "seed" and call.excinfo is not None:
            item.add_report_section(call.when, "seed", f"torch.manual_seed({value})")



def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
