"""Tests of flowpost/methods/flow_matching.py: the loss, label dropout, CFG, training."""

from __future__ import annotations

import torch

from flowpost.data.base import Batch, DataSpec
from flowpost.flows.couplings import make_coupling
from flowpost.flows.paths import LinearPath
from flowpost.flows.timesteps import make_time_sampler
from flowpost.methods.flow_matching import (
    FlowMatching,
    FlowMatchingConfig,
    drop_labels,
    flow_matching_loss,
)
from flowpost.nets.config import NetConfig
from flowpost.train.updater import OptimizerUpdater


class ExactField(torch.nn.Module):
    """The exact marginal velocity when the data is a single point ``c``:
    x_t = (1-t) x0 + t c  =>  u = c - x0 = (c - x_t) / (1 - t)."""

    def __init__(self, c: torch.Tensor) -> None:
        super().__init__()
        self.c = c

    def forward(self, x, t, cond=None):
        return (self.c - x) / (1 - t).clamp_min(1e-6).unsqueeze(-1)


def test_loss_is_zero_for_the_exact_field_of_a_point_mass() -> None:
    c = torch.tensor([1.5, -0.5])
    x1 = c.expand(64, 2).clone()
    loss = flow_matching_loss(
        ExactField(c),
        x1,
        None,
        coupling=make_coupling("independent"),
        time_sampler=make_time_sampler("uniform"),
        path=LinearPath(),
    )
    assert float(loss) < 1e-8


def test_loss_equals_hand_computation() -> None:
    torch.manual_seed(3)
    x1 = torch.randn(5, 3)
    model = torch.nn.Module()
    model.forward = lambda x, t, cond=None: torch.zeros_like(x)  # type: ignore[method-assign]
    torch.manual_seed(7)
    loss = flow_matching_loss(
        model,
        x1,
        None,
        coupling=make_coupling("independent"),
        time_sampler=make_time_sampler("uniform"),
        path=LinearPath(),
    )
    torch.manual_seed(7)
    x0 = torch.randn_like(x1)
    expected = (x1 - x0).pow(2).mean()
    assert torch.allclose(loss, expected)


def test_label_dropout_rate_and_null_label() -> None:
    torch.manual_seed(0)
    cond = torch.zeros(20000, dtype=torch.long)
    dropped = drop_labels(cond, 0.25, num_classes=10)
    assert set(dropped.unique().tolist()) == {0, 10}
    assert abs(float((dropped == 10).float().mean()) - 0.25) < 0.015
    assert drop_labels(cond, 0.25, None) is cond


def test_training_fits_a_gaussian_shift() -> None:
    torch.manual_seed(0)
    method = FlowMatching(FlowMatchingConfig(), DataSpec((2,)), NetConfig(hidden=64, depth=2))
    opt = torch.optim.AdamW(method.optimizers()["policy"].params, lr=3e-3)
    up = OptimizerUpdater({"policy": opt})
    target = torch.tensor([2.0, -1.0])
    for step in range(400):
        x1 = target + 0.1 * torch.randn(128, 2)
        method.train_step(Batch(x1), step, up)
    with torch.no_grad():
        out = method.generate(torch.randn(2000, 2), nfe=20)
    assert torch.allclose(out.mean(0), target, atol=0.1)
    assert float(out.std(0).max()) < 0.35


def test_classifier_free_guidance_changes_conditional_samples() -> None:
    torch.manual_seed(0)
    cfg = FlowMatchingConfig(guidance=3.0)
    method = FlowMatching(cfg, DataSpec((2,), num_classes=2), NetConfig(hidden=32, depth=2))
    noise, cond = torch.randn(8, 2), torch.tensor([0, 1] * 4)
    with torch.no_grad():
        guided = method.generate(noise, cond, nfe=4)
        method.config.guidance = 1.0
        plain = method.generate(noise, cond, nfe=4)
    assert not torch.allclose(guided, plain)
