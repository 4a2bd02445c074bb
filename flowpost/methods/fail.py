"""FAIL: Flow Matching Adversarial Imitation Learning (METHODS.md section 1).

A pretrained flow ``v_theta`` (the *policy*) is post-trained toward a set of expert samples
without any reward: a discriminator ``D_phi(x, cond) -> logit`` learns to tell expert samples
(label 1) from samples of the policy's *deployed* sampler (label 0), and the policy is
trained to fool it. Because the policy is scored on what its few-step sampler actually
produces, FAIL corrects the sampler's own discretisation error, which the flow-matching
(SFT) loss never sees.

Schedule (see :meth:`FAILMethod.phase`):

1. ``cold_start``: ``cold_start_steps`` steps of the flow-matching loss on the expert data;
2. ``disc_warmup``: ``disc_warmup_steps`` discriminator-only steps;
3. ``adversarial``: each step, ``disc_steps`` discriminator updates then one policy update.

Policy objectives (``variant``):

* ``pd`` (pathwise derivative), minimising ``softplus(-D(x_hat)) = -log sigmoid(D(x_hat))``:

  - ``pd_estimator="pathwise"``: ``x_hat`` is the ODE solution from noise with gradients
    through every solver step (checkpointed per step, so memory is flat in the step count);
  - ``pd_estimator="local"``: roll out ``x1`` without gradients keeping its noise ``x0``, pick
    ``mc_timesteps`` grid times ``t`` per sample, re-noise ``x_t = (1-t) x0 + t x1``, take one
    differentiable Euler step of size ``dt`` and form the clean estimate
    ``x_hat = (x_{t+dt} - (1-t') x0) / t'`` with ``t' = max(t + dt, local_t_min)``
    (:func:`local_clean_estimate`). If ``v`` is the straight-line velocity ``x1 - x0``,
    ``x_hat = x1`` exactly.

* ``pg`` (policy gradient, black box): reward ``r(x) = softplus(D(x))``, group-normalised
  advantages (:func:`group_advantages`) and a PPO-clipped loss (:func:`ppo_clip_loss`) on a
  likelihood ratio from either the flow-matching surrogate (``pg_estimator="fpo"``,
  :func:`fpo_surrogate`) or the Gaussian transition log-densities of an Euler-Maruyama
  rollout (``pg_estimator="sde"``, Flow-GRPO style; :func:`sde_log_prob`).

Both may add ``beta * ||v_theta - v_ref||^2`` against the frozen starting model (the
``reference`` role).

Groups for PG: with class labels, ``batch_size // group_size`` labels of the expert batch are
each rolled out ``group_size`` times, so advantages compare rollouts of the same condition.
Without labels every rollout has "the same condition", and groups are simply consecutive
chunks of ``group_size`` independent rollouts of the batch (group normalisation is then a
per-chunk standardisation of the reward).

Your own discriminator: any ``nn.Module`` whose ``forward(x, cond)`` returns one logit per
sample ``(B,)`` works. Pass it as ``FAILMethod(config, spec, net, discriminator=my_module)``,
or name a factory in the config, ``discriminator_factory: "my_pkg.my_mod:make_disc"``, a
function called as ``make_disc(spec)`` that returns the module (this path works from YAML).

Every building block below is a plain function, reused by :mod:`flowpost.methods.reward`.

Example:
    >>> import torch
    >>> x0, x1 = torch.zeros(2, 2), torch.ones(2, 2)
    >>> t, dt = torch.tensor([0.0, 0.5]), torch.tensor([0.25, 0.25])
    >>> x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
    >>> x_next = x_t + dt[:, None] * (x1 - x0)           # exact straight-line step
    >>> local_clean_estimate(x_next, x0, t + dt).tolist()  # recovers x1
    [[1.0, 1.0], [1.0, 1.0]]
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowpost.config import option
from flowpost.data.base import Batch, DataSpec
from flowpost.flows.couplings import IndependentCoupling
from flowpost.flows.paths import LinearPath, expand_like
from flowpost.flows.sde import euler_maruyama, transition_log_prob
from flowpost.flows.solvers import Trajectory, sample, steps_for_nfe
from flowpost.flows.timesteps import UniformTime, time_grid
from flowpost.methods.base import (
    Method,
    MethodConfig,
    OptimizerSpec,
    Updater,
    frozen,
    register_method,
)
from flowpost.methods.flow_matching import flow_matching_loss
from flowpost.nets.config import DiscriminatorConfig, NetConfig
from flowpost.nets.factory import build_discriminator, build_velocity_net

__all__ = [
    "FAILConfig",
    "FAILMethod",
    "Rollout",
    "discriminator_loss",
    "r1_penalty",
    "adversarial_policy_loss",
    "fail_reward",
    "local_clean_estimate",
    "local_pd_points",
    "pathwise_sample",
    "velocity_regulariser",
    "group_advantages",
    "ppo_clip_loss",
    "FPODraws",
    "draw_fpo",
    "fpo_surrogate",
    "sde_sigma",
    "sde_drift",
    "sde_log_prob",
    "cold_start_loss",
    "sde_rollout",
    "solver_grid",
    "load_object",
    "per_sample_mse",
]

Field = Callable[..., Tensor]


# --------------------------------------------------------------------------- small helpers


def per_sample_mse(a: Tensor, b: Tensor) -> Tensor:
    """``||a - b||^2 / n`` per sample (mean over the non-batch dimensions), shape ``(B,)``."""
    return ((a - b) ** 2).flatten(1).mean(1)


def load_object(path: str, what: str) -> Any:
    """Import ``"package.module:attribute"``; errors say what was wrong and how to fix it."""
    if ":" not in path:
        raise ValueError(
            f"{what} {path!r} must look like 'package.module:function' (module path, a colon, "
            "then the name inside the module)"
        )
    module_name, attr = path.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"{what} {path!r}: cannot import module {module_name!r} ({err}); "
            "check the spelling and that it is on PYTHONPATH"
        ) from None
    if not hasattr(module, attr):
        raise ValueError(f"{what} {path!r}: module {module_name!r} has no attribute {attr!r}")
    return getattr(module, attr)


def solver_grid(
    nfe: int, solver: str = "euler", device: torch.device | str | None = None
) -> Tensor:
    """The step times ``0 = t_0 < ... < t_K = 1`` of the deployed fixed-step sampler.

    ``K = nfe // evaluations_per_step(solver)`` (Euler 1, midpoint/Heun 2, RK4 4).

    >>> solver_grid(4, "euler").tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    >>> solver_grid(4, "midpoint").tolist()
    [0.0, 0.5, 1.0]
    """
    return time_grid(steps_for_nfe(nfe, solver), device=device)


def _sample(
    model: Field,
    x0: Tensor,
    nfe: int,
    solver: str,
    cond: Tensor | None,
    *,
    grad: bool = False,
    checkpoint: bool = False,
) -> Tensor:
    out = sample(model, x0, nfe, solver, cond=cond, grad=grad, checkpoint=checkpoint)
    assert isinstance(out, Tensor)
    return out


# --------------------------------------------------------------------------- discriminator


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Binary cross-entropy, expert label 1, policy label 0: ``mean softplus(-D(real)) +
    mean softplus(D(fake))`` (the sum of the two halves' mean BCE).

    >>> round(float(discriminator_loss(torch.zeros(3), torch.zeros(3))), 4)  # 2 log 2
    1.3863
    """
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def r1_penalty(discriminator: Field, x: Tensor, cond: Tensor | None) -> Tensor:
    """``E ||grad_x D(x)||^2`` on expert samples (R1; the caller multiplies by ``gamma / 2``)."""
    x = x.detach().requires_grad_(True)
    logits = discriminator(x, cond)
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def adversarial_policy_loss(logits: Tensor) -> Tensor:
    """Per-sample ``-log sigmoid(D(x_hat)) = softplus(-D(x_hat))`` (the policy wants label 1).

    >>> adversarial_policy_loss(torch.tensor([0.0])).tolist()  # log 2
    [0.6931471824645996]
    """
    return F.softplus(-logits)


