"""Tests of flowpost/methods/components/policy.py: the shared PD terms (the regulariser vanishes
at the reference, the estimators' terms), PG groups and the SDE roll-out, config checks."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from flowpost.config import ConfigError
from flowpost.data.base import Batch, DataSpec
from flowpost.methods.base import frozen_copy
from flowpost.methods.components.common import Rollout, rollout
from flowpost.methods.components.pathwise import velocity_regulariser
from flowpost.methods.components.policy import (
    PolicyConfig,
    pd_terms,
    pg_update,
    policy_rollout,
    with_teachers,
)
from flowpost.methods.components.policy_gradient import draw_fpo, fpo_surrogate, group_advantages
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
    assert float(terms["reg"].detach()) == 0.0  # the policy is its own reference
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
            return {f"{name}/{k}": float(v.detach()) for k, v in terms.items()}

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


class _Backward:
    """An Updater that back-propagates the total of the terms (no optimiser step), or, with
    ``lr``, also takes a plain SGD step on ``params``."""

    def __init__(self, params: list[Tensor] | None = None, lr: float = 0.0) -> None:
        self.params, self.lr = params or [], lr
        self.terms: dict[str, float] = {}

    def step(self, name: str, **terms: Tensor) -> dict[str, float]:
        total = sum(terms.values())
        assert isinstance(total, Tensor)
        total.backward()
        self.terms = {k: float(v.detach()) for k, v in terms.items()}
        with torch.no_grad():
            for p in self.params:
                if p.grad is not None:
                    p.sub_(self.lr * p.grad)
                    p.grad = None
        return {f"{name}/{k}": float(v.detach()) for k, v in terms.items()}


class _Field(torch.nn.Module):
    """A small float64 MLP ``v(x, t)`` (the library's nets embed time in float32)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)
        ).double()

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.net(torch.cat([x, t[:, None]], 1))


def _pg_setup(
    **overrides: object,
) -> tuple[torch.nn.Module, torch.nn.Module, Rollout, PolicyConfig]:
    torch.manual_seed(0)
    policy, reference = _Field(), frozen_copy(_Field())
    x1 = torch.randn(8, 2, dtype=torch.float64)
    roll = Rollout(x0=torch.randn_like(x1), x1=x1, cond=None)
    cfg = PolicyConfig(variant="pg", pg_group_size=4, pg_draws=3, **overrides)  # type: ignore[arg-type]
    return policy, reference, roll, cfg


def _reward(x: Tensor, cond: Tensor | None) -> Tensor:
    return -x[:, 0] + 0.5 * x[:, 1] ** 2


