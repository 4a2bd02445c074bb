"""Tests of flowpost/methods/components/policy.py: the shared PD terms (the regulariser vanishes
at the reference, the estimators' terms), PG groups and the SDE roll-out, config checks."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from flowpost.config import ConfigError
from flowpost.data.base import Batch, DataSpec
from flowpost.methods.base import frozen_copy
from flowpost.methods.components.common import rollout
from flowpost.methods.components.policy import PolicyConfig, pd_terms, pg_update, policy_rollout
from flowpost.nets.config import NetConfig
from flowpost.nets.factory import build_velocity_net

torch.set_num_threads(1)


def _policy() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_velocity_net(NetConfig(hidden=16, depth=1), DataSpec((2,)))


def _score(x: Tensor, cond: Tensor | None) -> dict[str, Tensor]:
    return {"dist": (x - 1.0).pow(2).mean(1)}


@pytest.mark.parametrize("estimator", ["local", "pathwise"])
def test_pd_terms_score_and_regulariser(estimator: str) -> None:
    policy = _policy()
    cfg = PolicyConfig(nfe=2, pd_estimator=estimator, ref_weight=0.5, pd_timesteps=3)
    roll = rollout(policy, torch.zeros(8, 2), None, cfg.nfe, cfg.solver)
    terms = pd_terms(policy, frozen_copy(policy), roll, _score, cfg)
    assert list(terms) == ["dist", "reg"]
    assert float(terms["reg"]) == 0.0  # the policy is its own reference
    terms["dist"].backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in policy.parameters())


def test_pd_terms_without_regulariser_have_only_the_score() -> None:
    policy = _policy()
    cfg = PolicyConfig(nfe=2, pd_estimator="local")
    roll = rollout(policy, torch.zeros(4, 2), None, 2, "euler")
    assert list(pd_terms(policy, policy, roll, _score, cfg)) == ["dist"]


def test_sde_rollout_keeps_its_trajectory_and_pg_update_runs() -> None:
    policy = _policy()
    cfg = PolicyConfig(variant="pg", pg_estimator="sde", nfe=3, pg_group_size=4, pg_epochs=2)
    roll = policy_rollout(policy, Batch(torch.zeros(8, 2)), cfg, grouped=True)
    assert roll.states is not None and roll.states.states.shape == (4, 8, 2)
    assert torch.equal(roll.states.final, roll.x1)

    class Steps:
        calls = 0

        def step(self, name: str, **terms: Tensor) -> dict[str, float]:
            Steps.calls += 1
            sum(terms.values()).backward()  # type: ignore[union-attr]
            return {f"{name}/{k}": float(v) for k, v in terms.items()}

    logs = pg_update(policy, policy, roll, lambda x, c: -x.norm(dim=1), cfg, Steps())
    assert Steps.calls == 2 and logs["pg/ratio_first"] == pytest.approx(1.0)


def test_sde_estimator_needs_noise() -> None:
    with pytest.raises(ConfigError, match="pg_sde_noise"):
        PolicyConfig(variant="pg", pg_estimator="sde", pg_sde_noise=0.0)


def test_conditional_groups_share_a_label() -> None:
    spec = DataSpec((2,), num_classes=3)
    cfg = PolicyConfig(variant="pg", pg_group_size=3)
    policy = build_velocity_net(NetConfig(hidden=8, depth=1), spec)
    batch = Batch(torch.randn(7, 2), torch.tensor([2, 0, 1, 1, 0, 2, 2]))
    r = policy_rollout(policy, batch, cfg, grouped=True)
    assert r.cond is not None and r.cond.tolist() == [2, 2, 2, 0, 0, 0]
    assert r.x1.shape == (6, 2)


def test_pd_terms_add_the_expert_anchors_when_weighted() -> None:
    policy = _policy()
    cfg = PolicyConfig(
        nfe=2, pd_estimator="local", energy_weight=2.0, recall_weight=1.0, fm_weight=0.5
    )
    roll = rollout(policy, torch.zeros(16, 2), None, 2, "euler")
    expert = Batch(torch.randn(16, 2, generator=torch.Generator().manual_seed(0)))
    terms = pd_terms(policy, policy, roll, _score, cfg, expert=expert)
    assert list(terms) == ["dist", "energy", "recall", "fm"]
    assert all(bool(torch.isfinite(v)) and v.requires_grad for v in terms.values())
    # without the expert batch (reward fine-tuning's default) there is nothing to anchor to
    assert list(pd_terms(policy, policy, roll, _score, cfg)) == ["dist"]