def fail_reward(logits: Tensor) -> Tensor:
    """FAIL-PG reward ``r = -log(1 - sigmoid(D)) = softplus(D)``, high for expert-like samples.

    >>> fail_reward(torch.tensor([0.0])).tolist()
    [0.6931471824645996]
    """
    return F.softplus(logits)


# --------------------------------------------------------------------------- FAIL-PD


def pathwise_sample(
    policy: Field,
    x0: Tensor,
    nfe: int,
    solver: str,
    cond: Tensor | None = None,
    *,
    checkpoint: bool = True,
) -> Tensor:
    """The deployed sampler's output from fixed noise ``x0``, differentiable in the policy's
    parameters through every solver step (``checkpoint`` recomputes each step in backward so
    memory stays flat in the number of steps)."""
    return _sample(policy, x0, nfe, solver, cond, grad=True, checkpoint=checkpoint)


def local_clean_estimate(x_next: Tensor, x0: Tensor, t_next: Tensor) -> Tensor:
    """One-step clean estimate ``x_hat = (x_{t'} - (1 - t') x0) / t'`` on the straight line
    through ``x0``; ``t_next`` ``(B,)`` must already be clamped away from 0."""
    te = expand_like(t_next, x0).to(x0.dtype)
    return (x_next - (1 - te) * x0) / te


