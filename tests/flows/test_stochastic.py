"""Tests of flowpost/flows/stochastic.py: the bridge drift keeps the bridge's marginals, the
minibatch marginal drift converges to the closed form, and sigma = 0 is the ODE exactly."""

from __future__ import annotations

import math

import pytest
import torch

from flowpost.flows.paths import LinearPath
from flowpost.flows.recording import record_path_length
from flowpost.flows.sde import euler_maruyama
from flowpost.flows.solvers import odeint, sample
from flowpost.flows.stochastic import StochasticFlow, marginal_drift
from flowpost.flows.timesteps import time_grid


def gaussian_marginal_drift(flow: StochasticFlow, x, t, m: float, c: float):
    """Closed form E[b(x_t | x0, x1) | x_t = x] for x0 ~ N(0, 1), x1 ~ N(m, c^2) independent:
    (x_t, b) is jointly Gaussian, so the posterior mean is a linear regression."""
    te = t.unsqueeze(-1)
    s = flow.std(te)
    k = flow.coefficient(te)
    var = (1 - te) ** 2 + te**2 * c**2 + s**2
    cov = te * c**2 - (1 - te) + k * s
    return m + cov / var * (x - te * m)


class LinearField(torch.nn.Module):
    def __init__(self, a: float = -0.5, b: float = 0.3) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x, t, cond=None):
        return self.a * x + self.b * t.unsqueeze(-1) + 0.1


def test_negative_sigma_and_unknown_schedule_are_refused() -> None:
    with pytest.raises(ValueError, match="sigma must be a number >= 0"):
        StochasticFlow(-0.1)
    with pytest.raises(ValueError, match="unknown sigma schedule 'wiggly'"):
        StochasticFlow(0.1, "wiggly")


def test_schedules_constant_and_vanishing_at_the_ends() -> None:
    const, van = StochasticFlow(0.4, "constant"), StochasticFlow(0.4, "vanishing")
    assert [const.diffusion(t) for t in (0.0, 0.5, 1.0)] == [0.4, 0.4, 0.4]
    assert van.diffusion(0.0) == 0.0 and van.diffusion(1.0) == 0.0
    assert van.diffusion(0.5) == pytest.approx(0.4)


