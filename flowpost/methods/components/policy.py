"""Training a flow's *deployed sampler* against a per-sample score: the policy update that
FAIL and reward fine-tuning share.

The policy is the flow ``v_theta``; its samples are what its fixed-step sampler (``nfe``,
``solver``) produces from noise. Two estimator families (``variant``):

* ``pd`` (pathwise derivative): minimise the mean of per-sample loss terms ``score(x_hat)``
  where ``x_hat`` depends differentiably on ``theta``: the whole checkpointed solve
  (``pd_estimator: pathwise``) or the local one-step estimate (``local``), see
  :mod:`~flowpost.methods.components.pathwise`;
* ``pg`` (policy gradient, black box): group-normalised advantages of a per-sample reward and
  a PPO-clipped ratio from the FPO surrogate (``pg_estimator: fpo``) or the transition
  likelihoods of an SDE roll-out (``sde``).

Both may add ``ref_weight * ||v_theta - v_ref||^2`` against the frozen starting model.

Example:
    >>> cfg = PolicyConfig(variant="pg", pg_group_size=4)
    >>> cfg.nfe, cfg.pg_estimator
    (4, 'fpo')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from flowpost.config import ConfigError, option
from flowpost.data.base import Batch
from flowpost.methods.base import MethodConfig, Updater
from flowpost.methods.components.anchors import sample_energy, sample_recall
from flowpost.methods.components.common import (
    Field,
    Rollout,
    flow_matching_loss,
    grid_shift,
    group_rows,
    rollout,
    rollout_noise,
    solver_grid,
)
from flowpost.methods.components.pathwise import (
    local_pd_points,
    pathwise_sample,
    velocity_regulariser,
)
from flowpost.methods.components.policy_gradient import (
    draw_fpo,
    fpo_surrogate,
    group_advantages,
    likelihood_ratio,
    ppo_clip_loss,
)
from flowpost.methods.components.sde import sde_log_prob, sde_rollout

__all__ = [
    "PolicyConfig",
    "Score",
    "Reward",
    "cold_start_update",
    "policy_rollout",
    "anchor_terms",
    "pd_terms",
    "with_teachers",
    "pg_update",
    "policy_update",
]

Score = Callable[[Tensor, "Tensor | None"], dict[str, Tensor]]
"""Per-sample loss terms ``(B,)`` of samples ``x`` (differentiable in ``x``), by name."""
Reward = Callable[[Tensor, "Tensor | None"], Tensor]
"""Per-sample reward ``(B,)`` of samples ``x`` (evaluated without gradients)."""


@dataclass
class PolicyConfig(MethodConfig):
    """The deployed sampler being trained and how its gradient is estimated."""

    variant: str = option("pd", "policy gradient estimator family", choices=["pd", "pg"])
    nfe: int = option(4, "network evaluations of the deployed sampler being trained", min=1)
    solver: str = option(
        "euler", "deployed fixed-step solver", choices=["euler", "midpoint", "heun", "rk4"]
    )
    lr: float | None = option(None, "learning rate of the policy (null: train.lr)", min=0.0)
    cold_start_steps: int = option(0, "SFT (flow-matching) steps on expert data first", min=0)
    ref_weight: float = option(
        0.0, "weight of ||v - v_ref||^2 against the frozen starting model", min=0.0
    )
    pd_estimator: str = option(
        "local",
        "PD: 'pathwise' differentiates the whole solve (exact), 'local' one Euler step",
        choices=["local", "pathwise"],
    )
    pd_timesteps: int = option(2, "PD (local): grid times drawn per sample", min=1)
    pd_t_min: float = option(
        0.02, "PD (local): clamp of t' = t + dt in the clean estimate", min=1e-6, max=1.0
    )
    pd_checkpoint: bool = option(
        True, "PD (pathwise): recompute each solver step in backward (flat memory)"
    )
    energy_weight: float = option(
        0.0,
        "PD: weight of the energy distance between the differentiable samples and the expert "
        "batch (an imitation anchor that repels clumps; components/anchors.py)",
        min=0.0,
    )
    recall_weight: float = option(
        0.0,
        "PD: weight of the mean distance from each expert sample to its nearest differentiable "
        "policy sample (an imitation anchor that covers the demonstrations; anchors.py)",
        min=0.0,
    )
    fm_weight: float = option(
        0.0,
        "weight of the flow-matching (SFT) loss on the expert batch in each policy update",
        min=0.0,
    )
    pg_estimator: str = option(
        "fpo",
        "PG ratio: 'fpo' flow-matching-loss surrogate (the paper's; with one epoch and the "
        "published anchor its field ran away in our 2-D runs, docs/methods/fail.md), 'sde' "
        "Euler-Maruyama log-probs (recipes/vectors/fail_pg.yaml)",
        choices=["fpo", "sde"],
    )
    pg_group_size: int = option(4, "PG: rollouts per condition (group)", min=2)
    pg_clip: float = option(0.2, "PG: PPO ratio clip epsilon", min=0.0)
    pg_epochs: int = option(1, "PG: policy updates per batch of rollouts", min=1)
    pg_draws: int = option(8, "PG (fpo): (t, x0) draws per sample of the surrogate", min=1)
    pg_adv_clip: float = option(5.0, "PG: advantage clip", min=0.0)
    pg_expert: bool = option(
        False,
        "PG (fpo): add one expert sample of the batch to each group of rollouts, scored and "
        "trained on like them (the authors' teacher samples in the policy update)",
    )
    pg_sde_noise: float = option(
        0.7, "PG (sde): diffusion scale a in g(t) = a sqrt(1 - t)", min=0.0
    )

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        if self.variant == "pg" and self.pg_estimator == "sde" and self.pg_sde_noise <= 0:
            raise ConfigError(
                "pg_estimator 'sde' needs pg_sde_noise > 0 (a deterministic step has no density)"
            )
        if self.variant == "pg" and self.pg_estimator == "sde" and self.pg_expert:
            raise ConfigError(
                "pg_expert needs pg_estimator 'fpo' (an expert sample has no SDE trajectory)"
            )


def cold_start_update(policy: Field, batch: Batch, update: Updater) -> dict[str, float]:
    """One SFT step: flow matching's loss on the expert batch (independent coupling, uniform
    times, linear path)."""
    return update.step("policy", fm=flow_matching_loss(policy, batch.x, batch.cond))


def policy_rollout(policy: Field, batch: Batch, cfg: PolicyConfig, *, grouped: bool) -> Rollout:
    """Samples of the deployed sampler for ``batch`` (grouped for PG); for ``pg_estimator:
    sde`` an Euler-Maruyama roll-out that keeps its trajectory."""
    group = cfg.pg_group_size if grouped else None
    if grouped and cfg.pg_estimator == "sde":
        x0, cond = rollout_noise(batch.x, batch.cond, group)
        grid = solver_grid(cfg.nfe, cfg.solver, batch.x.device, grid_shift(policy))
        traj = sde_rollout(policy, x0, grid, cfg.pg_sde_noise, cond)
        return Rollout(x0, traj.final, cond, states=traj)
    return rollout(policy, batch.x, batch.cond, cfg.nfe, cfg.solver, group_size=group)


def anchor_terms(
    x_hat: Tensor, cond: Tensor | None, expert: Batch, cfg: PolicyConfig
) -> dict[str, Tensor]:
    """The set anchors of differentiable samples ``x_hat`` to the ``expert`` batch:
    ``energy`` (``energy_weight``) and ``recall`` (``recall_weight``)."""
    terms: dict[str, Tensor] = {}
    if cfg.energy_weight > 0:
        terms["energy"] = cfg.energy_weight * sample_energy(x_hat, cond, expert.x, expert.cond)
    if cfg.recall_weight > 0:
        terms["recall"] = cfg.recall_weight * sample_recall(x_hat, cond, expert.x, expert.cond)
    return terms


def pd_terms(
    policy: Field,
    reference: Field,
    roll: Rollout,
    score: Score,
    cfg: PolicyConfig,
    expert: Batch | None = None,
) -> dict[str, Tensor]:
    """PD loss terms: the batch means of ``score``'s terms at the differentiable sample, the
    reference regulariser ``reg`` when ``ref_weight > 0`` and, given the ``expert`` batch, the
    anchors of :func:`anchor_terms` and ``fm`` (``fm_weight``)."""
    grid = solver_grid(cfg.nfe, cfg.solver, device=roll.x0.device, shift=grid_shift(policy))
    terms: dict[str, Tensor] = {}
    if cfg.pd_estimator == "pathwise":
        x_hat = pathwise_sample(
            policy, roll.x0, cfg.nfe, cfg.solver, roll.cond, checkpoint=cfg.pd_checkpoint
        )
        terms.update({k: v.mean() for k, v in score(x_hat, roll.cond).items()})
        if expert is not None:
            terms.update(anchor_terms(x_hat, roll.cond, expert, cfg))
        # the regulariser's points: the straight line between the noise and the (detached)
        # sample, at the grid times, as for the local estimator
        x1 = x_hat.detach()
    else:
        x1 = roll.x1
    if cfg.pd_estimator == "local" or cfg.ref_weight > 0:
        pts = local_pd_points(
            policy, roll.x0, x1, grid, roll.cond, mc_timesteps=cfg.pd_timesteps, t_min=cfg.pd_t_min
        )
        if cfg.pd_estimator == "local":
            terms.update({k: v.mean() for k, v in score(pts.x_hat, pts.cond).items()})
            if expert is not None:
                terms.update(anchor_terms(pts.x_hat, pts.cond, expert, cfg))
        if cfg.ref_weight > 0:
            reg = velocity_regulariser(pts.v, reference, pts.x_t, pts.t, pts.cond)
            terms["reg"] = cfg.ref_weight * reg.mean()
    if expert is not None and cfg.fm_weight > 0:
        terms["fm"] = cfg.fm_weight * flow_matching_loss(policy, expert.x, expert.cond)
    return terms


def with_teachers(roll: Rollout, expert: Batch, group_size: int) -> tuple[Tensor, Tensor | None]:
    """The grouped samples of ``roll`` with one expert sample appended to each group (the
    expert row the group was rolled out for, :func:`~.common.group_rows`): groups of
    ``group_size + 1``, the expert last; the conditions likewise."""
    groups = roll.x1.shape[0] // group_size

    def join(rolled: Tensor, teacher: Tensor) -> Tensor:
        a = rolled.reshape(groups, group_size, *rolled.shape[1:])
        b = teacher.reshape(groups, 1, *teacher.shape[1:]).to(rolled.dtype)
        return torch.cat([a, b], 1).reshape(groups * (group_size + 1), *rolled.shape[1:])

    x = join(roll.x1, group_rows(expert.x, group_size))
    cond = None if roll.cond is None else join(roll.cond, roll.cond[::group_size])
    return x, cond


def pg_update(
    policy: Field,
    reference: Field,
    roll: Rollout,
    reward: Reward,
    cfg: PolicyConfig,
    update: Updater,
    expert: Batch | None = None,
) -> dict[str, float]:
    """PPO epochs on one batch of grouped rollouts (old policy = the policy now); given the
    ``expert`` batch, each epoch adds the ``fm`` anchor (``fm_weight``)."""
    x1, cond, group = roll.x1, roll.cond, cfg.pg_group_size
    if cfg.pg_expert and expert is not None:
        x1, cond = with_teachers(roll, expert, group)
        group += 1
    rewards = reward(x1, cond)
    adv = group_advantages(rewards, group, cfg.pg_adv_clip)
    logs: dict[str, float] = {"pg/reward": float(rewards.mean())}
    fpo = cfg.pg_estimator == "fpo"
    if fpo:
        draws = draw_fpo(x1, cfg.pg_draws)
        with torch.no_grad():
            old = -fpo_surrogate(policy, x1, draws, cond).loss
    else:
        assert roll.states is not None
        with torch.no_grad():
            old = sde_log_prob(policy, roll.states, cfg.pg_sde_noise, roll.cond)
    for epoch in range(cfg.pg_epochs):
        terms: dict[str, Tensor] = {}
        if fpo:
            new = fpo_surrogate(policy, x1, draws, cond)
            ratio = likelihood_ratio(-new.loss, old)
            reg_points = new
        else:
            assert roll.states is not None
            ratio = likelihood_ratio(
                sde_log_prob(policy, roll.states, cfg.pg_sde_noise, roll.cond), old
            )
        terms["ppo"] = ppo_clip_loss(ratio, adv, cfg.pg_clip)
        if cfg.ref_weight > 0:
            if not fpo:
                reg_points = fpo_surrogate(policy, x1, draw_fpo(x1, 1), cond)
            p = reg_points
            reg = velocity_regulariser(p.v, reference, p.x_t, p.t, p.cond)
            terms["reg"] = cfg.ref_weight * reg.mean()
        if expert is not None and cfg.fm_weight > 0:
            terms["fm"] = cfg.fm_weight * flow_matching_loss(policy, expert.x, expert.cond)
        if epoch == 0:
            logs["pg/ratio_first"] = float(ratio.detach().mean())
        logs.update(update.step("policy", **terms))
    logs["pg/ratio_last"] = float(ratio.detach().mean())
    return logs


def policy_update(
    policy: Field,
    reference: Field,
    batch: Batch,
    cfg: PolicyConfig,
    update: Updater,
    *,
    score: Score,
    reward: Reward,
    pd_rollout: Rollout | None = None,
    extra_pd_terms: Callable[[], dict[str, Tensor]] | None = None,
) -> dict[str, float]:
    """One policy update of the deployed sampler: a PD step on ``score`` (reusing
    ``pd_rollout`` if the policy has not moved since it was drawn; ``extra_pd_terms`` adds
    terms after the score's) or PPO epochs on ``reward``."""
    if cfg.variant == "pd":
        roll = (
            pd_rollout
            if pd_rollout is not None
            else policy_rollout(policy, batch, cfg, grouped=False)
        )
        terms = pd_terms(policy, reference, roll, score, cfg, expert=batch)
        if extra_pd_terms is not None:
            terms.update(extra_pd_terms())
        return update.step("policy", **terms)
    roll = policy_rollout(policy, batch, cfg, grouped=True)
    return pg_update(policy, reference, roll, reward, cfg, update, expert=batch)