@dataclass
class LocalPoints:
    """The differentiable pieces of the local estimator, all ``(B * M, ...)``."""

    x0: Tensor
    x1: Tensor
    t: Tensor
    x_t: Tensor
    v: Tensor
    x_hat: Tensor
    cond: Tensor | None


def _repeat(x: Tensor | None, m: int) -> Tensor | None:
    return None if x is None else x.repeat_interleave(m, dim=0)


def local_pd_points(
    policy: Field,
    x0: Tensor,
    x1: Tensor,
    grid: Tensor,
    cond: Tensor | None = None,
    *,
    mc_timesteps: int = 2,
    t_min: float = 0.02,
    step_index: Tensor | None = None,
) -> LocalPoints:
    """The local one-step estimator's ``x_hat`` for rollouts ``x0 -> x1`` (no grad needed on
    them): each sample is repeated ``mc_timesteps`` times, each copy gets a step ``k`` of
    ``grid`` (uniform over the steps, or ``step_index`` ``(B * M,)``), ``x_t`` on the straight
    line, one Euler step ``x_t + dt v(x_t, t)`` (with grad) and the clean estimate.
    """
    x0 = x0.detach().repeat_interleave(mc_timesteps, dim=0)
    x1 = x1.detach().repeat_interleave(mc_timesteps, dim=0)
    cond = _repeat(cond, mc_timesteps)
    steps = grid.numel() - 1
    if step_index is None:
        step_index = torch.randint(0, steps, (x0.shape[0],), device=x0.device)
    grid = grid.to(device=x0.device, dtype=x0.dtype)
    t, t_next = grid[step_index], grid[step_index + 1]
    dt = t_next - t
    te = expand_like(t, x0)
    x_t = (1 - te) * x0 + te * x1
    v = policy(x_t, t, cond)
    x_next = x_t + expand_like(dt, x0) * v
    x_hat = local_clean_estimate(x_next, x0, t_next.clamp_min(t_min))
    return LocalPoints(x0=x0, x1=x1, t=t, x_t=x_t, v=v, x_hat=x_hat, cond=cond)


def velocity_regulariser(
    v: Tensor, reference: Field, x_t: Tensor, t: Tensor, cond: Tensor | None
) -> Tensor:
    """Per-sample ``||v - v_ref(x_t, t)||^2 / n`` against the frozen reference, ``(B,)``."""
    with torch.no_grad():
        v_ref = reference(x_t, t, cond)
    return per_sample_mse(v, v_ref)


def cold_start_loss(policy: Field, x1: Tensor, cond: Tensor | None = None) -> Tensor:
    """The SFT cold start: flow matching's loss on expert ``x1`` (independent coupling,
    uniform ``t``, linear path), from :mod:`flowpost.methods.flow_matching`."""
    assert isinstance(policy, nn.Module)
    return flow_matching_loss(
        policy, x1, cond, coupling=IndependentCoupling(), time_sampler=UniformTime(),
        path=LinearPath(),
    )  # fmt: skip


# --------------------------------------------------------------------------- FAIL-PG


