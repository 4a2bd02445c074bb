"""Tests of flowpost/methods/gradual.py: the conditional and marginal objectives share their
gradient (closed-form Gaussian case), sigma = 0 is flow matching exactly, the intermediate
optimum is the anchor/target mixture, and bad settings are one clear line."""

from __future__ import annotations

import pytest
import torch

from flowpost.config import ConfigError
from flowpost.data.base import Batch, DataSpec
from flowpost.flows.couplings import make_coupling
from flowpost.flows.paths import LinearPath
from flowpost.flows.stochastic import StochasticFlow
from flowpost.flows.timesteps import make_time_sampler
from flowpost.methods.flow_matching import FlowMatching, FlowMatchingConfig, flow_matching_loss
from flowpost.methods.gradual import Gradual, GradualConfig, gft_loss
from flowpost.nets.config import NetConfig
from flowpost.train.config import build_run_config
from flowpost.train.updater import OptimizerUpdater

M, C = 1.0, 0.5  # target N(M, C^2); source N(0, 1)


def closed_form_marginal(flow: StochasticFlow, x, t):
    te = t.unsqueeze(-1)
    s, k = flow.std(te), flow.coefficient(te)
    var = (1 - te) ** 2 + te**2 * C**2 + s**2
    return M + (te * C**2 - (1 - te) + k * s) / var * (x - te * M)


