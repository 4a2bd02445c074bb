"""Tests of flowpost/methods/components/guidance.py: at the data end the noised cross-entropy is
the classifier's cross-entropy on the sample itself, and gradients reach the sample; the
target-time cross-entropy scores each sample at its own time and drops early hops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowpost.methods.components.guidance import (
    GuidanceConfig,
    noised_cross_entropy,
    target_cross_entropy,
)

torch.set_num_threads(1)


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.lin(torch.cat([x, t[:, None]], 1))


def test_at_the_data_end_it_is_the_plain_cross_entropy() -> None:
    torch.manual_seed(0)
    c = Linear()
    x = torch.randn(6, 2, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    got = noised_cross_entropy(c, x, y, t_min=1.0)  # t = 1: x_t = x
    want = F.cross_entropy(c(x, torch.ones(6)), y)
    assert float(got.detach()) == pytest.approx(float(want.detach()), abs=1e-6)
    got.backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)


def test_target_cross_entropy_is_masked_mean_at_each_samples_time() -> None:
    torch.manual_seed(0)
    c = Linear()
    x = torch.randn(4, 2, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    b = torch.tensor([0.25, 0.5, 0.75, 1.0])
    got = target_cross_entropy(c, x, b, y, b_min=0.51)
    per = F.cross_entropy(c(x, b), y, reduction="none")
    assert float(got.detach()) == pytest.approx(float(per[2:].sum().detach()) / 4, abs=1e-6)
    got.backward()
    assert x.grad is not None
    assert bool((x.grad[:2] == 0).all()) and bool(x.grad[2:].abs().sum() > 0)


@pytest.mark.parametrize("one_step", [True, False])
def test_guidance_config_picks_the_authors_point(one_step: bool) -> None:
    c = Linear()
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 2, 3])
    b = torch.tensor([0.25, 0.5, 0.75, 1.0])
    cfg = GuidanceConfig(cg_weight=0.5, cg_t_min=1.0, cg_target_min=0.51)
    got = cfg.guidance(c, x, b, y, one_step=one_step)
    # one step: re-noised to t' = 1 (x as it is, at t = 1); multi-step: at b, hops b >= 0.51
    want = (
        noised_cross_entropy(c, x, y, t_min=1.0)
        if one_step
        else target_cross_entropy(c, x, b, y, b_min=0.51)
    )
    assert float(got.detach()) == pytest.approx(0.5 * float(want.detach()), abs=1e-6)
    cfg.cg_at = "target"
    forced = cfg.guidance(c, x, b, y, one_step=True)
    want = target_cross_entropy(c, x, b, y, 0.51).detach()
    assert float(forced.detach()) == pytest.approx(0.5 * float(want))