def group_advantages(rewards: Tensor, group_size: int, clip: float = 5.0) -> Tensor:
    """GRPO advantages ``(r - mean_group) / (std_group + 1e-8)``, clipped to ``+-clip``.

    ``rewards`` ``(N,)`` holds ``N / group_size`` consecutive groups; ``std`` is the population
    standard deviation, so each group's advantages have mean 0 and variance 1 (before the
    clip, which only bites for groups larger than ``clip**2 + 1``).

    >>> group_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), 2).tolist()
    [-1.0, 1.0, 0.0, 0.0]
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 to compare rollouts, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be (N,) with N a multiple of group_size={group_size}, "
            f"got shape {tuple(rewards.shape)}"
        )
    r = rewards.reshape(-1, group_size)
    mean = r.mean(1, keepdim=True)
    std = r.std(1, correction=0, keepdim=True)
    return ((r - mean) / (std + 1e-8)).clamp(-clip, clip).reshape(-1)


def ppo_clip_loss(ratio: Tensor, advantages: Tensor, eps: float) -> Tensor:
    """PPO's clipped objective as a loss: ``mean(max(-rho A, -clip(rho, 1-eps, 1+eps) A))``.

    >>> float(ppo_clip_loss(torch.tensor([1.5]), torch.tensor([2.0]), 0.2))  # clipped at 1.2
    -2.4000000953674316
    """
    unclipped = -ratio * advantages
    clipped = -ratio.clamp(1 - eps, 1 + eps) * advantages
    return torch.maximum(unclipped, clipped).mean()


@dataclass
class FPODraws:
    """The ``M`` draws ``(t, x0)`` per sample of the FPO surrogate, drawn once and shared by
    the old and the new policy: ``t`` ``(N * M,)``, ``noise`` ``(N * M, ...)``."""

    t: Tensor
    noise: Tensor
    draws: int


def draw_fpo(x1: Tensor, draws: int) -> FPODraws:
    """Draw ``draws`` times and noises per sample of ``x1`` (global RNG)."""
    n = x1.shape[0] * draws
    t = torch.rand(n, device=x1.device, dtype=x1.dtype)
    noise = torch.randn((n, *x1.shape[1:]), device=x1.device, dtype=x1.dtype)
    return FPODraws(t=t, noise=noise, draws=draws)


@dataclass
class FPOTerms:
    """Per-sample surrogate ``l`` ``(N,)`` and the velocities/points used (for regularisers)."""

    loss: Tensor
    v: Tensor
    x_t: Tensor
    t: Tensor
    cond: Tensor | None


def fpo_surrogate(
    policy: Field, x1: Tensor, draws: FPODraws, cond: Tensor | None = None
) -> FPOTerms:
    """Flow Policy Optimisation's likelihood surrogate per sample:
    ``l(x1) = mean_m ||v(x_t^m, t_m) - (x1 - x0^m)||^2 / n`` with ``x_t = (1-t) x0 + t x1``.

    ``exp(l_old - l_new)`` stands in for the likelihood ratio ``p_new(x1) / p_old(x1)``
    (a lower flow-matching loss on ``x1`` means a higher ELBO of ``x1``).
    """
    m = draws.draws
    x1r = x1.detach().repeat_interleave(m, dim=0)
    condr = _repeat(cond, m)
    te = expand_like(draws.t, x1r)
    x_t = (1 - te) * draws.noise + te * x1r
    v = policy(x_t, draws.t, condr)
    per = per_sample_mse(v, x1r - draws.noise).reshape(x1.shape[0], m).mean(1)
    return FPOTerms(loss=per, v=v, x_t=x_t, t=draws.t, cond=condr)


def sde_sigma(t: Tensor, noise_level: float) -> Tensor:
    """Diffusion coefficient ``g(t) = a sqrt(1 - t)``: largest at the noise end, 0 at data."""
    return noise_level * (1 - t).clamp_min(0).sqrt()


def sde_drift(policy: Field, noise_level: float) -> Field:
    """Drift whose Euler-Maruyama SDE has the flow's marginals:
    ``v + g^2/2 * score`` with the linear-path score ``-(x - t v) / (1 - t)``, so
    ``b = v - a^2 (x - t v) / 2`` for ``g = a sqrt(1 - t)`` (no singularity on [0, 1])."""

    def drift(x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        v = policy(x, t, cond)
        te = expand_like(t, x).to(x.dtype)
        return v - 0.5 * noise_level**2 * (x - te * v)

    return drift


def sde_rollout(
    policy: Field, x0: Tensor, grid: Tensor, noise_level: float, cond: Tensor | None = None
) -> Trajectory:
    """Euler-Maruyama trajectory of the marginal-preserving SDE (:func:`sde_drift`), no grad."""
    result = euler_maruyama(
        sde_drift(policy, noise_level), lambda t: float(sde_sigma(torch.tensor(t), noise_level)),
        x0, grid, cond=cond, return_trajectory=True,
    )  # fmt: skip
    assert result.trajectory is not None
    return result.trajectory


def sde_log_prob(
    policy: Field, trajectory: Trajectory, noise_level: float, cond: Tensor | None = None
) -> Tensor:
    """Sum over steps of the Gaussian transition log-densities
    ``log N(x_{k+1}; x_k + b(x_k, t_k) dt, g(t_k)^2 dt)`` of a stored trajectory under
    ``policy``'s drift: ``(B,)``, differentiable in the policy (Flow-GRPO's likelihood)."""
    return transition_log_prob(
        sde_drift(policy, noise_level),
        lambda t: float(sde_sigma(torch.tensor(t), noise_level)),
        trajectory,
        cond=cond,
    ).sum(1)


# --------------------------------------------------------------------------- the method


def _betas(values: list[float] | None) -> tuple[float, float] | None:
    if values is None:
        return None
    if len(values) != 2 or not all(0.0 <= b < 1.0 for b in values):
        raise ValueError(f"disc_betas must be two numbers in [0, 1), got {values}")
    return (float(values[0]), float(values[1]))


@dataclass
class FAILConfig(MethodConfig):
    """FAIL's settings (the ``method`` section of a recipe)."""

    name: str = option("fail", "method name")
    variant: str = option("pd", "policy gradient estimator family", choices=["pd", "pg"])
    pd_estimator: str = option(
        "local",
        "FAIL-PD: 'pathwise' differentiates the whole solve (exact), 'local' one Euler step",
        choices=["local", "pathwise"],
    )
    pg_estimator: str = option(
        "fpo",
        "FAIL-PG ratio: 'fpo' flow-matching-loss surrogate, 'sde' Euler-Maruyama log-probs",
        choices=["fpo", "sde"],
    )
    nfe: int = option(4, "network evaluations of the deployed sampler being trained", min=1)
    solver: str = option(
        "euler", "deployed fixed-step solver", choices=["euler", "midpoint", "heun", "rk4"]
    )
    cold_start_steps: int = option(0, "SFT (flow-matching) steps on expert data first", min=0)
    disc_warmup_steps: int = option(25, "discriminator-only steps after the cold start", min=0)
    disc_steps: int = option(1, "discriminator updates per policy update", min=1)
    disc_lr: float = option(2e-6, "discriminator learning rate (published: 2e-6)", min=0.0)
    policy_lr: float | None = option(None, "policy learning rate (null: train.lr)", min=0.0)
    disc_betas: list[float] | None = option(
        None, "discriminator Adam betas (null: train.betas); GAN practice: [0.5, 0.9]"
    )
    r1_weight: float = option(0.0, "R1 gradient penalty gamma on expert samples", min=0.0)
    discriminator: DiscriminatorConfig = option(
        default_factory=DiscriminatorConfig, help="the built-in discriminator network"
    )
    discriminator_factory: str | None = option(
        None, "'module:function' returning your own nn.Module D(x, cond) -> logits (B,)"
    )
    mc_timesteps: int = option(2, "local estimator: grid times drawn per sample", min=1)
    local_t_min: float = option(
        0.02, "local estimator: clamp of t' = t + dt in the clean estimate", min=1e-6, max=1.0
    )
    checkpoint: bool = option(True, "pathwise estimator: recompute each solver step in backward")
    beta: float = option(0.0, "weight of ||v - v_ref||^2 against the frozen start", min=0.0)
    expert_in_policy_loss: bool = option(
        False, "PD: also push re-noised expert samples through the local policy loss"
    )
    group_size: int = option(4, "PG: rollouts per condition (group)", min=2)
    clip_eps: float = option(0.2, "PG: PPO ratio clip epsilon", min=0.0)
    ppo_epochs: int = option(1, "PG: policy updates per batch of rollouts", min=1)
    mc_draws: int = option(8, "PG (fpo): (t, x0) draws per sample of the surrogate", min=1)
    adv_clip: float = option(5.0, "PG: advantage clip", min=0.0)
    sde_noise: float = option(0.7, "PG (sde): diffusion scale a in g(t) = a sqrt(1 - t)", min=0.0)


