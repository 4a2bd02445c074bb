"""FAIL-PD's estimators: samples of the deployed sampler that are differentiable in the policy.

* :func:`pathwise_sample`: the full solve from fixed noise with gradients through every solver
  step (checkpointed per step, so memory is flat in the number of steps). Exact, expensive.
* :func:`local_pd_points`: the authors' local one-step estimator. Roll out ``x1`` without
  gradients and keep its noise ``x0``; draw a grid step ``k`` per copy (``mc`` copies per
  sample); re-noise ``x_t = (1 - t) x0 + t x1`` on the path; take one differentiable Euler
  step ``x_{t'} = x_t + dt v(x_t, t)`` and form the clean estimate
  ``x_hat = (x_{t'} - (1 - t') x0) / t'`` (:func:`local_clean_estimate`) with ``t'`` clamped
  away from 0. For the straight-line velocity ``v = x1 - x0``, ``x_hat = x1`` exactly.
* :func:`velocity_regulariser`: ``||v - v_ref||^2 / n`` against a frozen reference.

Example:
    >>> import torch
    >>> x0, x1 = torch.zeros(2, 2), torch.ones(2, 2)
    >>> t, dt = torch.tensor([0.0, 0.5]), torch.tensor([0.25, 0.25])
    >>> x_next = interpolate(x0, x1, t) + dt[:, None] * (x1 - x0)   # exact straight step
    >>> local_clean_estimate(x_next, x0, t + dt).tolist()            # recovers x1
    [[1.0, 1.0], [1.0, 1.0]]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flowpost.flows import random
from flowpost.flows.paths import expand_like, interpolate, recover_x1
from flowpost.methods.components.common import Field, per_sample_mse, repeat_rows, solve

__all__ = [
    "LocalPoints",
    "pathwise_sample",
    "local_clean_estimate",
    "local_pd_points",
    "velocity_regulariser",
]


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
    return solve(policy, x0, nfe, solver, cond, grad=True, checkpoint=checkpoint)


def local_clean_estimate(x_next: Tensor, x0: Tensor, t_next: Tensor) -> Tensor:
    """One-step clean estimate ``x_hat = (x_{t'} - (1 - t') x0) / t'`` on the straight line
    through ``x0``; ``t_next`` ``(B,)`` must already be clamped away from 0."""
    return recover_x1(x_next, x0, t_next)


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
    n = x0.shape[0]
    x0 = x0.detach().repeat_interleave(mc_timesteps, dim=0)
    x1 = x1.detach().repeat_interleave(mc_timesteps, dim=0)
    cond = repeat_rows(cond, mc_timesteps)
    steps = grid.numel() - 1
    if step_index is None:
        # (B, M) draws flattened: the rows of a sample stay together under a batch shard
        step_index = random.randint(0, steps, n, mc_timesteps, device=x0.device).reshape(-1)
    grid = grid.to(device=x0.device, dtype=x0.dtype)
    t, t_next = grid[step_index], grid[step_index + 1]
    dt = t_next - t
    x_t = interpolate(x0, x1, t)
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
