"""Tests of flowpost/methods/components/imitation.py: the schedule, the discriminator's loss and
R1 term, its rounds (the first roll-out is handed to the policy) and the step without one."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from flowpost.config import ConfigError
from flowpost.data.base import Batch
from flowpost.methods.components.common import Rollout
from flowpost.methods.components.imitation import (
    ImitationConfig,
    adversarial_step,
    check_betas,
    discriminator_round,
    discriminator_terms,
    imitation_phase,
)

torch.set_num_threads(1)


class Sum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -1.0]))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return x @ self.w


class Recorder:
    def __init__(self) -> None:
        self.names: list[str] = []

    def step(self, name: str, **terms: Tensor) -> dict[str, float]:
        self.names.append(name)
        sum(terms.values()).backward()  # type: ignore[union-attr]
        return {f"{name}/{k}": float(v.detach()) for k, v in terms.items()}


def test_phases() -> None:
    phases = [imitation_phase(s, cold_start_steps=2, warmup_steps=1) for s in range(4)]
    assert phases == ["cold_start", "cold_start", "disc_warmup", "adversarial"]


def test_discriminator_terms_by_hand() -> None:
    d = Sum()
    real, fake = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])  # logits 2 and -1
    terms, r, f = discriminator_terms(d, Batch(real), Rollout(fake, fake, None), gp_weight=2.0)
    want = math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))
    assert float(terms["bce"].detach()) == pytest.approx(want, abs=1e-6)
    # R1: ||grad_x D||^2 = ||w||^2 = 2, times gp_weight / 2 = 1
    assert float(terms["r1"].detach()) == pytest.approx(2.0)
    assert r.tolist() == [2.0] and f.tolist() == [-1.0]


def test_rounds_train_the_discriminator_and_hand_back_the_first_rollout() -> None:
    torch.manual_seed(0)
    d, up = Sum(), Recorder()
    cfg = ImitationConfig(disc_steps=3)
    logs, first = discriminator_round(
        d, lambda x, t, c: x, Batch(torch.randn(4, 2)), cfg, 2, "euler", up, rounds=3
    )
    assert up.names == ["discriminator"] * 3
    assert {"discriminator/bce", "discriminator/acc_real", "discriminator/acc_fake"} <= set(logs)
    assert first.x1.shape == (4, 2)


def test_step_without_a_discriminator_is_a_policy_step() -> None:
    calls: list[Rollout | None] = []
    logs = adversarial_step(
        "adversarial",
        Batch(torch.zeros(2, 2)),
        Recorder(),
        policy=lambda x, t, c: x,
        discriminator=None,
        cfg=ImitationConfig(),
        nfe=1,
        solver="euler",
        policy_step=lambda first: calls.append(first) or {"policy/x": 1.0},  # type: ignore[func-returns-value]
    )
    assert calls == [None] and logs == {"policy/x": 1.0}


def test_betas_are_checked() -> None:
    assert check_betas(None) is None
    with pytest.raises(ConfigError, match="disc_betas"):
        ImitationConfig(disc_betas=[0.5])
