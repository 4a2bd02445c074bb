"""The marginal-preserving SDE of a flow and its transition likelihoods (Flow-GRPO style).

With diffusion ``g(t) = a sqrt(1 - t)`` (largest at the noise end, 0 at data) and the linear
path's score ``-(x - t v) / (1 - t)``, the drift ``b = v + g^2/2 * score = v - a^2 (x - t v) / 2``
gives an SDE with the flow's marginals and no singularity on ``[0, 1]``. Its Euler-Maruyama
transitions are Gaussian, so a roll-out has a log-likelihood under any policy.

Example:
    >>> import torch
    >>> sde_sigma(torch.tensor([0.0, 0.75, 1.0]), 0.5).tolist()
    [0.5, 0.25, 0.0]
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowpost.flows.paths import expand_like
from flowpost.flows.sde import euler_maruyama, transition_log_prob
from flowpost.flows.solvers import Trajectory
from flowpost.methods.components.common import Field

__all__ = ["sde_sigma", "sde_drift", "sde_rollout", "sde_log_prob"]


def sde_sigma(t: Tensor, noise_level: float) -> Tensor:
    """Diffusion coefficient ``g(t) = a sqrt(1 - t)``: largest at the noise end, 0 at data."""
    return noise_level * (1 - t).clamp_min(0).sqrt()


def _sigma_fn(noise_level: float):  # type: ignore[no-untyped-def]
    return lambda t: float(sde_sigma(torch.tensor(t), noise_level))


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
        sde_drift(policy, noise_level), _sigma_fn(noise_level), x0, grid, cond=cond,
        return_trajectory=True,
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
        sde_drift(policy, noise_level), _sigma_fn(noise_level), trajectory, cond=cond
    ).sum(1)
