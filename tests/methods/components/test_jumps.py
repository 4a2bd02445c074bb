"""Tests of flowpost/methods/components/jumps.py: the time pairs of two-time generators, the
transport cost, the weight schedules and the end-time check of a user's network."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from flowpost.methods.components.jumps import (
    any_step_times,
    fixed_k_times,
    ot_loss,
    scheduled_weight,
    takes_end_time,
)

torch.set_num_threads(1)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_fixed_k_times(k: int) -> None:
    torch.manual_seed(0)
    a, b = fixed_k_times(4000, k)
    assert torch.allclose(b - a, torch.full_like(a, 1.0 / k))
    levels = torch.round(a * k).long()
    assert torch.allclose(a, levels.float() / k)
    counts = torch.bincount(levels, minlength=k).float() / 4000
    assert counts.shape == (k,) and bool((counts - 1 / k).abs().max() < 0.03)


def test_any_step_times() -> None:
    torch.manual_seed(0)
    a, b = any_step_times(20000)
    assert bool((a >= 0).all() and (b >= a).all() and (b <= 1).all())
    assert a.mean().item() == pytest.approx(0.5, abs=0.01)
    assert b.mean().item() == pytest.approx(0.75, abs=0.01)  # E[a + (1 - a) u] = 3/4


def test_scheduled_weight_and_transport_cost() -> None:
    assert scheduled_weight(0.2, 0.0, "step", 10, 9) == 0.2
    assert scheduled_weight(0.2, 0.0, "step", 10, 10) == 0.0
    assert scheduled_weight(0.2, 0.1, "cosine", 10, 5) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="unknown schedule"):
        scheduled_weight(0.2, 0.1, "linear", 10, 5)
    out, src = torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)
    assert float(ot_loss(out, src, torch.tensor([0.5]))) == pytest.approx(5.0)  # (5/2)/0.5


def test_takes_end_time() -> None:
    class WithEnd(nn.Module):
        def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None,
                    t_end: Tensor | None = None) -> Tensor:  # fmt: skip
            return x

    class Without(nn.Module):
        def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
            return x

    assert takes_end_time(WithEnd()) and not takes_end_time(Without())
