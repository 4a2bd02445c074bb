"""Tests for flowpost/flows/measures.py: path length and straightness."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

import flowpost.flows.measures as measures
from flowpost.flows.measures import path_length, rms_norm, straightness
from flowpost.flows.solvers import Trajectory, odeint
from flowpost.flows.timesteps import time_grid

torch.set_num_threads(1)


def test_straight_path_length_is_distance() -> None:
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(7, 3, 2, generator=g), torch.randn(7, 3, 2, generator=g)
    traj = odeint(lambda x, t, c: x1 - x0, x0, time_grid(9), return_trajectory=True)
    assert isinstance(traj, Trajectory)
    assert torch.allclose(path_length(traj), rms_norm(x1 - x0), atol=1e-5)
    assert torch.allclose(straightness(traj), torch.ones(7), atol=1e-5)


def test_quarter_circle_length_and_straightness() -> None:
    # Rotation field: x(t) moves on a circle of radius r through an angle pi/2.
    r = 2.0
    field = lambda x, t, c: (math.pi / 2) * torch.stack([-x[:, 1], x[:, 0]], 1)  # noqa: E731
    traj = odeint(
        field,
        torch.tensor([[r, 0.0]], dtype=torch.float64),
        time_grid(200, dtype=torch.float64),
        method="rk4",
        return_trajectory=True,
    )
    assert isinstance(traj, Trajectory)
    # RMS norm of a 2-D vector is its length / sqrt(2).
    arc = (math.pi / 2) * r / math.sqrt(2)
    chord = r * math.sqrt(2) / math.sqrt(2)
    assert abs(float(path_length(traj)) - arc) < 1e-4
    assert abs(float(straightness(traj)) - chord / arc) < 1e-4


def test_zero_length_is_straight_and_bad_input() -> None:
    traj = Trajectory(torch.zeros(3, 2, 4), time_grid(2))
    assert torch.equal(path_length(traj), torch.zeros(2))
    assert torch.equal(straightness(traj), torch.ones(2))
    with pytest.raises(ValueError, match="return_trajectory"):
        path_length(Trajectory(torch.zeros(1, 2, 4), torch.zeros(1)))


def test_doctests() -> None:
    assert doctest.testmod(measures).failed == 0
