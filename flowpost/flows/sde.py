"""Euler-Maruyama for ``dX = b(X, t, cond) dt + sigma(t) dW`` with per-step log densities.

One step from ``t_k`` to ``t_{k+1}`` (``dt = t_{k+1} - t_k``, negative on a decreasing grid):

``x_{k+1} = x_k + b(x_k, t_k) dt + sigma(t_k) sqrt(|dt|) z``,  ``z ~ N(0, I)``,

so the transition is Gaussian, ``N(x_k + b dt, sigma(t_k)^2 |dt| I)``, and its log density
(summed over the ``n`` dimensions of a sample, as a density must be) is

``log p = -||x_{k+1} - mean||^2 / (2 std^2) - n log std - n/2 log(2 pi)``.

These per-step log densities are what SDE-based policy gradients (Flow-GRPO style) need.
A step with ``sigma = 0`` is deterministic and carries no density: its entry is 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from flowpost.flows import random
from flowpost.flows.ode import Trajectory, VelocityField, check_state, grid_values
from flowpost.flows.paths import expand_like
from flowpost.flows.recording import active_recorder

__all__ = ["SDEResult", "euler_maruyama", "gaussian_log_prob", "transition_log_prob"]

_LOG_2PI = math.log(2 * math.pi)


@dataclass
class SDEResult:
    """Final state ``x``, the optional :class:`Trajectory`, and ``log_prob`` ``(B, steps)``.

    >>> r = euler_maruyama(lambda x, t, c: -x, 0.1, torch.zeros(3, 2), torch.linspace(0, 1, 5))
    >>> r.x.shape, r.log_prob.shape, r.trajectory is None
    (torch.Size([3, 2]), torch.Size([3, 4]), True)
    """

    x: Tensor
    trajectory: Trajectory | None
    log_prob: Tensor


def gaussian_log_prob(x_next: Tensor, mean: Tensor, std: Tensor | float) -> Tensor:
    """Log density of ``x_next`` under ``N(mean, std^2 I)``, summed per sample: shape ``(B,)``.

    ``std`` is a float, a tensor ``(B,)`` (one std per sample) or broadcastable to ``x_next``.

    >>> lp = gaussian_log_prob(torch.zeros(1, 2), torch.zeros(1, 2), 1.0)
    >>> round(float(lp), 6) == round(-math.log(2 * math.pi), 6)
    True
    """
    if x_next.shape != mean.shape:
        raise ValueError(
            f"x_next {tuple(x_next.shape)} and mean {tuple(mean.shape)} must have the same shape"
        )
    if not isinstance(std, Tensor):
        std = torch.as_tensor(std, dtype=x_next.dtype, device=x_next.device)
    if std.dim() == 1 and x_next.dim() > 1 and std.shape[0] == x_next.shape[0]:
        std = expand_like(std, x_next)
    std = std.expand_as(x_next)
    z = (x_next - mean) / std
    return (-0.5 * z.pow(2) - std.log() - 0.5 * _LOG_2PI).flatten(1).sum(1)


def euler_maruyama(
    drift: VelocityField,
    sigma: float | Callable[[float], float],
    x: Tensor,
    grid: Tensor,
    *,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    grad: bool = False,
    return_trajectory: bool = False,
) -> SDEResult:
    """Simulate ``dX = drift(X, t, cond) dt + sigma(t) dW`` on ``grid`` (Euler-Maruyama).

    Args:
        drift: called as ``drift(x, t, cond)`` with ``t`` of shape ``(B,)``.
        sigma: a constant or a function of the (float) time ``t_k`` at the start of a step.
        grid: 1-D times, strictly increasing or decreasing.
        generator: for the Brownian increments (global RNG if None).
        grad: record for autograd. ``log_prob`` is the density of the noise actually drawn,
            so it does not depend on the drift; to score a roll-out's transitions under a
            (new) drift with gradients, use :func:`transition_log_prob`.

    Returns:
        :class:`SDEResult`; ``log_prob[:, k]`` is the log density of transition ``k``.

    >>> r = euler_maruyama(lambda x, t, c: torch.ones_like(x), 0.0, torch.zeros(2, 1),
    ...                    torch.linspace(0, 1, 3))
    >>> r.x.tolist(), r.log_prob.tolist()
    ([[1.0], [1.0]], [[0.0, 0.0], [0.0, 0.0]])
    """
    check_state(x)
    ts = grid_values(grid)
    sig: Callable[[float], float] = sigma if callable(sigma) else (lambda _t: float(sigma))
    b = x.shape[0]
    n = x[0].numel()
    t_nodes = grid.detach().to(device=x.device, dtype=x.dtype).unsqueeze(1).expand(-1, b)
    t_nodes = t_nodes.contiguous()
    states = [x]
    log_probs = []
    rec = active_recorder()
    with torch.set_grad_enabled(grad):
        for k in range(len(ts) - 1):
            dt = ts[k + 1] - ts[k]
            s = sig(ts[k])
            if not isinstance(s, Tensor) and s < 0:
                raise ValueError(f"sigma(t) must be >= 0, got {s} at t={ts[k]}")
            mean = x.add(drift(x, t_nodes[k], cond), alpha=dt)
            if rec is not None:  # the drift's displacement b dt, not the Brownian increment
                rec.add(mean - x)
            if not isinstance(s, Tensor) and s == 0.0:
                x = mean
                log_probs.append(x.new_zeros(b))
            else:
                std = s * math.sqrt(abs(dt))
                if generator is None:  # per-sample draws, shard-invariant (flows.random)
                    z = random.randn_like(x)
                else:
                    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = mean + std * z
                # (x - mean) / std is exactly z: use it rather than re-deriving it from x.
                log_std = torch.as_tensor(std, dtype=x.dtype, device=x.device).log()
                lp = -0.5 * z.flatten(1).pow(2).sum(1) - n * log_std - 0.5 * n * _LOG_2PI
                log_probs.append(lp.expand(b))
            if return_trajectory:
                states.append(x)
    traj = Trajectory(torch.stack(states), t_nodes[:, 0]) if return_trajectory else None
    return SDEResult(x=x, trajectory=traj, log_prob=torch.stack(log_probs, dim=1))


def transition_log_prob(
    drift: VelocityField,
    sigma: float | Callable[[float], float],
    trajectory: Trajectory,
    *,
    cond: Tensor | None = None,
) -> Tensor:
    """Log densities ``(B, steps)`` of a stored trajectory's transitions under ``drift``.

    Re-scores the Euler-Maruyama transitions ``x_k -> x_{k+1}`` of a (typically gradient-free)
    roll-out under a possibly different drift; gradients flow into the drift through the
    means, as a likelihood-ratio policy gradient needs. With the roll-out's own drift it equals
    the roll-out's ``log_prob``.

    >>> g = torch.Generator().manual_seed(0)
    >>> r = euler_maruyama(lambda x, t, c: -x, 0.5, torch.zeros(4, 2), torch.linspace(0, 1, 4),
    ...                    generator=g, return_trajectory=True)
    >>> lp = transition_log_prob(lambda x, t, c: -x, 0.5, r.trajectory)
    >>> torch.allclose(lp, r.log_prob, atol=1e-5)
    True
    """
    ts = grid_values(trajectory.times)
    sig: Callable[[float], float] = sigma if callable(sigma) else (lambda _t: float(sigma))
    states = trajectory.states
    b = states.shape[1]
    out = []
    for k in range(len(ts) - 1):
        dt = ts[k + 1] - ts[k]
        std = sig(ts[k]) * math.sqrt(abs(dt))
        if not isinstance(std, Tensor) and std <= 0:
            raise ValueError(
                f"transition {k} has sigma(t)={sig(ts[k])}: a deterministic step has no density"
            )
        t = trajectory.times[k].to(states.dtype).expand(b)
        mean = states[k].add(drift(states[k], t, cond), alpha=dt)
        out.append(gaussian_log_prob(states[k + 1], mean, std))
    return torch.stack(out, dim=1)
