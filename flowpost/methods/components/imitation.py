"""The discriminator side of adversarial imitation: expert samples (label 1) against samples
of the policy's deployed sampler (label 0), shared by FAIL and by reward + FAIL.

Schedule (:func:`imitation_phase`): ``cold_start`` SFT steps, then ``disc_warmup`` steps that
train only the discriminator, then ``adversarial`` steps: ``disc_steps`` discriminator updates
followed by one policy update (:func:`adversarial_step`).

The discriminator is any ``nn.Module`` whose ``forward(x, cond)`` returns one logit per sample;
:func:`build_imitation_discriminator` takes a given module, a ``"module:function"`` factory
called as ``factory(spec)``, or builds the configured network.

Example:
    >>> [imitation_phase(s, cold_start_steps=1, warmup_steps=2) for s in range(4)]
    ['cold_start', 'disc_warmup', 'disc_warmup', 'adversarial']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flowpost.config import ConfigError, option
from flowpost.data.base import Batch, DataSpec
from flowpost.flows import random
from flowpost.flows.distributed import mean_scalars
from flowpost.methods.base import MethodConfig, OptimizerSpec, Updater, frozen
from flowpost.methods.components.adversarial import (
    adversarial_policy_loss,
    discriminator_accuracy,
    discriminator_loss,
    r1_penalty,
)
from flowpost.methods.components.common import (
    Field,
    Rollout,
    grid_shift,
    load_object,
    rollout,
    solver_grid,
)
from flowpost.methods.components.guards import DiscriminatorGuard
from flowpost.methods.components.pathwise import local_pd_points
from flowpost.methods.components.policy import PolicyConfig, cold_start_update
from flowpost.nets.config import DiscriminatorConfig
from flowpost.nets.factory import build_discriminator

__all__ = [
    "ImitationConfig",
    "check_betas",
    "imitation_phase",
    "build_imitation_discriminator",
    "imitation_guard",
    "discriminator_optimizer",
    "discriminator_terms",
    "discriminator_round",
    "expert_pd_terms",
    "adversarial_step",
]


def check_betas(values: list[float] | None, key: str = "disc_betas") -> tuple[float, float] | None:
    """Adam betas from a config list (``None`` stays ``None``); a bad value names ``key``.

    >>> check_betas([0.5, 0.9])
    (0.5, 0.9)
    """
    if values is None:
        return None
    if len(values) != 2 or not all(0.0 <= b < 1.0 for b in values):
        raise ConfigError(f"{key}: expected two numbers in [0, 1), got {values}")
    return (float(values[0]), float(values[1]))


@dataclass
class ImitationConfig(MethodConfig):
    """The discriminator of adversarial imitation and its training."""

    disc_warmup_steps: int = option(25, "discriminator-only steps after the cold start", min=0)
    disc_steps: int = option(1, "discriminator updates per policy update", min=1)
    disc_lr: float | None = option(
        2e-6, "discriminator learning rate (published: 2e-6; null: train.lr)", min=0.0
    )
    disc_betas: list[float] | None = option(
        None, "discriminator Adam betas (null: train.betas); GAN practice: [0.5, 0.9]"
    )
    disc_eps: float = option(
        1e-8,
        "discriminator Adam eps (AdamW's 1e-8); larger (1e-5 on the 2-D toys) keeps gradient "
        "entries near zero, whose float rounding depends on the batch split, from taking "
        "full-size Adam steps (N processes then follow one process)",
        min=1e-12,
    )
    gp_weight: float = option(0.0, "R1 gradient penalty gamma on expert samples", min=0.0)
    discriminator: DiscriminatorConfig = option(
        default_factory=DiscriminatorConfig, help="the built-in discriminator network"
    )
    discriminator_factory: str | None = option(
        None, "'module:function' returning your own nn.Module D(x, cond) -> logits (B,)"
    )
    pd_expert: bool = option(
        False, "PD: also push re-noised expert samples through the local policy loss"
    )
    disc_guard: bool = option(
        True,
        "pause discriminator steps (and double the R1 penalty) while its running accuracy on "
        "both halves exceeds disc_guard_acc; warns once",
    )
    disc_guard_acc: float = option(
        0.9, "accuracy above which the discriminator counts as dominating", min=0.5, max=1.0
    )

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        check_betas(self.disc_betas)


def imitation_phase(step: int, *, cold_start_steps: int, warmup_steps: int) -> str:
    """``cold_start``, ``disc_warmup`` or ``adversarial`` at training iteration ``step``."""
    if step < cold_start_steps:
        return "cold_start"
    if step < cold_start_steps + warmup_steps:
        return "disc_warmup"
    return "adversarial"


def imitation_guard(cfg: ImitationConfig) -> DiscriminatorGuard | None:
    """The discriminator guard ``cfg`` asks for (``disc_guard``), or None."""
    if not cfg.disc_guard:
        return None
    return DiscriminatorGuard(threshold=cfg.disc_guard_acc, release=min(0.75, cfg.disc_guard_acc))


def build_imitation_discriminator(
    cfg: ImitationConfig, spec: DataSpec, given: nn.Module | None = None
) -> nn.Module:
    """``given``, else the module ``cfg.discriminator_factory(spec)`` returns, else the
    configured built-in discriminator ``D(x, cond) -> (B,)``."""
    if given is not None:
        return given
    if cfg.discriminator_factory:
        factory = load_object(cfg.discriminator_factory, "discriminator_factory")
        module = factory(spec)
        if not isinstance(module, nn.Module):
            raise ValueError(
                f"discriminator_factory {cfg.discriminator_factory!r} returned "
                f"{type(module).__name__}, not an nn.Module mapping (x, cond) -> logits"
            )
        return module
    return build_discriminator(cfg.discriminator, spec)


def discriminator_optimizer(discriminator: nn.Module, cfg: ImitationConfig) -> OptimizerSpec:
    """The discriminator's optimiser: its own lr and betas, off the run's lr schedule."""
    return OptimizerSpec(
        list(discriminator.parameters()),
        lr=cfg.disc_lr,
        betas=check_betas(cfg.disc_betas),
        schedule=False,
        eps=cfg.disc_eps,
    )


def discriminator_terms(
    discriminator: Field, batch: Batch, fake: Rollout, gp_weight: float
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """BCE (+ R1 with weight ``gp_weight / 2``) of expert ``batch`` vs policy samples ``fake``;
    also returns the real and fake logits (detached)."""
    real_logits = discriminator(batch.x, batch.cond)
    fake_logits = discriminator(fake.x1.detach(), fake.cond)
    terms = {"bce": discriminator_loss(real_logits, fake_logits)}
    if gp_weight > 0:
        terms["r1"] = 0.5 * gp_weight * r1_penalty(discriminator, batch.x, batch.cond)
    return terms, real_logits.detach(), fake_logits.detach()


def discriminator_round(
    discriminator: Field,
    policy: Field,
    batch: Batch,
    cfg: ImitationConfig,
    nfe: int,
    solver: str,
    update: Updater,
    rounds: int,
    guard: DiscriminatorGuard | None = None,
) -> tuple[dict[str, float], Rollout]:
    """``rounds`` discriminator updates, each on a fresh roll-out of the policy; returns the
    logs and the first roll-out (the policy has not moved since: a PD step may reuse it).
    With a ``guard``, a step it pauses only measures the accuracy, and the gradient penalty
    is scaled by ``guard.gp_scale``."""
    logs: dict[str, float] = {}
    first: Rollout | None = None
    for _ in range(rounds):
        fake = rollout(policy, batch.x, batch.cond, nfe, solver)
        if first is None:
            first = fake
        if guard is not None and not guard.allow_update():
            with torch.no_grad():
                real_logits = discriminator(batch.x, batch.cond)
                fake_logits = discriminator(fake.x1, fake.cond)
        else:
            gp = cfg.gp_weight * (1.0 if guard is None else guard.gp_scale)
            terms, real_logits, fake_logits = discriminator_terms(discriminator, batch, fake, gp)
            logs.update(update.step("discriminator", **terms))
        # the global batch's accuracy (a mean of the processes' equal slices), so every
        # process's guard takes the decision one process would take
        acc = mean_scalars(discriminator_accuracy(real_logits, fake_logits))
        logs.update(acc)
        if guard is not None:
            guard.observe(acc["discriminator/acc_real"], acc["discriminator/acc_fake"])
    if guard is not None:
        logs.update(guard.logs())
    assert first is not None
    return logs, first


def expert_pd_terms(
    policy: Field,
    discriminator: Field,
    batch: Batch,
    cfg: PolicyConfig,
    weight: float,
) -> dict[str, Tensor]:
    """``adv_expert``: re-noised expert samples through the local estimator, scored by the
    discriminator (``weight * softplus(-D(x_hat))``)."""
    grid = solver_grid(cfg.nfe, cfg.solver, device=batch.x.device, shift=grid_shift(policy))
    noise = random.randn_like(batch.x)
    pts = local_pd_points(
        policy, noise, batch.x, grid, batch.cond, mc_timesteps=cfg.pd_timesteps, t_min=cfg.pd_t_min
    )
    logits = discriminator(pts.x_hat, pts.cond)
    return {"adv_expert": weight * adversarial_policy_loss(logits).mean()}


def adversarial_step(
    phase: str,
    batch: Batch,
    update: Updater,
    *,
    policy: Field,
    discriminator: nn.Module | None,
    cfg: ImitationConfig,
    nfe: int,
    solver: str,
    policy_step: Callable[[Rollout | None], dict[str, float]],
    guard: DiscriminatorGuard | None = None,
) -> dict[str, float]:
    """One iteration of the schedule: an SFT step (``cold_start``), discriminator updates
    (``disc_warmup``: one; ``adversarial``: ``disc_steps``), then, when ``adversarial``, the
    policy step (``policy_step(first_rollout)``, discriminator frozen). Without a
    discriminator every step after the cold start is a policy step."""
    if phase == "cold_start":
        return cold_start_update(policy, batch, update)
    if discriminator is None:
        return policy_step(None)
    rounds = 1 if phase == "disc_warmup" else cfg.disc_steps
    logs, first = discriminator_round(
        discriminator, policy, batch, cfg, nfe, solver, update, rounds, guard
    )
    if phase == "adversarial":
        with frozen(discriminator):
            logs.update(policy_step(first))
    return logs