class Features(torch.nn.Module):
    """b_theta(x, t) = w . [x, x t, 1, t, x t^2]: linear in theta, rich enough to be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.2, -0.1, 0.3, 0.1, 0.05]))

    def forward(self, x, t, cond=None):
        te = t.unsqueeze(-1)
        feats = torch.stack([x, x * te, torch.ones_like(x), te.expand_as(x), x * te**2], -1)
        return (feats * self.w).sum(-1)


def anchor(x, t, cond=None):
    return -0.5 * x + 0.2


def per_batch_gradients(flow, temperature, offset=0.0, batches=300, n=256, seed=0):
    """Gradients of the conditional and the (exact) marginal GFT objectives, batch by batch."""
    g = torch.Generator().manual_seed(seed)
    model = Features()
    grads = []
    for _ in range(batches):
        x0 = torch.randn(n, 1, generator=g)
        x1 = M + C * torch.randn(n, 1, generator=g)
        t = 0.02 + 0.96 * torch.rand(
            n, generator=g
        )  # keeps the conditional drift's variance finite
        p = flow.sample_path(x0, x1, t, noise=torch.randn(n, 1, generator=g))
        marg = closed_form_marginal(flow, p.x_t, t) + offset
        row = []
        for data in (p.velocity, marg):
            loss, _ = gft_loss(model(p.x_t, t), data, anchor(p.x_t, t), temperature)
            (grad,) = torch.autograd.grad(loss, model.w)
            row.append(grad)
        grads.append(torch.stack(row))
    return torch.stack(grads)  # (batches, 2, params)


@pytest.mark.parametrize(
    ("sigma", "schedule", "temperature"),
    [(0.0, "constant", 0.0), (0.5, "constant", 0.3), (0.5, "vanishing", 0.7)],
)
def test_conditional_and_marginal_objectives_have_the_same_gradient(sigma, schedule, temperature):
    """Paired z-test on the per-batch gradient difference: every coordinate within 4.5
    standard errors (a false alarm has probability < 1e-4 over 5 coordinates), while a
    marginal drift wrong by 0.05 is detected by the same test."""
    flow = StochasticFlow(sigma, schedule)
    g = per_batch_gradients(flow, temperature)
    diff = g[:, 0] - g[:, 1]
    z = diff.mean(0) / (diff.std(0) / diff.shape[0] ** 0.5)
    assert float(z.abs().max()) < 4.5, z
    # power: the same test rejects a marginal drift that is off by a small constant
    bad = per_batch_gradients(flow, temperature, offset=0.05, seed=1)
    dbad = bad[:, 0] - bad[:, 1]
    zbad = dbad.mean(0) / (dbad.std(0) / dbad.shape[0] ** 0.5)
    assert float(zbad.abs().max()) > 4.5, zbad


def test_the_intermediate_optimum_is_the_mixture_of_anchor_and_target() -> None:
    """Least squares over the features at temperature tau equals the mixture of the fits at
    tau = 0 (target) and tau = 1 (anchor): the optima move on a segment."""
    g = torch.Generator().manual_seed(4)
    flow = StochasticFlow(0.3, "vanishing")
    n = 20000
    x0, x1 = torch.randn(n, 1, generator=g), M + C * torch.randn(n, 1, generator=g)
    t = torch.rand(n, generator=g)
    p = flow.sample_path(x0, x1, t, noise=torch.randn(n, 1, generator=g))
    te = t.unsqueeze(-1)
    x = p.x_t
    feats = torch.cat([x, x * te, torch.ones_like(x), te, x * te**2], 1).double()

    def fit(tau):
        target = torch.lerp(p.velocity, anchor(x, t), tau).double()
        return torch.linalg.lstsq(feats, target).solution

    for tau in (0.25, 0.5, 0.9):
        torch.testing.assert_close(fit(tau), (1 - tau) * fit(0.0) + tau * fit(1.0))


def test_sigma_zero_temperature_zero_is_flow_matching_draw_for_draw() -> None:
    net = NetConfig(hidden=16, depth=1)
    gft = Gradual(
        GradualConfig(sigma=0.0, coupling="independent", temperature_start=0.0),
        DataSpec((2,)),
        net,
    )
    x1 = torch.randn(32, 2)
    torch.manual_seed(5)
    expected = flow_matching_loss(
        gft.policy, x1, None, coupling=make_coupling("independent"),
        time_sampler=make_time_sampler("uniform"), path=LinearPath(),
    )  # fmt: skip
    seen = {}

    class Capture:
        def step(self, name, **terms):
            seen.update(terms)
            return {}

    torch.manual_seed(5)
    gft.train_step(Batch(x1, None), 0, Capture())
    assert torch.equal(seen["gft"], expected)


def test_sigma_zero_generate_is_the_deterministic_flow_exactly() -> None:
    net = NetConfig(hidden=16, depth=2)
    spec = DataSpec((2,))
    fm = FlowMatching(FlowMatchingConfig(), spec, net)
    gft = Gradual(GradualConfig(sigma=0.0), spec, net)
    gft.load_pretrained(fm.policy.state_dict())
    noise = torch.randn(100, 2)
    with torch.no_grad():
        for nfe in (1, 4, 100):
            assert torch.equal(gft.generate(noise, nfe=nfe), fm.generate(noise, nfe=nfe))


def test_training_anneals_keeps_the_anchor_frozen_and_moves_to_the_target() -> None:
    torch.manual_seed(0)
    net = NetConfig(hidden=32, depth=2)
    method = Gradual(GradualConfig(sigma=0.1, temperature_steps=60), DataSpec((2,)), net)
    ref_before = [p.clone() for p in method.reference.parameters()]
    opt = torch.optim.Adam(method.policy.parameters(), lr=3e-3)
    up = OptimizerUpdater({"policy": opt})
    target = torch.randn(512, 2) * 0.1 + torch.tensor([2.0, -1.0])
    temps, fits = [], []
    for step in range(250):
        logs = method.train_step(Batch(target[torch.randint(0, 512, (64,))], None), step, up)
        temps.append(logs["temperature"])
        fits.append(logs["fit"])
    assert temps[0] == 1.0 and temps[60:] == [0.0] * 190
    assert all(a >= b for a, b in zip(temps, temps[1:]))
    assert all(torch.equal(a, b) for a, b in zip(ref_before, method.reference.parameters()))
    with torch.no_grad():
        x = method.generate(torch.randn(1000, 2), nfe=50)
    assert float((x.mean(0) - torch.tensor([2.0, -1.0])).norm()) < 0.2


def test_generate_refuses_other_solvers() -> None:
    method = Gradual(GradualConfig(), DataSpec((2,)), NetConfig(hidden=8, depth=1))
    with pytest.raises(ValueError, match="Euler-Maruyama"):
        method.generate(torch.zeros(2, 2), nfe=2, solver="rk4")


def test_adaptive_state_is_checkpointed() -> None:
    cfg = GradualConfig(
        temperature_schedule="adaptive", temperature_steps=100, temperature_patience=3
    )
    a = Gradual(cfg, DataSpec((2,)), NetConfig(hidden=8, depth=1))
    for k in range(10):
        a.temperature.observe(k, 1.0)
    b = Gradual(cfg, DataSpec((2,)), NetConfig(hidden=8, depth=1))
    b.load_extra_state(a.extra_state())
    assert b.temperature.value(10) == a.temperature.value(10) < 1.0


RECIPE = {
    "data": {"name": "8gaussians"},
    "method": {"name": "gft"},
    "train": {"steps": 1000},
}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"anchor_steps": 1}, "unknown key 'method.anchor_steps'"),
        ({"temperature_steps": 2000}, "temperature would not reach 0"),
        ({"sigma": -0.1}, "method.sigma: -0.1 is below the minimum 0"),
        ({"coupling": "sinkhron"}, "method.coupling: 'sinkhron' is not one of"),
        ({"temperature_schedule": "step"}, "method.temperature_schedule: 'step' is not one of"),
        ({"objective": "marginal", "sigma": 0.0}, "needs method.sigma > 0"),
    ],
)
def test_bad_settings_are_one_clear_line(override, message) -> None:
    recipe = {**RECIPE, "method": {"name": "gft", **override}}
    with pytest.raises(ConfigError, match=message) as err:
        build_run_config(recipe)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("within", [True, False])
def test_coupling_keeps_the_noise_independent_of_the_label(within: bool) -> None:
    """With class labels the OT pairing happens within each label: the noise rows paired with
    label c are the ones drawn for label c (so given c they are still N(0, I), as sampling
    assumes). A batch-wide plan sends the noise nearest each class's images to that class:
    the mean of the noise given the label moves toward the class's images."""
    torch.manual_seed(0)
    k, n = 4, 400
    cond = torch.arange(n) % k
    centers = 3.0 * torch.eye(k)  # class c sits far along axis c
    x1 = centers[cond] + 0.1 * torch.randn(n, k)
    x0 = torch.randn(n, k)
    cfg = GradualConfig(coupling="ot", label_dropout=0.0, coupling_within_class=within)
    gft = Gradual(cfg, DataSpec((k,), num_classes=k), NetConfig(hidden=8, depth=1))
    paired, x1_out, cond_out = gft.pair(x0, x1, cond)
    assert torch.equal(x1_out, x1) and torch.equal(cond_out, cond)
    drift = torch.stack([paired[cond == c, c].mean() for c in range(k)])  # noise mean along c
    if within:
        for c in range(k):
            rows = cond == c
            assert torch.equal(paired[rows].sort(0).values, x0[rows].sort(0).values)
        assert float(drift.abs().max()) < 0.3  # about N(0, 1) means of 100 draws
    else:
        assert float(drift.min()) > 0.5  # the batch-wide plan biases the noise per label
