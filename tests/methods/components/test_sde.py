"""Tests of flowpost/methods/components/sde.py: the marginal-preserving SDE keeps a point mass and
scores its own roll-out."""

from __future__ import annotations

import torch
from torch import Tensor

from flowpost.methods.components.common import solver_grid
from flowpost.methods.components.sde import sde_log_prob, sde_rollout

torch.set_num_threads(1)


def test_sde_log_prob_scores_the_rollout_and_the_rollout_keeps_marginals_for_exact_field() -> None:
    # data = a point mass at m: the exact velocity is v(x, t) = (m - x) / (1 - t)
    m = torch.tensor([1.0, -2.0])

    def v(x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return (m - x) / (1 - t[:, None]).clamp_min(1e-3)

    torch.manual_seed(0)
    traj = sde_rollout(v, torch.randn(2000, 2), solver_grid(50), 0.8)
    # the marginal-preserving SDE ends (close to) the point mass as the ODE would
    assert float((traj.final - m).abs().max()) < 0.2
    lp = sde_log_prob(v, traj, 0.8)
    assert lp.shape == (2000,) and bool(torch.isfinite(lp).all())
