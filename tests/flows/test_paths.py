"""Tests for flowpost/flows/paths.py: linear path and stochastic bridge."""

from __future__ import annotations

import doctest

import pytest
import torch

import flowpost.flows.paths as paths
from flowpost.flows.paths import LinearPath, StochasticBridge, expand_like

torch.set_num_threads(1)


def test_linear_path_interpolates_and_velocity_is_derivative() -> None:
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    t = torch.rand(5, generator=g)
    s = LinearPath().sample(x0, x1, t)
    te = t.view(5, 1, 1, 1)
    assert torch.allclose(s.x_t, (1 - te) * x0 + te * x1)
    eps = 1e-3
    fd = LinearPath().sample(x0, x1, t + eps).x_t - LinearPath().sample(x0, x1, t - eps).x_t
    assert torch.allclose(s.velocity, fd / (2 * eps), atol=1e-3)
    ends = LinearPath().sample(x0, x1, torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0]))
    assert torch.equal(ends.x_t[0], x0[0]) and torch.allclose(ends.x_t[1], x1[1])


def test_bridge_marginal_mean_and_variance() -> None:
    g = torch.Generator().manual_seed(1)
    n, d, sigma, t0 = 40000, 3, 0.7, 0.3
    x0 = torch.tensor([1.0, -2.0, 0.5]).expand(n, d)
    x1 = torch.tensor([-1.0, 3.0, 2.0]).expand(n, d)
    s = StochasticBridge(sigma).sample(x0, x1, torch.full((n,), t0), generator=g)
    mean = (1 - t0) * x0[0] + t0 * x1[0]
    var = sigma**2 * t0 * (1 - t0)
    # Standard errors: sqrt(var / n) for the mean, var * sqrt(2 / n) for the variance.
    assert (s.x_t.mean(0) - mean).abs().max() < 4 * (var / n) ** 0.5
    assert (s.x_t.var(0) - var).abs().max() < 4 * var * (2 / n) ** 0.5


def test_bridge_velocity_is_time_derivative_with_fixed_noise() -> None:
    g = torch.Generator().manual_seed(2)
    x0, x1, eps = (torch.randn(6, 2, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0.05, 0.2, 0.4, 0.5, 0.7, 0.95], dtype=torch.float64)
    bridge = StochasticBridge(0.5)
    s = bridge.sample(x0, x1, t, noise=eps)
    h = 1e-6
    fd = bridge.sample(x0, x1, t + h, noise=eps).x_t - bridge.sample(x0, x1, t - h, noise=eps).x_t
    assert torch.allclose(s.velocity, fd / (2 * h), atol=1e-6)
    # Equivalent form mu' + s'/s (x_t - mu): the conditional Gaussian's transport field.
    te = t.unsqueeze(1)
    mu = (1 - te) * x0 + te * x1
    std = 0.5 * (te * (1 - te)).sqrt()
    dstd = 0.5 * (1 - 2 * te) / (2 * (te * (1 - te)).sqrt())
    assert torch.allclose(s.velocity, x1 - x0 + dstd / std * (s.x_t - mu))


def test_bridge_clamps_velocity_at_the_ends_and_reduces_to_linear() -> None:
    x0, x1, eps = torch.zeros(2, 1), torch.ones(2, 1), torch.ones(2, 1)
    s = StochasticBridge(1.0, t_min=0.01).sample(x0, x1, torch.tensor([0.0, 1.0]), noise=eps)
    assert torch.isfinite(s.velocity).all()
    assert torch.equal(s.x_t, torch.tensor([[0.0], [1.0]]))  # no noise at the end points
    c = 0.98 / (2 * (0.01 * 0.99) ** 0.5)
    assert torch.allclose(s.velocity[:, 0], torch.tensor([1 + c, 1 - c]))
    t = torch.rand(2)
    a = StochasticBridge(0.0).sample(x0, x1, t, noise=eps)
    b = LinearPath().sample(x0, x1, t)
    assert torch.allclose(a.x_t, b.x_t) and torch.allclose(a.velocity, b.velocity)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        LinearPath().sample(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="one time per sample"):
        LinearPath().sample(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="noise"):
        StochasticBridge(0.1).sample(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2),
                                     noise=torch.zeros(2, 2))  # fmt: skip
    with pytest.raises(ValueError, match="sigma"):
        StochasticBridge(-1.0)
    assert expand_like(torch.zeros(3), torch.zeros(3, 2, 5)).shape == (3, 1, 1)


def test_doctests() -> None:
    assert doctest.testmod(paths).failed == 0
