"""Stochastic flows ``dX = b(X, t) dt + g(t) dW`` trained along the stochastic bridge.

**Path.** The stochastic bridge of :class:`~flowpost.flows.paths.StochasticBridge`:
given a pair ``(x0, x1)``, ``x_t ~ N(mu_t, s_t^2 I)`` with ``mu_t = (1 - t) x0 + t x1`` and
``s_t = sigma sqrt(t (1 - t))``; ``x_t = mu_t + s_t eps``.

**Diffusion.** ``g(t) = sigma c(t)`` with a schedule ``c``:

* ``constant``: ``c = 1`` (then the path is exactly the Brownian bridge of ``sigma W``);
* ``vanishing``: ``c = 2 sqrt(t (1 - t))``, zero at both ends and ``1`` at ``t = 1/2``.

**Conditional drift.** The SDE ``dX = [mu_t' + a_t (X - mu_t)] dt + g dW`` keeps
``N(mu_t, s_t^2 I)`` along itself iff its variance obeys ``(s^2)' = 2 a s^2 + g^2``, i.e.
``a = s'/s - g^2 / (2 s^2)``. So the drift that transports the conditional path is

``b(x_t | x0, x1) = x1 - x0 + k(t) eps``,  ``k = s' - g^2 / (2 s)``.

* constant: ``k = -sigma sqrt(t / (1 - t))``, i.e. ``b = (x1 - x_t) / (1 - t)``, the Brownian
  bridge's own drift;
* vanishing: ``k = sigma [(1 - 2t) / (2 sqrt(t (1 - t))) - 2 sqrt(t (1 - t))]``.

``k`` is unbounded at an end (constant: ``t -> 1``; vanishing: both) only in variance; the
coefficient is computed with ``t`` clamped to ``[t_min, 1 - t_min]`` (the point ``x_t`` uses
the exact ``t``). With ``sigma = 0`` there is no noise at all: :meth:`StochasticFlow.sample_path`
is :class:`~flowpost.flows.paths.LinearPath` (no ``eps`` is even drawn) and
:meth:`StochasticFlow.sample` is the deterministic Euler solve, bit for bit.

**Marginal drift.** Averaging the conditional drifts over the pairs that pass through ``x``,
``b(x, t) = E[b(x_t | x0, x1) | x_t = x]``, gives an SDE with the same marginals as the mixture
of bridges (each conditional process solves its Fokker-Planck equation, which is linear in
the density, and the mixture's flux is carried by the posterior-mean drift).
:func:`marginal_drift` estimates it on a minibatch by self-normalised posterior weights.

Example:
    >>> import torch
    >>> flow = StochasticFlow(sigma=0.3, schedule="vanishing")
    >>> flow.diffusion(0.0), flow.diffusion(0.5), flow.diffusion(1.0)
    (0.0, 0.3, 0.0)
    >>> x = flow.sample(lambda x, t, c: torch.zeros_like(x), torch.zeros(4, 2), nfe=8,
    ...                 generator=torch.Generator().manual_seed(0))
    >>> x.shape
    torch.Size([4, 2])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowpost.flows.paths import LinearPath, PathSample, StochasticBridge, expand_like
from flowpost.flows.sde import SDEResult, euler_maruyama
from flowpost.flows.solvers import VelocityField, odeint
from flowpost.flows.timesteps import time_grid

__all__ = ["SIGMA_SCHEDULES", "StochasticFlow", "marginal_drift"]

SIGMA_SCHEDULES = ("constant", "vanishing")


class StochasticFlow:
    """The stochastic bridge, its diffusion schedule, drift targets and the sampler.

    Args:
        sigma: noise level (>= 0): the bridge std is ``sigma sqrt(t (1 - t))`` and the
            diffusion ``g(t) = sigma c(t)``.
        schedule: ``"constant"`` or ``"vanishing"`` (see the module docstring).
        t_min: clamp of the drift coefficient's time, which is unbounded at the ends.

    >>> flow = StochasticFlow(0.0)
    >>> p = flow.sample_path(torch.zeros(2, 1), torch.ones(2, 1), torch.tensor([0.25, 0.5]))
    >>> p.x_t[:, 0].tolist(), p.velocity[:, 0].tolist()
    ([0.25, 0.5], [1.0, 1.0])
    """

    def __init__(self, sigma: float = 0.0, schedule: str = "constant", t_min: float = 1e-3):
        if not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"sigma must be a number >= 0 (the noise level), got {sigma}")
        if schedule not in SIGMA_SCHEDULES:
            raise ValueError(
                f"unknown sigma schedule {schedule!r}; choose one of {', '.join(SIGMA_SCHEDULES)}"
            )
        self.sigma = float(sigma)
        self.schedule = schedule
        self.t_min = float(t_min)
        self.bridge = StochasticBridge(self.sigma, t_min) if self.sigma > 0 else None

    @property
    def deterministic(self) -> bool:
        """True when ``sigma == 0``: an ODE on the linear path."""
        return self.sigma == 0.0

    def diffusion(self, t: float) -> float:
        """``g(t)``, the noise level of the SDE at time ``t``."""
        if self.schedule == "constant":
            return self.sigma
        return self.sigma * 2.0 * math.sqrt(max(t * (1.0 - t), 0.0))

    def std(self, t: Tensor) -> Tensor:
        """Bridge standard deviation ``s_t = sigma sqrt(t (1 - t))``."""
        return self.sigma * (t * (1 - t)).clamp_min(0).sqrt()

    def coefficient(self, t: Tensor) -> Tensor:
        """``k(t) = s' - g^2 / (2 s)`` (clamped time), the drift's factor of ``eps``."""
        tc = t.clamp(self.t_min, 1 - self.t_min)
        if self.schedule == "constant":
            return -self.sigma * (tc / (1 - tc)).sqrt()
        root = (tc * (1 - tc)).sqrt()
        return self.sigma * ((1 - 2 * tc) / (2 * root) - 2 * root)

    def sample_path(
        self, x0: Tensor, x1: Tensor, t: Tensor, noise: Tensor | None = None
    ) -> PathSample:
        """Point ``x_t`` and conditional drift ``b(x_t | x0, x1)`` (in ``.velocity``).

        ``noise`` is ``eps``; drawn with :func:`flowpost.flows.random.randn_like` when
        ``None`` (and never drawn when ``sigma = 0``).
        """
        if self.bridge is None:
            return LinearPath().sample(x0, x1, t)
        if noise is None:
            from flowpost.flows import random as frandom

            noise = frandom.randn_like(x1)
        point = self.bridge.sample(x0, x1, t, noise)
        te = expand_like(t, x1).to(x1.dtype)
        drift = x1 - x0 + self.coefficient(te) * noise
        return PathSample(x0=x0, x1=x1, t=t, x_t=point.x_t, velocity=drift)

    def sample(
        self,
        drift: VelocityField,
        noise: Tensor,
        nfe: int,
        *,
        cond: Tensor | None = None,
        generator: torch.Generator | None = None,
        return_result: bool = False,
    ) -> Tensor | SDEResult:
        """Integrate from ``noise`` (t = 0) to t = 1 in ``nfe`` Euler-Maruyama steps.

        With ``sigma = 0`` this is :func:`flowpost.flows.odeint` with Euler on the same grid
        (and the same bits); ``return_result`` gives the :class:`SDEResult` with its
        trajectory instead of the final state.
        """
        if nfe < 1:
            raise ValueError(f"nfe must be >= 1, got {nfe}")
        grid = time_grid(nfe, device=noise.device, dtype=noise.dtype)
        if self.deterministic and not return_result:
            out = odeint(drift, noise, grid, method="euler", cond=cond)
            assert isinstance(out, Tensor)
            return out
        result = euler_maruyama(
            drift,
            self.diffusion,
            noise,
            grid,
            cond=cond,
            generator=generator,
            return_trajectory=return_result,
        )
        return result if return_result else result.x


def marginal_drift(
    flow: StochasticFlow,
    x_t: Tensor,
    t: Tensor,
    x0: Tensor,
    x1: Tensor,
    *,
    independent: bool,
) -> Tensor:
    """Minibatch estimate of the marginal drift ``E[b(x_t | x0, x1) | x_t]`` at each point.

    Row ``i`` of ``x_t`` (at time ``t[i]``) is scored against every pair ``j`` of the batch:

    * ``independent=True`` (``x0 ~ N(0, I)`` independent of ``x1``): ``x0`` is integrated out
      exactly. Given ``x1``, ``x_t ~ N(t x1, v I)`` with ``v = (1 - t)^2 + s_t^2`` and
      ``E[b | x_t, x1] = x1 - ((1 - t) - k s_t) (x_t - t x1) / v``; the weights are the
      posterior ``softmax_j(-||x_t - t x1_j||^2 / (2 v))``. Valid for any ``sigma`` (at
      ``sigma = 0`` it is the "stable target field" of the linear path).
    * ``independent=False`` (a coupling, e.g. minibatch OT): the pairs are kept; weights
      ``softmax_j(-||x_t - mu_j(t)||^2 / (2 s_t^2))`` and the conditional drift of each pair.
      Needs ``sigma > 0`` (with ``sigma = 0`` each point lies on its own pair's line only).

    The estimate is consistent as the batch grows (self-normalised importance sampling with
    the batch as the proposal); the row's own pair is included. Cost ``O(B^2 n)``.

    >>> flow = StochasticFlow(0.5)
    >>> x1 = torch.tensor([[1.0], [1.0]])  # one target point: the marginal is its bridge
    >>> x0 = torch.tensor([[0.0], [2.0]])
    >>> t = torch.tensor([0.5, 0.5])
    >>> b = marginal_drift(flow, torch.tensor([[0.5], [1.5]]), t, x0, x1, independent=True)
    >>> b.shape
    torch.Size([2, 1])
    """
    if not independent and flow.deterministic:
        raise ValueError(
            "the marginal drift of a coupled batch needs sigma > 0 (with sigma = 0 a point lies "
            "on its own pair's line only); use the conditional objective or sigma > 0"
        )
    b = x_t.shape[0]
    xf, x0f, x1f = x_t.flatten(1), x0.flatten(1), x1.flatten(1)
    n = xf.shape[1]
    tt = t.to(xf.dtype).unsqueeze(1)  # (B, 1)
    s = flow.std(tt)
    k = flow.coefficient(tt)
    if independent:
        v = (1 - tt) ** 2 + s**2  # (B, 1)
        centre = tt.unsqueeze(2) * x1f.unsqueeze(0)  # (B_i, B_j, n): t_i x1_j
        diff = xf.unsqueeze(1) - centre
        logits = -diff.pow(2).sum(2) / (2 * v)
        weights = torch.softmax(logits, dim=1)  # (B_i, B_j)
        coef = ((1 - tt) - k * s) / v  # (B, 1)
        cond_drift = x1f.unsqueeze(0) - coef.unsqueeze(2) * diff
    else:
        mu = (1 - tt).unsqueeze(2) * x0f.unsqueeze(0) + tt.unsqueeze(2) * x1f.unsqueeze(0)
        diff = xf.unsqueeze(1) - mu  # (B_i, B_j, n)
        s_safe = s.clamp_min(1e-12)
        logits = -diff.pow(2).sum(2) / (2 * s_safe**2)
        weights = torch.softmax(logits, dim=1)
        eps = diff / s_safe.unsqueeze(2)
        cond_drift = (x1f - x0f).unsqueeze(0) + k.unsqueeze(2) * eps
    out = (weights.unsqueeze(2) * cond_drift).sum(1)
    assert out.shape == (b, n)
    return out.reshape(x_t.shape)
