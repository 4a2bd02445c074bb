"""Tests of flowpost/methods/components/sampler_method.py: a subclass that only says what a
sample is scored by trains its policy (PD and PG), with or without a discriminator."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from flowpost.data.base import Batch, DataSpec
from flowpost.methods.components.sampler_method import SamplerPolicyConfig, SamplerPolicyMethod
from flowpost.nets.config import DiscriminatorConfig, NetConfig
from flowpost.train.updater import OptimizerUpdater

torch.set_num_threads(1)


@dataclass
class TowardConfig(SamplerPolicyConfig):
    pass


class Toward(SamplerPolicyMethod):
    """Pull samples toward (2, 2): score ||x - c||^2, reward its negative."""

    config_class = TowardConfig
    solo_phase = "toward"

    def uses_discriminator(self) -> bool:
        return False

    def score(self, x: Tensor, cond: Tensor | None) -> dict[str, Tensor]:
        return {"dist": (x - 2.0).pow(2).mean(1)}

    def sample_reward(self, x: Tensor, cond: Tensor | None) -> Tensor:
        return -(x - 2.0).pow(2).mean(1).detach()


@pytest.mark.parametrize("variant", ["pd", "pg"])
def test_a_subclass_only_scores_and_the_policy_moves(variant: str) -> None:
    torch.manual_seed(0)
    cfg = TowardConfig(variant=variant, nfe=2, pg_group_size=8, pg_draws=4)
    m = Toward(cfg, DataSpec((2,)), NetConfig(hidden=32, depth=2))
    assert m.discriminator is None and sorted(m.optimizers()) == ["policy"]
    assert m.phase(0) == "toward" and m.extra_state() == {}
    up = OptimizerUpdater({"policy": torch.optim.Adam(m.policy.parameters(), lr=3e-3)})
    noise = torch.randn(256, 2)

    def dist() -> float:
        return float((m.generate(noise, nfe=2) - 2.0).pow(2).mean())

    before = dist()
    for step in range(40):
        m.train_step(Batch(torch.zeros(64, 2)), step, up)
    assert dist() < 0.7 * before


def test_with_a_discriminator_the_schedule_and_guard_apply() -> None:
    cfg = TowardConfig(disc_warmup_steps=2, discriminator=DiscriminatorConfig(hidden=8, depth=1))

    class WithD(Toward):
        def uses_discriminator(self) -> bool:
            return True

    m = WithD(cfg, DataSpec((2,)), NetConfig(hidden=8, depth=1))
    assert m.discriminator is not None and m.guard is not None
    assert [m.phase(s) for s in (0, 1, 2)] == ["disc_warmup", "disc_warmup", "adversarial"]
    assert sorted(m.optimizers()) == ["discriminator", "policy"]
