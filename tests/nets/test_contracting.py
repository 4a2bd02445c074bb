"""Tests of flowpost/nets/contracting.py: the Jacobian bound, contraction of trajectories and
the frozen-base residual field."""

import math

import pytest
import torch
from nets_helpers import perturb
from torch.autograd.functional import jacobian

from flowpost.nets.contracting import ContractingResidual, ResidualField
from flowpost.nets.mlp import MLPVelocity


@pytest.mark.parametrize("dim,rank", [(3, None), (5, 2), (64, None)])
def test_jacobian_symmetric_part_is_below_minus_mu(dim, rank):
    mu = 0.3
    r = perturb(ContractingResidual(dim, hidden=16, mu=mu, num_classes=4, rank=rank), std=0.3)
    for _ in range(3):
        x, t = torch.randn(1, dim) * 3, torch.rand(1)
        c = torch.randint(0, 5, (1,))
        jac = jacobian(lambda z, t=t, c=c: r(z, t, c), x)[0, :, 0, :]
        sym = 0.5 * (jac + jac.T)
        top = float(torch.linalg.eigvalsh(sym.double()).max())
        assert top <= -mu + 1e-5
        # and the Jacobian is the advertised -K(t, c)
        torch.testing.assert_close(jac, -r.gain(t, c)[0], atol=1e-5, rtol=1e-4)
    # a perturbed factor gives a K well above mu I: the bound is not trivially tight
    assert float(torch.linalg.eigvalsh(r.gain(torch.rand(1)).double()).max()) > 2 * mu


def test_images_are_flattened():
    r = ContractingResidual(64, hidden=16, mu=0.1)
    x = torch.randn(3, 1, 8, 8)
    assert r(x, torch.rand(3)).shape == x.shape
    assert r.rank == 8 and not r.full


def test_two_trajectories_converge_at_rate_mu():
    mu = 0.5
    r = perturb(ContractingResidual(4, hidden=16, mu=mu), std=0.3)
    x, y = torch.randn(8, 4) * 2, torch.randn(8, 4) * 2
    d0 = (x - y).norm(dim=1)
    steps, horizon = 400, 4.0
    h = horizon / steps
    gaps = [d0]
    with torch.no_grad():
        for k in range(steps):
            t = torch.full((8,), (k * h) % 1.0)  # the field's time input wraps in [0, 1)
            x = x + h * r(x, t)
            y = y + h * r(y, t)
            gaps.append((x - y).norm(dim=1))
    gaps_t = torch.stack(gaps)
    assert bool((gaps_t[1:] <= gaps_t[:-1] + 1e-6).all())  # never expands
    assert bool((gaps_t[-1] <= d0 * math.exp(-mu * horizon) * 1.01).all())


def test_initial_residual_is_a_mild_pull_to_the_origin():
    r = ContractingResidual(3, hidden=16, mu=0.2, init_scale=0.0)
    x = torch.randn(5, 3)
    torch.testing.assert_close(r(x, torch.rand(5)), -0.2 * x)


def test_factor_and_centre_are_trainable():
    r = ContractingResidual(3, hidden=16, mu=0.1, cond_dim=2)
    x, t, c = torch.randn(32, 3), torch.rand(32), torch.randn(32, 2)
    target = -(x - 1.0)  # pull towards (1, 1, 1) at rate 1
    opt = torch.optim.Adam(r.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss = (r(x, t, c) - target).pow(2).mean()
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss)
    assert float(loss) < 0.05 * first


def test_residual_field_freezes_the_base():
    base = perturb(MLPVelocity(3, hidden=16, depth=1, dropout=0.5))
    res = ContractingResidual(3, hidden=16, mu=0.1)
    field = ResidualField(base, res)
    field.train()
    assert not base.training and all(not p.requires_grad for p in base.parameters())
    x, t = torch.randn(4, 3), torch.rand(4)
    torch.testing.assert_close(field(x, t), base(x, t) + res(x, t))
    trainable = {id(p) for p in field.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in res.parameters()}
    field(x, t).pow(2).sum().backward()
    assert all(p.grad is None for p in base.parameters())


def test_errors():
    with pytest.raises(ValueError, match="mu must be > 0"):
        ContractingResidual(2, mu=0.0)
    with pytest.raises(ValueError, match="built for 2 features"):
        ContractingResidual(2, hidden=8)(torch.randn(3, 4), torch.rand(3))
