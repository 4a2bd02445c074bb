"""Tests of flowpost/methods/components/policy_gradient.py: group advantages, the PPO clip and the
FPO surrogate against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from flowpost.methods.components.policy_gradient import (
    FPODraws,
    fpo_surrogate,
    group_advantages,
    ppo_clip_loss,
)

torch.set_num_threads(1)


def test_group_advantages_zero_mean_unit_variance_per_group() -> None:
    r = torch.randn(12, generator=torch.Generator().manual_seed(3)) * 5 + 2
    a = group_advantages(r, 4).reshape(3, 4)
    assert torch.allclose(a.mean(1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(a.var(1, correction=0), torch.ones(3), atol=1e-5)
    # the clip at +-5 binds for a large group with one outlier: sqrt(G - 1) > 5
    big = torch.zeros(40)
    big[0] = 1.0
    assert float(group_advantages(big, 40).max()) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.zeros(5), 2)


def test_ppo_clip_loss_hand_computed() -> None:
    rho, adv = torch.tensor([0.5, 1.5, 1.1]), torch.tensor([1.0, -1.0, 2.0])
    # per sample max(-rho A, -clip(rho) A): max(-0.5, -0.8) = -0.5; max(1.5, 1.2) = 1.5;
    # max(-2.2, -2.2) = -2.2
    assert float(ppo_clip_loss(rho, adv, 0.2)) == pytest.approx((-0.5 + 1.5 - 2.2) / 3, abs=1e-6)


def test_fpo_surrogate_hand_computed() -> None:
    c = torch.tensor([1.0, 1.0])
    x1 = torch.tensor([[1.0, 0.0]])
    draws = FPODraws(t=torch.tensor([0.3, 0.7]), noise=torch.tensor([[0.0, 0.0], [1.0, 1.0]]),
                     draws=2)  # fmt: skip
    terms = fpo_surrogate(lambda x, t, cond: c.expand_as(x), x1, draws)
    # targets x1 - x0: [1, 0] and [0, -1]; errors [0, 1] -> 0.5 and [1, 2] -> 2.5
    assert terms.loss.tolist() == pytest.approx([1.5])
    # x_t = (1 - t) x0 + t x1
    assert terms.x_t.flatten().tolist() == pytest.approx([0.3, 0.0, 1.0, 0.3])


def test_group_advantages_of_bf16_rewards_are_computed_in_float32() -> None:
    # 1 + 2**-8, the pair's mean, is not a bf16 number: in bf16 the advantages became {0, 2}
    rewards = torch.tensor([1.0, 1.0078125], dtype=torch.bfloat16)
    adv = group_advantages(rewards, 2)
    assert adv.dtype == torch.float32
    assert torch.allclose(adv, torch.tensor([-1.0, 1.0]), atol=1e-4)
