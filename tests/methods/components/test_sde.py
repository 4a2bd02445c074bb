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


def _gaussian_velocity(mu: Tensor, s: float):  # type: ignore[no-untyped-def]
    """The exact velocity of the linear path from N(0, I) to N(mu, s^2 I):
    ``v = mu + (t s^2 - (1 - t)) / sigma_t^2 (x - t mu)``, ``sigma_t^2 = (1-t)^2 + t^2 s^2``."""

    def v(x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        te = t[:, None]
        var = (1 - te) ** 2 + te**2 * s**2
        return mu + (te * s**2 - (1 - te)) / var * (x - te * mu)

    return v


def test_sde_keeps_the_gaussian_marginals_in_closed_form() -> None:
    """With the exact field of a Gaussian target, the SDE's marginal at every grid time is
    N(t mu, (1-t)^2 + t^2 s^2): mean and std checked at t = 0.5 and t = 1. A flipped score
    sign in the drift (v + a^2/2 (x - t v)) inflates the std at t = 1 by more than 50%."""
    mu, s = torch.tensor([1.5, -0.5]), 0.3
    v = _gaussian_velocity(mu, s)
    torch.manual_seed(0)
    traj = sde_rollout(v, torch.randn(20000, 2), solver_grid(200), 1.0)
    for k, t in ((100, 0.5), (200, 1.0)):
        x = traj.states[k]
        std = ((1 - t) ** 2 + t**2 * s**2) ** 0.5
        assert float((x.mean(0) - t * mu).abs().max()) < 0.03, t
        assert abs(float(x.std(0).mean()) / std - 1) < 0.05, t

    from flowpost.flows.sde import euler_maruyama

    def flipped(x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        vx = v(x, t)
        return vx + 0.5 * (x - t[:, None] * vx)

    torch.manual_seed(0)
    bad = euler_maruyama(flipped, lambda t: (1 - t) ** 0.5, torch.randn(20000, 2), solver_grid(200))
    assert float(bad.x.std(0).mean()) > 1.5 * s


def test_sde_policy_gradient_moves_toward_the_reward() -> None:
    """The sign of the SDE likelihood ratio: PPO steps on SDE roll-outs with reward x_0 must
    raise the mean of x_0 (a flipped ratio, log_old - log_new, lowers it), and the roll-out
    is more likely under the policy that drew it than under a perturbed one."""
    from flowpost.data.base import Batch, DataSpec
    from flowpost.methods.components.policy import PolicyConfig, policy_update
    from flowpost.nets.config import NetConfig
    from flowpost.nets.factory import build_velocity_net
    from flowpost.train.updater import OptimizerUpdater

    torch.manual_seed(0)
    net = build_velocity_net(NetConfig(hidden=32, depth=2, time_embed_dim=8), DataSpec((2,)))
    ref = build_velocity_net(NetConfig(hidden=32, depth=2, time_embed_dim=8), DataSpec((2,)))
    cfg = PolicyConfig(variant="pg", pg_estimator="sde", nfe=4, pg_group_size=8, pg_epochs=2)
    traj = sde_rollout(net, torch.randn(256, 2), solver_grid(4), cfg.pg_sde_noise)
    own = sde_log_prob(net, traj, cfg.pg_sde_noise)
    with torch.no_grad():
        other = sde_log_prob(lambda x, t, c=None: net(x, t, c) + 0.3, traj, cfg.pg_sde_noise)
    assert float((own - other).mean().detach()) > 0
    up = OptimizerUpdater({"policy": torch.optim.Adam(net.parameters(), lr=3e-3)})
    noise = torch.randn(2000, 2)

    def mean_x0() -> float:
        with torch.no_grad():
            return float(
                sde_rollout(net, noise, solver_grid(4), cfg.pg_sde_noise).final[:, 0].mean()
            )

    before = mean_x0()
    for _ in range(15):
        policy_update(net, ref, Batch(torch.zeros(256, 2)), cfg, up,
                      score=lambda x, c: {}, reward=lambda x, c: x[:, 0])  # fmt: skip
    assert mean_x0() > before + 0.3
