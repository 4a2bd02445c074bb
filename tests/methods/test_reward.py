"""Tests of flowpost/methods/reward.py: built-in rewards, reward loading, the FAIL term, and
that both modes raise the reward on a 2-D toy."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from flowpost.data.base import Batch, DataSpec
from flowpost.methods.base import get_method_class
from flowpost.methods.reward import (
    RewardConfig,
    RewardMethod,
    gaussian_reward,
    linear_reward,
    make_reward,
    tanh_linear_reward,
)
from flowpost.nets.config import DiscriminatorConfig, NetConfig
from flowpost.train.updater import OptimizerUpdater

torch.set_num_threads(1)


def test_registered_under_reward() -> None:
    assert get_method_class("reward") is RewardMethod


def test_builtin_rewards_hand_computed() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, -1.0]])
    # unit direction (1, 1) / sqrt(2)
    assert linear_reward(x).tolist() == pytest.approx([7 / math.sqrt(2), -1 / math.sqrt(2)])
    assert linear_reward(x, direction=[0.0, 3.0], scale=2.0).tolist() == pytest.approx([8.0, -2.0])
    assert tanh_linear_reward(x, direction=[1.0, 0.0]).tolist() == pytest.approx(
        [math.tanh(3.0), 0.0]
    )
    # per-sample mean square distance to (1, 0): (4 + 16) / 2 = 10 and (1 + 1) / 2 = 1
    assert gaussian_reward(x, center=[1.0, 0.0], width=2.0).tolist() == pytest.approx(
        [math.exp(-10 / 8), math.exp(-1 / 8)]
    )
    with pytest.raises(ValueError, match="one entry per dimension"):
        linear_reward(x, direction=[1.0, 0.0, 0.0])


def test_make_reward_by_name_and_by_import_path() -> None:
    x = torch.tensor([[1.0, 2.0]])
    by_path = make_reward("flowpost.methods.reward:linear_reward", direction=[0.0, 1.0])
    assert by_path(x, None).tolist() == [2.0]
    with pytest.raises(ValueError, match="unknown reward"):
        make_reward("nope")
    with pytest.raises(ValueError, match="cannot import"):
        make_reward("no_such_module_xyz:f")


def test_bad_reward_shape_is_a_clear_error() -> None:
    # _direction(x, None) returns a (2,) vector, not one value per sample
    cfg = RewardConfig(reward="flowpost.methods.reward:_direction")
    m = RewardMethod(cfg, DataSpec((2,)), NetConfig(hidden=8, depth=1))
    with pytest.raises(ValueError, match="one value per sample"):
        m.reward(torch.zeros(3, 2), None)


def test_roles_and_terms_with_and_without_fail() -> None:
    spec, net = DataSpec((2,)), NetConfig(hidden=8, depth=1)
    alone = RewardMethod(RewardConfig(reward="linear"), spec, net)
    assert alone.discriminator is None and sorted(alone.optimizers()) == ["policy"]
    cfg = RewardConfig(reward="linear", fail_weight=0.5, disc_warmup_steps=0,
                       discriminator=DiscriminatorConfig(hidden=8))  # fmt: skip
    reg = RewardMethod(cfg, spec, net)
    assert reg.discriminator is not None
    assert sorted(reg.optimizers()) == ["discriminator", "policy"]
    x = torch.randn(4, 2)
    terms = reg.score(x, None)
    assert torch.allclose(terms["reward"], -linear_reward(x))
    want_fail = 0.5 * torch.nn.functional.softplus(-reg.discriminator(x, None))
    assert torch.allclose(terms["fail"], want_fail)
    logs = reg.train_step(Batch(torch.randn(8, 2)), 0, _updater(reg, 1e-3))
    assert "discriminator/bce" in logs and "policy/fail" in logs and "policy/reward" in logs


def _updater(m: RewardMethod, lr: float) -> OptimizerUpdater:
    return OptimizerUpdater(
        {name: torch.optim.Adam(spec.params, lr=lr) for name, spec in m.optimizers().items()}
    )


@pytest.mark.parametrize("variant", ["pd", "pg"])
def test_training_raises_the_reward(variant: str) -> None:
    torch.manual_seed(0)
    cfg = RewardConfig(variant=variant, reward="tanh_linear", reward_args={"direction": [1.0, 0.0]},
                       nfe=2, pg_group_size=8, pg_draws=4)  # fmt: skip
    m = RewardMethod(cfg, DataSpec((2,)), NetConfig(hidden=32, depth=2, time_embed_dim=8))
    up = _updater(m, 3e-3)
    noise = torch.randn(512, 2)

    def mean_reward() -> float:
        return float(tanh_linear_reward(m.generate(noise, nfe=2), direction=[1.0, 0.0]).mean())

    before = mean_reward()
    for step in range(60):
        m.train_step(Batch(torch.randn(64, 2)), step, up)
    after = mean_reward()
    assert after > before + 0.8  # the bounded reward lies in (-1, 1)


def test_differentiable_reward_gradient_reaches_only_the_policy() -> None:
    cfg = RewardConfig(reward="linear", fail_weight=1.0, disc_warmup_steps=0,
                       discriminator=DiscriminatorConfig(hidden=8))  # fmt: skip
    m = RewardMethod(cfg, DataSpec((2,)), NetConfig(hidden=8, depth=1))
    assert m.discriminator is not None
    seen: list[tuple[str, bool, bool]] = []

    class Spy:
        def step(self, name: str, **terms: Tensor) -> dict[str, float]:
            sum(terms.values()).backward()  # type: ignore[union-attr]
            pol = any(p.grad is not None for p in m.policy.parameters())
            dis = any(p.grad is not None for p in m.discriminator.parameters())  # type: ignore[union-attr]
            seen.append((name, pol, dis))
            m.zero_grad(set_to_none=True)
            return {}

    m.train_step(Batch(torch.randn(8, 2)), 0, Spy())
    assert seen == [("discriminator", False, True), ("policy", True, False)]
