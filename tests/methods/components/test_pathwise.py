"""Tests of flowpost/methods/components/pathwise.py: the local one-step estimator by hand and its
exactness on straight lines, the pathwise gradient against finite differences."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from flowpost.methods.components.adversarial import adversarial_policy_loss
from flowpost.methods.components.common import solver_grid
from flowpost.methods.components.pathwise import local_pd_points, pathwise_sample

torch.set_num_threads(1)


def test_local_estimator_hand_computed() -> None:
    c = torch.tensor([3.0, -1.0])
    policy = lambda x, t, cond: c.expand_as(x)  # noqa: E731
    x0 = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    x1 = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    grid = solver_grid(2)  # [0, 0.5, 1]
    pts = local_pd_points(policy, x0, x1, grid, mc_timesteps=1, t_min=1e-3,
                          step_index=torch.tensor([0, 1]))  # fmt: skip
    # step 0: t = 0, dt = 0.5, t' = 0.5: x_hat = (x0 + 0.5 c - 0.5 x0) / 0.5 = x0 + c
    assert pts.x_hat[0].tolist() == pytest.approx([4.0, 1.0])
    # step 1: t = 0.5, t' = 1: x_hat = x_t + 0.5 c = 0.5 (x0 + x1) + 0.5 c
    assert pts.x_hat[1].tolist() == pytest.approx([2.5, 1.0])
    # the policy loss is softplus(-D(x_hat)); for D(x) = x_0 - x_1 by hand:
    loss = adversarial_policy_loss(pts.x_hat[:, 0] - pts.x_hat[:, 1])
    assert loss.tolist() == pytest.approx([math.log(1 + math.exp(-3.0)),
                                           math.log(1 + math.exp(-1.5))], abs=1e-6)  # fmt: skip


@pytest.mark.parametrize("nfe", [1, 4, 7])
def test_local_estimate_is_x1_for_the_straight_line_velocity(nfe: int) -> None:
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    m = 3
    u = (x1 - x0).repeat_interleave(m, dim=0)
    pts = local_pd_points(lambda x, t, c: u, x0, x1, solver_grid(nfe), mc_timesteps=m, t_min=1e-6)
    assert torch.allclose(pts.x_hat, x1.repeat_interleave(m, dim=0), atol=1e-5)
    assert set(pts.t.tolist()) <= set(solver_grid(nfe)[:-1].tolist())


class LinearField(nn.Module):
    """v(x, t) = A x + b t: a tiny model whose ODE solution is smooth in (A, b)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.A = nn.Parameter(0.3 * torch.randn(2, 2, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(2, generator=g, dtype=torch.float64))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return x @ self.A.T + t[:, None] * self.b


@pytest.mark.parametrize("checkpoint", [True, False])
def test_pathwise_gradient_matches_finite_differences(checkpoint: bool) -> None:
    model = LinearField()
    w = torch.tensor([1.0, -0.5], dtype=torch.float64)
    x0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def loss() -> Tensor:
        x_hat = pathwise_sample(model, x0, nfe=3, solver="euler",
                                checkpoint=checkpoint)  # fmt: skip
        return adversarial_policy_loss(x_hat @ w).mean()

    loss().backward()
    assert model.A.grad is not None
    auto = model.A.grad.clone()
    eps = 1e-6
    fd = torch.zeros_like(auto)
    with torch.no_grad():
        for i in range(2):
            for j in range(2):
                model.A[i, j] += eps
                up = float(loss())
                model.A[i, j] -= 2 * eps
                down = float(loss())
                model.A[i, j] += eps
                fd[i, j] = (up - down) / (2 * eps)
    assert torch.allclose(auto, fd, rtol=1e-5, atol=1e-8)
