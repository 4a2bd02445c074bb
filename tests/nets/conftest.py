"""Per-test seeding and one CPU thread for the network tests (helpers: nets_helpers.py)."""

import warnings

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        # the tests read scalars off graph-carrying tensors on purpose
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
        yield
