"""Probability paths between a source sample ``x0`` (t = 0, noise) and data ``x1`` (t = 1).

A path gives, for a pair ``(x0, x1)`` and a time ``t``, the point ``x_t`` and the conditional
target velocity ``u_t(x_t | x0, x1)`` that flow matching regresses ``v(x_t, t)`` onto.

Every path implements the small :class:`ProbabilityPath` interface: :meth:`~ProbabilityPath.sample`
(point and target velocity), :meth:`~ProbabilityPath.interpolate` (the mean point
``(1 - t) x0 + t x1``) and :meth:`~ProbabilityPath.recover_x1` (its inverse in ``x1``). Methods
interpolate through these, never by writing the formula out.

* :class:`LinearPath`: ``x_t = (1 - t) x0 + t x1``, ``u = x1 - x0``.
* :class:`StochasticBridge`: the Brownian-bridge path
  ``x_t = (1 - t) x0 + t x1 + sigma sqrt(t (1 - t)) eps`` with ``eps ~ N(0, I)`` and

  ``u = x1 - x0 + sigma (1 - 2t) / (2 sqrt(t (1 - t))) eps``.

  ``u`` is ``d x_t / dt`` with ``eps`` held fixed: the mean path's velocity ``x1 - x0`` plus
  ``s'(t) eps`` where ``s(t) = sigma sqrt(t (1 - t))`` is the bridge's standard deviation.
  Equivalently ``u = mu'(t) + s'(t) / s(t) (x_t - mu(t))``, the velocity field that transports
  the conditional Gaussian ``N(mu(t), s(t)^2 I)`` along itself (the probability-flow ODE of the
  bridge, Lipman et al. 2023, Theorem 3), so regressing on it learns a deterministic flow with
  the bridge's marginals. ``s'(t)`` diverges at ``t = 0`` and ``t = 1``; the coefficient is
  computed with ``t`` clamped to ``[t_min, 1 - t_min]`` (the point ``x_t`` itself uses the
  exact ``t``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "PathSample",
    "ProbabilityPath",
    "LinearPath",
    "StochasticBridge",
    "expand_like",
    "interpolate",
    "recover_x1",
]


@dataclass(frozen=True)
class PathSample:
    """One draw from a path: the pair, the times ``(B,)``, the point and its target velocity.

    >>> s = LinearPath().sample(torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([0.25, 0.5]))
    >>> s.x_t[:, 0].tolist(), s.velocity[0].tolist()
    ([0.25, 0.5], [1.0, 1.0, 1.0])
    """

    x0: Tensor
    x1: Tensor
    t: Tensor
    x_t: Tensor
    velocity: Tensor


def expand_like(t: Tensor, x: Tensor) -> Tensor:
    """Reshape per-sample times ``(B,)`` to ``(B, 1, ..., 1)`` so they broadcast against ``x``.

    >>> expand_like(torch.zeros(4), torch.zeros(4, 3, 8, 8)).shape
    torch.Size([4, 1, 1, 1])
    """
    return t.reshape(t.shape[0], *([1] * (x.dim() - 1)))


def interpolate(x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """The straight line ``(1 - t) x0 + t x1`` at per-sample times ``t`` ``(B,)``.

    Written with both weights, so ``t = 0`` gives ``x0`` and ``t = 1`` gives ``x1`` exactly.

    >>> interpolate(torch.zeros(2, 2), torch.ones(2, 2), torch.tensor([0.25, 1.0])).tolist()
    [[0.25, 0.25], [1.0, 1.0]]
    """
    te = expand_like(t, x1)
    if te.dtype != x1.dtype:
        te = te.to(x1.dtype)
    return (1 - te) * x0 + te * x1


def recover_x1(x_t: Tensor, x0: Tensor, t: Tensor) -> Tensor:
    """The end point ``x1 = (x_t - (1 - t) x0) / t`` of the straight line through ``x0`` and
    ``x_t``; ``t`` ``(B,)`` must be away from 0 (clamp it first).

    >>> recover_x1(torch.full((1, 2), 0.5), torch.zeros(1, 2), torch.tensor([0.25])).tolist()
    [[2.0, 2.0]]
    """
    te = expand_like(t, x0).to(x0.dtype)
    return (x_t - (1 - te) * x0) / te


class ProbabilityPath(ABC):
    """A path from ``x0`` (t = 0) to ``x1`` (t = 1): the interface methods program against.

    Subclasses implement :meth:`sample`; the mean point and its inverse are the straight line
    ``(1 - t) x0 + t x1`` of every path here (a stochastic path adds zero-mean noise to it).
    """

    @abstractmethod
    def sample(self, x0: Tensor, x1: Tensor, t: Tensor) -> PathSample:
        """Point ``x_t`` and target velocity ``u_t(x_t | x0, x1)`` at times ``t`` ``(B,)``."""

    def interpolate(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """The mean point of the path at ``t``: ``(1 - t) x0 + t x1``."""
        return interpolate(x0, x1, t)

    def recover_x1(self, x_t: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        """Invert :meth:`interpolate` for ``x1`` (``t`` away from 0)."""
        return recover_x1(x_t, x0, t)


def _check(x0: Tensor, x1: Tensor, t: Tensor) -> None:
    if x0.shape != x1.shape:
        raise ValueError(
            f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}; "
            "draw the source noise with torch.randn_like(x1)"
        )
    if t.dim() != 1 or t.shape[0] != x1.shape[0]:
        raise ValueError(
            f"t must have shape (B,) = ({x1.shape[0]},), got {tuple(t.shape)}; "
            "pass one time per sample"
        )


class LinearPath(ProbabilityPath):
    """The straight (rectified / conditional-OT) path ``x_t = (1 - t) x0 + t x1``, ``u = x1 - x0``.

    >>> path = LinearPath()
    >>> x0, x1 = torch.zeros(3, 2), torch.full((3, 2), 2.0)
    >>> s = path.sample(x0, x1, torch.tensor([0.0, 0.5, 1.0]))
    >>> s.x_t[:, 0].tolist(), s.velocity[:, 1].tolist()
    ([0.0, 1.0, 2.0], [2.0, 2.0, 2.0])
    """

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor) -> PathSample:
        """Point and target velocity at times ``t`` ``(B,)`` for the pairs ``(x0, x1)``."""
        _check(x0, x1, t)
        return PathSample(x0=x0, x1=x1, t=t, x_t=interpolate(x0, x1, t), velocity=x1 - x0)


class StochasticBridge(ProbabilityPath):
    """Brownian bridge ``x_t = (1-t) x0 + t x1 + sigma sqrt(t(1-t)) eps`` (see the module doc).

    Its target velocity is ``u = x1 - x0 + sigma (1 - 2t) / (2 sqrt(t (1 - t))) eps`` with the
    coefficient's ``t`` clamped to ``[t_min, 1 - t_min]``. With ``sigma = 0`` it is
    :class:`LinearPath`.

    Args:
        sigma: noise scale of the bridge (>= 0).
        t_min: clamp for the velocity coefficient, which is unbounded at ``t = 0, 1``.

    >>> bridge = StochasticBridge(sigma=0.5)
    >>> x0, x1 = torch.zeros(2, 1), torch.ones(2, 1)
    >>> s = bridge.sample(x0, x1, torch.tensor([0.5, 0.5]), noise=torch.ones(2, 1))
    >>> s.x_t[:, 0].tolist(), s.velocity[:, 0].tolist()  # at t = 1/2 the noise term is flat
    ([0.75, 0.75], [1.0, 1.0])
    """

    def __init__(self, sigma: float, t_min: float = 1e-3) -> None:
        if sigma < 0:
            raise ValueError(f"StochasticBridge sigma must be >= 0, got {sigma}")
        if not 0.0 < t_min < 0.5:
            raise ValueError(f"StochasticBridge t_min must lie in (0, 0.5), got {t_min}")
        self.sigma = float(sigma)
        self.t_min = float(t_min)

    def std(self, t: Tensor) -> Tensor:
        """Standard deviation ``sigma sqrt(t (1 - t))`` of ``x_t`` given ``(x0, x1)``."""
        return self.sigma * (t * (1 - t)).clamp_min(0).sqrt()

    def sample(
        self,
        x0: Tensor,
        x1: Tensor,
        t: Tensor,
        noise: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> PathSample:
        """Point and target velocity; ``noise`` is ``eps`` (drawn with ``generator`` if None)."""
        _check(x0, x1, t)
        if noise is None:
            noise = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        elif noise.shape != x1.shape:
            raise ValueError(
                f"noise must have the shape of x1 {tuple(x1.shape)}, got {tuple(noise.shape)}"
            )
        te = expand_like(t, x1).to(x1.dtype)
        x_t = interpolate(x0, x1, t) + self.std(te) * noise
        tc = te.clamp(self.t_min, 1 - self.t_min)
        coef = self.sigma * (1 - 2 * tc) / (2 * (tc * (1 - tc)).sqrt())
        velocity = x1 - x0 + coef * noise
        return PathSample(x0=x0, x1=x1, t=t, x_t=x_t, velocity=velocity)
