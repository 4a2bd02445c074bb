"""Tests of flowpost/flows/recording.py: the solvers report the length of the path they took."""

from __future__ import annotations

import math

import torch

from flowpost.flows.measures import path_length
from flowpost.flows.recording import record_path_length
from flowpost.flows.solvers import odeint, sample
from flowpost.flows.timesteps import time_grid


def rotation(x, t, c):
    """Rotation about the origin at unit angular speed: the path is an arc of length r."""
    return torch.stack([-x[:, 1], x[:, 0]], dim=1)


def test_nothing_is_recorded_outside_the_block() -> None:
    with record_path_length() as rec:
        pass
    sample(rotation, torch.ones(2, 2), 4)
    assert rec.steps == 0 and math.isnan(rec.mean())


def test_euler_length_equals_the_trajectory_polygon() -> None:
    x = torch.randn(16, 2)
    with record_path_length() as rec:
        traj = odeint(rotation, x, time_grid(32), return_trajectory=True)
    torch.testing.assert_close(rec.lengths, path_length(traj))  # type: ignore[arg-type]


def test_rk4_arc_length_converges_to_the_integral_of_speed() -> None:
    x = torch.tensor([[2.0, 0.0]])  # radius 2: speed 2 (RMS over 2 dims: 2 / sqrt(2))
    with record_path_length() as rec:
        sample(rotation, x, 64, "rk4")
    # 16 chords of an arc of angle 1: shorter by L (1/16)^2 / 24 = 2.3e-4
    arc = 2.0 / math.sqrt(2)
    assert 0 < arc - rec.mean() < 3e-4


def test_nested_blocks_record_separately() -> None:
    x = torch.ones(3, 2)
    with record_path_length() as outer:
        sample(rotation, x, 4)
        with record_path_length() as inner:
            sample(rotation, x, 8)
    assert outer.steps == 4 and inner.steps == 8
