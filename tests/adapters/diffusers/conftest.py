"""Settings of the adapter tests (tiny models: diffusers_helpers.py). The whole folder needs
the [diffusers] extra; without it, it is not collected."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

if importlib.util.find_spec("diffusers") is None or importlib.util.find_spec("peft") is None:
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(autouse=True)
def _seed_quiet():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield
