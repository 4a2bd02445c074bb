"""Policy-gradient pieces for flows: GRPO group advantages, PPO's clip, FPO's surrogate.

* :func:`group_advantages`: ``(r - mean_group) / (std_group + 1e-8)`` clipped to ``+-clip``.
* :func:`ppo_clip_loss`: ``mean(max(-rho A, -clip(rho, 1 - eps, 1 + eps) A))``.
* :func:`fpo_surrogate`: Flow Policy Optimisation's per-sample likelihood surrogate
  ``l(x1) = mean_m ||v(x_t^m, t_m) - (x1 - x0^m)||^2 / n`` with the ``(t, x0)`` draws shared
  by the old and the new policy (:func:`draw_fpo`); :func:`likelihood_ratio` turns two
  log-likelihoods (or ``-l``) into ``rho = exp(clip(new - old, -3, 3))``.

Example:
    >>> import torch
    >>> group_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), 2).tolist()
    [-1.0, 1.0, 0.0, 0.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flowpost.flows import random
from flowpost.flows.paths import interpolate
from flowpost.methods.components.common import Field, per_sample_mse, repeat_rows

__all__ = [
    "group_advantages",
    "ppo_clip_loss",
    "likelihood_ratio",
    "FPODraws",
    "FPOTerms",
    "draw_fpo",
    "fpo_surrogate",
]


def group_advantages(rewards: Tensor, group_size: int, clip: float = 5.0) -> Tensor:
    """GRPO advantages ``(r - mean_group) / (std_group + 1e-8)``, clipped to ``+-clip``.

    ``rewards`` ``(N,)`` holds ``N / group_size`` consecutive groups; ``std`` is the population
    standard deviation, so each group's advantages have mean 0 and variance 1 (before the
    clip, which only bites for groups larger than ``clip**2 + 1``).
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 to compare rollouts, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be (N,) with N a multiple of group_size={group_size}, "
            f"got shape {tuple(rewards.shape)}"
        )
    # in float32: under bf16 autocast a group's rewards differ by less than bf16 resolves
    # around their mean, which turned advantages of +-1 into {0, 2}
    r = rewards.float().reshape(-1, group_size)
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


def likelihood_ratio(log_new: Tensor, log_old: Tensor, bound: float = 3.0) -> Tensor:
    """``exp(clip(log_new - log_old, -bound, bound))``: a ratio that cannot explode.

    >>> likelihood_ratio(torch.tensor([10.0, 0.0]), torch.tensor([0.0, 0.0])).tolist()
    [20.08553695678711, 1.0]
    """
    return torch.exp((log_new - log_old).clamp(-bound, bound))


@dataclass
class FPODraws:
    """The ``M`` draws ``(t, x0)`` per sample of the FPO surrogate, drawn once and shared by
    the old and the new policy: ``t`` ``(N * M,)``, ``noise`` ``(N * M, ...)``."""

    t: Tensor
    noise: Tensor
    draws: int


def draw_fpo(x1: Tensor, draws: int) -> FPODraws:
    """Draw ``draws`` times and noises per sample of ``x1`` (``(N, M)`` draws, flattened)."""
    n, tail = x1.shape[0], x1.shape[1:]
    t = random.rand(n, draws, device=x1.device, dtype=x1.dtype).reshape(-1)
    noise = random.randn(n, draws, *tail, device=x1.device, dtype=x1.dtype)
    return FPODraws(t=t, noise=noise.reshape(n * draws, *tail), draws=draws)


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
    condr = repeat_rows(cond, m)
    x_t = interpolate(draws.noise, x1r, draws.t)
    v = policy(x_t, draws.t, condr)
    per = per_sample_mse(v, x1r - draws.noise).reshape(x1.shape[0], m).mean(1)
    return FPOTerms(loss=per, v=v, x_t=x_t, t=draws.t, cond=condr)
