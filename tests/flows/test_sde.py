"""Tests for flowpost/flows/sde.py: Euler-Maruyama statistics and transition log densities."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from torch import Tensor

import flowpost.flows.sde as sde
from flowpost.flows.sde import euler_maruyama, gaussian_log_prob, transition_log_prob
from flowpost.flows.solvers import odeint
from flowpost.flows.timesteps import time_grid

torch.set_num_threads(1)


def ou(x: Tensor, t: Tensor, c: Tensor | None) -> Tensor:
    return -2.0 * x + t.unsqueeze(1)


def test_log_prob_equals_analytic_gaussian_density() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, dtype=torch.float64, generator=g)
    grid = time_grid(5, "shifted", shift=2.0, dtype=torch.float64)
    sigma = lambda t: 0.3 + t  # noqa: E731
    r = euler_maruyama(ou, sigma, x, grid, generator=g, return_trajectory=True)
    assert r.trajectory is not None and r.log_prob.shape == (6, 5)
    states, ts = r.trajectory.states, grid.tolist()
    for k in range(5):
        dt = ts[k + 1] - ts[k]
        mean = states[k] + ou(states[k], torch.full((6,), ts[k], dtype=torch.float64), None) * dt
        normal = torch.distributions.Normal(mean, sigma(ts[k]) * math.sqrt(dt))
        expected = normal.log_prob(states[k + 1]).sum(1)
        assert torch.allclose(r.log_prob[:, k], expected, rtol=1e-10, atol=1e-10)
    assert torch.allclose(transition_log_prob(ou, sigma, r.trajectory), r.log_prob)


def test_gaussian_log_prob_shapes_and_values() -> None:
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    m = torch.randn(4, 2, 3, dtype=torch.float64)
    std = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    lp = gaussian_log_prob(x, m, std)
    expected = torch.distributions.Normal(m, std.view(4, 1, 1)).log_prob(x).flatten(1).sum(1)
    assert lp.shape == (4,) and torch.allclose(lp, expected)
    assert torch.allclose(
        gaussian_log_prob(x, m, 0.7),
        torch.distributions.Normal(m, 0.7).log_prob(x).flatten(1).sum(1),
    )
    with pytest.raises(ValueError, match="same shape"):
        gaussian_log_prob(x, m[:, :1], 1.0)


def test_em_variance_matches_discrete_recursion() -> None:
    # dX = -a X dt + s dW from 0: each step v <- (1 - a h)^2 v + s^2 h exactly for EM.
    a, s, n, steps = 1.5, 0.8, 20000, 10
    r = euler_maruyama(lambda x, t, c: -a * x, s, torch.zeros(n, 2), time_grid(steps),
                       generator=torch.Generator().manual_seed(1))  # fmt: skip
    v, h = 0.0, 1 / steps
    for _ in range(steps):
        v = (1 - a * h) ** 2 * v + s**2 * h
    assert abs(float(r.x.var(0).mean()) - v) < 4 * v * math.sqrt(2 / (2 * n))
    assert abs(float(r.x.mean())) < 4 * math.sqrt(v / (2 * n))


def test_zero_noise_is_euler_and_generator_reproducible() -> None:
    x = torch.randn(3, 2)
    grid = time_grid(7)
    r = euler_maruyama(ou, 0.0, x, grid)
    assert torch.allclose(r.x, odeint(ou, x, grid, method="euler"))  # type: ignore[arg-type]
    assert torch.equal(r.log_prob, torch.zeros(3, 7))
    r1 = euler_maruyama(ou, 0.5, x, grid, generator=torch.Generator().manual_seed(3))
    r2 = euler_maruyama(ou, 0.5, x, grid, generator=torch.Generator().manual_seed(3))
    assert torch.equal(r1.x, r2.x) and torch.equal(r1.log_prob, r2.log_prob)
    with pytest.raises(ValueError, match="sigma"):
        euler_maruyama(ou, -1.0, x, grid)


def test_transition_log_prob_gives_drift_gradients() -> None:
    w = torch.tensor(1.0, requires_grad=True)
    r = euler_maruyama(
        lambda x, t, c: -x,
        0.4,
        torch.ones(5, 2),
        time_grid(4),
        generator=torch.Generator().manual_seed(2),
        return_trajectory=True,
    )
    assert r.trajectory is not None and not r.log_prob.requires_grad
    lp = transition_log_prob(lambda x, t, c: -w * x, 0.4, r.trajectory)
    (g,) = torch.autograd.grad(lp.sum(), w)
    # Finite difference of the same function of w.
    eps = 1e-3
    hi = transition_log_prob(lambda x, t, c: -(1 + eps) * x, 0.4, r.trajectory).sum()
    lo = transition_log_prob(lambda x, t, c: -(1 - eps) * x, 0.4, r.trajectory).sum()
    assert abs(float(g) - float(hi - lo) / (2 * eps)) < 1e-2 * max(1.0, abs(float(g)))
    assert abs(float(g)) > 1e-3


def test_doctests() -> None:
    assert doctest.testmod(sde).failed == 0
