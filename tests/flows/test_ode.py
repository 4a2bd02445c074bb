"""Tests of flowpost/flows/ode.py: grid and state checks say what is wrong."""

from __future__ import annotations

import pytest
import torch

from flowpost.flows.ode import check_state, grid_values


def test_grid_values_accept_monotone_grids_only() -> None:
    assert grid_values(torch.tensor([0.0, 0.5, 1.0])) == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="strictly increasing"):
        grid_values(torch.tensor([0.0, 0.5, 0.5]))
    with pytest.raises(ValueError, match="at least two times"):
        grid_values(torch.tensor([0.0]))
    with pytest.raises(ValueError, match="non-finite"):
        grid_values(torch.tensor([0.0, float("inf")]))


def test_state_must_be_a_float_tensor() -> None:
    check_state(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="floating-point"):
        check_state(torch.zeros(2, dtype=torch.long))