def test_pg_gradient_is_the_advantage_weighted_surrogate_and_the_anchor_matches_fd() -> None:
    """At ratio 1 the PG loss's gradient is ``mean_i A_i grad l_i`` (the FPO surrogate of
    sample i weighted by its advantage: a higher advantage lowers that sample's flow-matching
    loss, i.e. raises its likelihood; a flipped ratio, exp(l_new - l_old), gives the opposite
    sign) plus the gradient of the anchor ``ref_weight mean ||v - v_ref||^2``, which agrees
    with central finite differences of its value (the PPO term's value is the same at every
    parameter: its old log-likelihood is recomputed, so the ratio is 1)."""
    policy, reference, roll, cfg = _pg_setup(ref_weight=0.3)
    params = list(policy.parameters())
    torch.manual_seed(5)
    pg_update(policy, reference, roll, _reward, cfg, _Backward())
    got = [p.grad.clone() for p in params]  # type: ignore[union-attr]
    for p in params:
        p.grad = None

    def terms() -> tuple[Tensor, Tensor, Tensor]:
        """Advantages, per-sample surrogates and anchors with the update's own draws."""
        torch.manual_seed(5)
        new = fpo_surrogate(policy, roll.x1, draw_fpo(roll.x1, cfg.pg_draws))
        reg = velocity_regulariser(new.v, reference, new.x_t, new.t, None).reshape(8, -1).mean(1)
        return group_advantages(_reward(roll.x1, None), 4), new.loss, reg

    # the anchor's gradient alone, for the finite differences
    _, _, reg = terms()
    (0.3 * reg.mean()).backward()
    anchor_grad = params[0].grad.clone()  # type: ignore[union-attr]
    for p in params:
        p.grad = None
    # the closed form with the same draws
    adv, surrogate, reg = terms()
    ((adv * surrogate).mean() + 0.3 * reg.mean()).backward()
    for a, b in zip(got, params, strict=True):
        assert torch.allclose(a, b.grad, rtol=1e-6, atol=1e-10)  # type: ignore[arg-type]
    assert float(torch.cat([g.flatten() for g in got]).norm()) > 1e-3

    def loss_at(p: Tensor, i: int, h: float) -> float:
        with torch.no_grad():
            p.view(-1)[i] += h
        torch.manual_seed(5)
        up = _Backward()
        pg_update(policy, reference, roll, _reward, cfg, up)
        with torch.no_grad():
            p.view(-1)[i] -= h
        for q in params:
            q.grad = None
        return up.terms["reg"]

    first = params[0]
    for i in range(0, first.numel(), max(1, first.numel() // 6)):
        fd = (loss_at(first, i, 1e-6) - loss_at(first, i, -1e-6)) / 2e-6
        assert fd == pytest.approx(float(anchor_grad.view(-1)[i]), rel=1e-5, abs=1e-9)
    assert float(anchor_grad.norm()) > 1e-3


class _PerSample(torch.nn.Module):
    """A field with one free velocity per sample of the roll-out (the limit of samples whose
    surrogate points nothing else visits, e.g. an outlier): row r of a call belongs to sample
    ``r // draws``."""

    def __init__(self, n: int, draws: int) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(n, 2, dtype=torch.float64))
        self.draws = draws

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.theta.repeat_interleave(self.draws, dim=0)


@pytest.mark.parametrize("ref_weight", [0.05, 2.0])
def test_negative_advantages_run_away_unless_the_anchor_outweighs_them(ref_weight: float) -> None:
    """One PG update per batch (ratio 1 each time, as with one PPO epoch) on isolated samples:
    sample i's objective is ``A_i E||v - (x1_i - x0)||^2 + ref_weight ||v - v_ref||^2``, concave
    in v when ``A_i < -ref_weight``. With the published 0.05 the velocity of such a sample grows
    geometrically; with ``ref_weight`` above every negative advantage (groups of 4: |A| <=
    sqrt(3)) each settles at the minimiser ``A_i x1_i / (A_i + ref_weight)`` (E x0 = 0,
    v_ref = 0)."""
    torch.manual_seed(0)
    x1 = torch.randn(8, 2, dtype=torch.float64)
    roll = Rollout(x0=torch.zeros_like(x1), x1=x1, cond=None)
    cfg = PolicyConfig(variant="pg", pg_group_size=4, pg_draws=64, ref_weight=ref_weight)
    field = _PerSample(8, cfg.pg_draws)
    zero = lambda x, t, c=None: torch.zeros_like(x)  # noqa: E731
    up = _Backward(list(field.parameters()), lr=2.0)
    for _ in range(300):
        pg_update(field, zero, roll, _reward, cfg, up)
    size = float(field.theta.detach().norm(dim=1).max())
    if ref_weight < 1:
        assert size > 1e3
        return
    adv = group_advantages(_reward(x1, None), 4).double()
    expect = adv[:, None] * x1 / (adv + ref_weight)[:, None]
    assert size < 20
    assert torch.allclose(field.theta.detach(), expect, atol=0.1 * float(expect.abs().max()))


def test_expert_samples_join_the_groups_they_were_rolled_out_for() -> None:
    """``pg_expert``: each group of rollouts gets the expert row its condition came from,
    last; the advantages are then taken over the group of ``pg_group_size + 1``, so an expert
    the discriminator prefers gets a positive advantage and its flow-matching loss is lowered."""
    spec = DataSpec((2,), num_classes=3)
    x = torch.arange(14, dtype=torch.float32).reshape(7, 2)
    batch = Batch(x, torch.tensor([2, 0, 1, 1, 0, 2, 2]))
    roll = Rollout(
        x0=torch.zeros(6, 2), x1=-torch.ones(6, 2), cond=torch.tensor([2, 2, 2, 0, 0, 0])
    )
    got, cond = with_teachers(roll, batch, 3)
    assert got[:, 0].tolist() == [-1, -1, -1, 0, -1, -1, -1, 2]
    assert cond is not None and cond.tolist() == [2, 2, 2, 2, 0, 0, 0, 0]
    # in a step: the experts (reward 1, rollouts 0) are pulled, the rollouts pushed
    policy = build_velocity_net(NetConfig(hidden=8, depth=1), spec)
    cfg = PolicyConfig(variant="pg", pg_group_size=3, pg_expert=True)
    seen: dict[str, Tensor] = {}

    def reward(x1: Tensor, c: Tensor | None) -> Tensor:
        seen["x"] = x1
        return (x1[:, 0] >= 0).float()

    pg_update(policy, policy, roll, reward, cfg, _Backward(), expert=batch)
    assert torch.equal(seen["x"], got)
    adv = group_advantages(reward(got, cond), 4)
    assert adv.reshape(2, 4)[:, -1].tolist() == pytest.approx([3**0.5, 3**0.5])
    with pytest.raises(ConfigError, match="pg_expert"):
        PolicyConfig(variant="pg", pg_estimator="sde", pg_expert=True)