@dataclass
class Rollout:
    """Policy samples ``x1`` from noise ``x0`` (no grad) with their conditions."""

    x0: Tensor
    x1: Tensor
    cond: Tensor | None
    states: Trajectory | None = None  # SDE trajectory, for pg_estimator="sde"


@register_method("fail")
class FAILMethod(Method):
    """FAIL post-training: roles ``policy`` (trained flow), ``reference`` (frozen start) and
    ``discriminator``.

    Example:
        >>> import torch
        >>> from flowpost.data.base import DataSpec
        >>> from flowpost.nets.config import NetConfig, DiscriminatorConfig
        >>> cfg = FAILConfig(discriminator=DiscriminatorConfig(hidden=16, depth=1))
        >>> m = FAILMethod(cfg, DataSpec((2,)), NetConfig(hidden=16, depth=1))
        >>> sorted(m.optimizers()), m.phase(0), m.phase(25)
        (['discriminator', 'policy'], 'disc_warmup', 'adversarial')
        >>> m.generate(torch.randn(3, 2), nfe=2).shape
        torch.Size([3, 2])
    """

    config_class = FAILConfig
    config: FAILConfig

    def __init__(
        self,
        config: FAILConfig,
        spec: DataSpec,
        net: NetConfig,
        *,
        discriminator: nn.Module | None = None,
    ) -> None:
        super().__init__(config, spec, net)
        self.policy = build_velocity_net(net, spec)
        self.reference = copy.deepcopy(self.policy).requires_grad_(False).eval()
        self.discriminator: nn.Module | None = (
            self._build_discriminator(discriminator) if self.uses_discriminator else None
        )
        if config.variant == "pg" and config.pg_estimator == "sde" and config.sde_noise <= 0:
            raise ValueError(
                "pg_estimator='sde' needs sde_noise > 0 (a deterministic step has no density)"
            )
        _betas(config.disc_betas)  # a bad value fails here, not at the first optimiser step
        self._pd_rollout: Rollout | None = None
        self._last_d: tuple[Tensor, Tensor] | None = None

    # ---- construction

    @property
    def uses_discriminator(self) -> bool:
        return True

    def _build_discriminator(self, given: nn.Module | None) -> nn.Module:
        if given is not None:
            return given
        if self.config.discriminator_factory:
            factory = load_object(self.config.discriminator_factory, "discriminator_factory")
            module = factory(self.spec)
            if not isinstance(module, nn.Module):
                raise ValueError(
                    f"discriminator_factory {self.config.discriminator_factory!r} returned "
                    f"{type(module).__name__}, not an nn.Module mapping (x, cond) -> logits"
                )
            return module
        return build_discriminator(self.config.discriminator, self.spec)

    def load_pretrained(self, state: Mapping[str, Tensor]) -> None:
        super().load_pretrained(state)
        self.reference.requires_grad_(False)

    def optimizers(self) -> dict[str, OptimizerSpec]:
        specs = {"policy": OptimizerSpec(list(self.policy.parameters()), lr=self.config.policy_lr)}
        if self.discriminator is not None:
            specs["discriminator"] = OptimizerSpec(
                list(self.discriminator.parameters()),
                lr=self.config.disc_lr,
                betas=_betas(self.config.disc_betas),
                schedule=False,
            )
        return specs

    def phase(self, step: int) -> str:
        c = self.config
        if step < c.cold_start_steps:
            return "cold_start"
        if step < c.cold_start_steps + c.disc_warmup_steps:
            return "disc_warmup"
        return "adversarial"

    # ---- sampling

    def generate(
        self,
        noise: Tensor,
        cond: Tensor | None = None,
        *,
        nfe: int,
        solver: str = "euler",
        roles: Mapping[str, nn.Module] | None = None,
    ) -> Tensor:
        policy = self.role("policy", roles)
        with torch.no_grad():
            return _sample(policy, noise, nfe, solver, cond)

    def rollout(self, batch: Batch, *, grouped: bool = False) -> Rollout:
        """Policy samples at the deployed sampler, no grad. ``grouped``: ``len(batch) //
        group_size`` conditions of the batch, each repeated ``group_size`` times."""
        x, cond = batch.x, batch.cond
        n = x.shape[0]
        if grouped:
            g = self.config.group_size
            groups = n // g
            if groups < 1:
                raise ValueError(
                    f"FAIL-PG needs a batch of at least group_size={g} samples, got {n}; "
                    "raise train.batch_size or lower method.group_size"
                )
            n = groups * g
            if cond is not None:
                cond = cond[:groups].repeat_interleave(g, dim=0)
        elif cond is not None:
            cond = cond[:n]
        x0 = torch.randn((n, *x.shape[1:]), device=x.device, dtype=x.dtype)
        x1 = _sample(self.policy, x0, self.config.nfe, self.config.solver, cond)
        return Rollout(x0=x0, x1=x1.detach(), cond=cond)

    def _grid(self, device: torch.device) -> Tensor:
        return solver_grid(self.config.nfe, self.config.solver, device=device)

    # ---- discriminator

    def _disc(self) -> nn.Module:
        if self.discriminator is None:
            raise RuntimeError("this configuration trains no discriminator")
        return self.discriminator

    def discriminator_terms(self, batch: Batch, fake: Rollout) -> dict[str, Tensor]:
        """BCE (+ R1) of the discriminator on expert ``batch`` vs policy samples ``fake``."""
        disc = self._disc()
        real_logits = disc(batch.x, batch.cond)
        fake_logits = disc(fake.x1.detach(), fake.cond)
        terms = {"bce": discriminator_loss(real_logits, fake_logits)}
        if self.config.r1_weight > 0:
            terms["r1"] = 0.5 * self.config.r1_weight * r1_penalty(disc, batch.x, batch.cond)
        self._last_d = (real_logits.detach(), fake_logits.detach())
        return terms

    def _discriminator_update(
        self, batch: Batch, fake: Rollout, update: Updater
    ) -> dict[str, float]:
        logs = update.step("discriminator", **self.discriminator_terms(batch, fake))
        assert self._last_d is not None
        real, fake_logits = self._last_d
        logs["discriminator/acc_real"] = float((real > 0).float().mean())
        logs["discriminator/acc_fake"] = float((fake_logits < 0).float().mean())
        return logs

    # ---- policy objectives

    def score_terms(self, x: Tensor, cond: Tensor | None) -> dict[str, Tensor]:
        """Per-sample terms the PD policy loss minimises (FAIL: ``softplus(-D(x))``)."""
        return {"adv": adversarial_policy_loss(self._disc()(x, cond))}

    @property
    def fail_weight(self) -> float:
        """Weight of the adversarial (FAIL) term; 1 for FAIL itself."""
        return 1.0

    def sample_reward(self, x: Tensor, cond: Tensor | None) -> Tensor:
        """Black-box reward of samples for PG (FAIL: ``softplus(D(x))``), no grad."""
        with torch.no_grad():
            return fail_reward(self._disc()(x, cond))

    def pd_terms(self, batch: Batch, rollout: Rollout) -> dict[str, Tensor]:
        """FAIL-PD loss terms (discriminator frozen by the caller)."""
        c = self.config
        grid = self._grid(batch.x.device)
        terms: dict[str, Tensor] = {}
        if c.pd_estimator == "pathwise":
            x_hat = pathwise_sample(
                self.policy, rollout.x0, c.nfe, c.solver, rollout.cond, checkpoint=c.checkpoint
            )
            terms.update({k: v.mean() for k, v in self.score_terms(x_hat, rollout.cond).items()})
            if c.beta > 0:
                # the regulariser's points: the straight line between the noise and the
                # (detached) sample, at the grid times, as for the local estimator
                pts = local_pd_points(
                    self.policy,
                    rollout.x0,
                    x_hat.detach(),
                    grid,
                    rollout.cond,
                    mc_timesteps=c.mc_timesteps,
                    t_min=c.local_t_min,
                )
                terms["reg"] = (
                    c.beta
                    * velocity_regulariser(pts.v, self.reference, pts.x_t, pts.t, pts.cond).mean()
                )
        else:
            pts = local_pd_points(
                self.policy,
                rollout.x0,
                rollout.x1,
                grid,
                rollout.cond,
                mc_timesteps=c.mc_timesteps,
                t_min=c.local_t_min,
            )
            terms.update({k: v.mean() for k, v in self.score_terms(pts.x_hat, pts.cond).items()})
            if c.beta > 0:
                terms["reg"] = (
                    c.beta
                    * velocity_regulariser(pts.v, self.reference, pts.x_t, pts.t, pts.cond).mean()
                )
        if c.expert_in_policy_loss and self.discriminator is not None:
            noise = torch.randn_like(batch.x)
            pts = local_pd_points(
                self.policy,
                noise,
                batch.x,
                grid,
                batch.cond,
                mc_timesteps=c.mc_timesteps,
                t_min=c.local_t_min,
            )
            logits = self._disc()(pts.x_hat, pts.cond)
            terms["adv_expert"] = self.fail_weight * adversarial_policy_loss(logits).mean()
        return terms

    def _pg_update(self, rollout: Rollout, update: Updater) -> dict[str, float]:
        """PPO epochs on one batch of grouped rollouts (old policy = the policy now)."""
        c = self.config
        x1 = rollout.x1
        rewards = self.sample_reward(x1, rollout.cond)
        adv = group_advantages(rewards, c.group_size, c.adv_clip)
        logs: dict[str, float] = {"pg/reward": float(rewards.mean())}
        if c.pg_estimator == "fpo":
            draws = draw_fpo(x1, c.mc_draws)
            with torch.no_grad():
                l_old = fpo_surrogate(self.policy, x1, draws, rollout.cond).loss
        else:
            assert rollout.states is not None
            with torch.no_grad():
                lp_old = sde_log_prob(self.policy, rollout.states, c.sde_noise, rollout.cond)
        for epoch in range(c.ppo_epochs):
            terms: dict[str, Tensor] = {}
            if c.pg_estimator == "fpo":
                new = fpo_surrogate(self.policy, x1, draws, rollout.cond)
                ratio = torch.exp((l_old - new.loss).clamp(-3.0, 3.0))
                reg_points = (new.v, new.x_t, new.t, new.cond)
            else:
                assert rollout.states is not None
                lp_new = sde_log_prob(self.policy, rollout.states, c.sde_noise, rollout.cond)
                ratio = torch.exp((lp_new - lp_old).clamp(-3.0, 3.0))
                reg_points = None
            terms["ppo"] = ppo_clip_loss(ratio, adv, c.clip_eps)
            if c.beta > 0:
                if reg_points is None:
                    draws_r = draw_fpo(x1, 1)
                    reg = fpo_surrogate(self.policy, x1, draws_r, rollout.cond)
                    reg_points = (reg.v, reg.x_t, reg.t, reg.cond)
                v, x_t, t, cnd = reg_points
                terms["reg"] = c.beta * velocity_regulariser(v, self.reference, x_t, t, cnd).mean()
            if epoch == 0:
                logs["pg/ratio_first"] = float(ratio.detach().mean())
            logs.update(update.step("policy", **terms))
        logs["pg/ratio_last"] = float(ratio.detach().mean())
        return logs

    def _policy_update(self, batch: Batch, update: Updater) -> dict[str, float]:
        c = self.config
        with frozen(*([] if self.discriminator is None else [self.discriminator])):
            if c.variant == "pd":
                rollout = self._pd_rollout if self._pd_rollout is not None else self.rollout(batch)
                self._pd_rollout = None
                return update.step("policy", **self.pd_terms(batch, rollout))
            rollout = self.rollout(batch, grouped=True)
            if c.pg_estimator == "sde":
                traj = sde_rollout(
                    self.policy, rollout.x0, self._grid(batch.x.device), c.sde_noise, rollout.cond
                )
                rollout = Rollout(rollout.x0, traj.final, rollout.cond, states=traj)
            return self._pg_update(rollout, update)

    # ---- the iteration

    def train_step(self, batch: Batch, step: int, update: Updater) -> dict[str, float]:
        phase = self.phase(step)
        if phase == "cold_start":
            return update.step("policy", fm=cold_start_loss(self.policy, batch.x, batch.cond))
        logs: dict[str, float] = {}
        self._pd_rollout = None
        for k in range(1 if phase == "disc_warmup" else self.config.disc_steps):
            fake = self.rollout(batch)
            if k == 0:
                # the policy has not moved since this rollout: FAIL-PD's local estimator
                # reuses it instead of sampling again
                self._pd_rollout = fake
            logs.update(self._discriminator_update(batch, fake, update))
        if phase == "adversarial":
            logs.update(self._policy_update(batch, update))
        return logs