def test_constant_schedule_drift_is_the_brownian_bridge_drift() -> None:
    flow = StochasticFlow(0.7, "constant")
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(64, 3, generator=g), torch.randn(64, 3, generator=g)
    t = torch.rand(64, generator=g) * 0.98
    p = flow.sample_path(x0, x1, t, noise=torch.randn(64, 3, generator=g))
    expected = (x1 - p.x_t) / (1 - t).unsqueeze(1)
    torch.testing.assert_close(p.velocity, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("schedule", ["constant", "vanishing"])
def test_marginal_sde_transports_the_source_to_the_target(schedule: str) -> None:
    """The SDE with the (closed-form) marginal drift and g(t) carries N(0, 1) to the target
    N(m, c^2): mean and std at t = 1 within a few standard errors plus the O(h) step error."""
    flow = StochasticFlow(0.8, schedule, t_min=1e-4)
    m, c, n = 1.0, 0.5, 20000

    def drift(x, t, cond):
        return gaussian_marginal_drift(flow, x, t, m, c)

    gen = torch.Generator().manual_seed(1)
    x = euler_maruyama(drift, flow.diffusion, torch.randn(n, 1, generator=gen), time_grid(400),
                       generator=gen).x  # fmt: skip
    assert abs(float(x.mean()) - m) < 5 * c / math.sqrt(n) + 0.01
    assert abs(float(x.std()) / c - 1) < 0.03

    # power: without the score part of the drift (the ODE velocity under the same noise)
    # the spread is visibly wrong
    def ode_drift(x, t, cond):
        te = t.unsqueeze(-1)
        s, ds = flow.std(te), 0.8 * (1 - 2 * te) / (2 * (te * (1 - te)).clamp_min(1e-8).sqrt())
        var = (1 - te) ** 2 + te**2 * c**2 + s**2
        return m + (te * c**2 - (1 - te) + ds * s) / var * (x - te * m)

    y = euler_maruyama(ode_drift, flow.diffusion, torch.randn(n, 1, generator=gen),
                       time_grid(400), generator=gen).x  # fmt: skip
    assert abs(float(y.std()) / c - 1) > 0.1


@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_minibatch_marginal_drift_converges_to_the_closed_form(sigma: float) -> None:
    flow = StochasticFlow(sigma, "vanishing")
    m, c, n = 1.0, 0.5, 4000
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(n, 1, generator=g)
    x1 = m + c * torch.randn(n, 1, generator=g)
    t = torch.full((n,), 0.6)
    p = flow.sample_path(x0, x1, t, noise=torch.randn(n, 1, generator=g))
    exact = gaussian_marginal_drift(flow, p.x_t, t, m, c)
    est = marginal_drift(flow, p.x_t, t, x0, x1, independent=True)
    # the estimator is self-normalised importance sampling over 4000 targets
    assert float((est - exact).abs().mean()) < 0.03
    if sigma > 0:  # the pair-based estimator needs sigma > 0
        est_pairs = marginal_drift(flow, p.x_t, t, x0, x1, independent=False)
        assert float((est_pairs - exact).abs().mean()) < 0.1
    # the conditional drift itself is far from the marginal: the check has power
    assert float((p.velocity - exact).abs().mean()) > 0.2


def test_pair_marginal_needs_noise() -> None:
    flow = StochasticFlow(0.0)
    x = torch.zeros(3, 1)
    with pytest.raises(ValueError, match="needs sigma > 0"):
        marginal_drift(flow, x, torch.full((3,), 0.5), x, x, independent=False)


def test_sigma_zero_path_is_the_linear_path_without_drawing_noise() -> None:
    flow = StochasticFlow(0.0, "vanishing")
    x0, x1, t = torch.randn(8, 2), torch.randn(8, 2), torch.rand(8)
    torch.manual_seed(0)
    p = flow.sample_path(x0, x1, t)
    after = torch.randn(1)
    torch.manual_seed(0)
    assert torch.equal(after, torch.randn(1))  # no draw was made
    assert torch.equal(p.x_t, LinearPath().sample(x0, x1, t).x_t)
    assert torch.equal(p.velocity, x1 - x0)


@pytest.mark.parametrize("schedule", ["constant", "vanishing"])
@pytest.mark.parametrize("nfe", [1, 4, 100])
def test_sigma_zero_sampler_is_the_euler_ode_bit_for_bit(schedule: str, nfe: int) -> None:
    model = LinearField()
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(3))
    flow = StochasticFlow(0.0, schedule)
    ode = sample(model, noise, nfe, "euler")
    assert torch.equal(flow.sample(model, noise, nfe), ode)
    # the Euler-Maruyama loop itself (the SDE code path) with sigma = 0 gives the same bits
    res = flow.sample(model, noise, nfe, return_result=True)
    assert torch.equal(res.x, ode)  # type: ignore[union-attr]
    assert torch.equal(res.log_prob, torch.zeros(64, nfe))  # type: ignore[union-attr]


def test_stochastic_sampler_is_seeded_and_noisy() -> None:
    flow = StochasticFlow(0.3, "constant")
    noise = torch.zeros(500, 2)
    a = flow.sample(LinearField(), noise, 8, generator=torch.Generator().manual_seed(0))
    b = flow.sample(LinearField(), noise, 8, generator=torch.Generator().manual_seed(0))
    det = odeint(LinearField(), noise, time_grid(8))
    assert torch.equal(a, b)
    # Var of the sum of 8 Brownian increments through a contracting drift is below sigma^2
    spread = float((a - det).std())
    assert 0.5 * 0.3 < spread < 0.3


def test_sde_path_length_counts_the_drift_not_the_noise() -> None:
    flow = StochasticFlow(1.0, "constant")
    zero = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    with record_path_length() as rec:
        flow.sample(zero, torch.zeros(10, 2), 50, generator=torch.Generator().manual_seed(0))
    assert rec.steps == 50 and float(rec.lengths.abs().max()) == 0.0  # type: ignore[union-attr]
