import os
import warnings

import pytest
import torch

# pytest-xdist runs one worker per core: more intra-op threads than cores slows torch
# down many times over, so each worker computes on one thread.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    warnings.filterwarnings("ignore", category=FutureWarning)
    yield
