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


@pytest.mark.parametrize("dim,rank", [(3, None), (5, 2), (40, None)])
def test_skew_and_potential_keep_the_bound(dim, rank):
    """With the rotation S and the convex potential, the Jacobian is -K - H, whose symmetric
    part is -(L L^T + mu I) - H with H = Hess phi >= 0: still <= -mu."""
    mu = 0.3
    r = ContractingResidual(dim, hidden=16, mu=mu, cond_dim=2, rank=rank, skew=True, potential=12)
    r = perturb(r, std=0.3)
    with torch.no_grad():
        r.potential_weight_head.bias.fill_(1.0)  # a ~ 1.3: the potential matters
    saw_skew = saw_curvature = False
    for _ in range(3):
        x, t, c = torch.randn(1, dim) * 2, torch.rand(1), torch.randn(1, 2)
        jac = jacobian(lambda z, t=t, c=c: r(z, t, c), x)[0, :, 0, :]
        sym = 0.5 * (jac + jac.T)
        scale = float(jac.abs().max())  # float32 rounding of the entries, relative
        assert float(torch.linalg.eigvalsh(sym.double()).max()) <= -mu + 1e-6 * scale
        # the Jacobian is -K (with its skew part) minus the potential's Hessian, and that
        # Hessian is symmetric and positive semi-definite
        hess = (-jac - r.gain(t, c)[0]).double()
        torch.testing.assert_close(hess, hess.T, atol=1e-6 * scale, rtol=0)
        assert float(torch.linalg.eigvalsh(0.5 * (hess + hess.T)).min()) >= -1e-6 * scale
        gain = r.gain(t, c)[0]
        saw_skew |= float((gain - gain.T).abs().max()) > 1e-2
        saw_curvature |= float(torch.linalg.eigvalsh(hess).max()) > 1e-2
    assert saw_skew and saw_curvature  # both terms are live, so the bound was tested on them


def test_potential_gradient_is_the_gradient_of_a_convex_potential():
    r = perturb(ContractingResidual(4, hidden=16, mu=0.1, potential=8), std=0.5)
    x, t = torch.randn(6, 4, requires_grad=True), torch.rand(6)
    # the closed-form gradient against autograd of phi, and against central differences
    (auto,) = torch.autograd.grad(r.potential_energy(x, t).sum(), x)
    grad = r.potential_gradient(x, t)
    torch.testing.assert_close(grad, auto, atol=1e-6, rtol=1e-5)
    eps = 1e-2
    with torch.no_grad():
        for i in range(4):
            step = torch.zeros_like(x)
            step[:, i] = eps
            fd = (r.potential_energy(x + step, t) - r.potential_energy(x - step, t)) / (2 * eps)
            torch.testing.assert_close(grad[:, i], fd, atol=2e-3, rtol=2e-3)
    assert float(grad.abs().max()) > 0.05  # the check is not on a vanishing gradient
    # convex along random chords: phi(midpoint) <= mean of the ends
    x = x.detach()
    y = torch.randn(6, 4) * 3
    mid = r.potential_energy((x + y) / 2, t)
    assert bool((mid <= (r.potential_energy(x, t) + r.potential_energy(y, t)) / 2 + 1e-5).all())


def test_optional_terms_start_small():
    x, t = torch.randn(5, 3), torch.rand(5)
    plain = ContractingResidual(3, hidden=16, mu=0.2, init_scale=0.0)
    full = ContractingResidual(3, hidden=16, mu=0.2, init_scale=0.0, skew=True, potential=16)
    torch.testing.assert_close(plain(x, t), -0.2 * x)
    # S = 0; the potential, centred at m = 0, adds about a / 4 = 0.012 to the gain
    extra = full(x, t) + 0.2 * x
    assert float(extra.norm(dim=1).max()) < 0.05 * float(x.norm(dim=1).min())
    assert float(extra.norm()) > 0  # but is there, so that it trains


def test_the_potential_fits_a_pull_no_affine_contraction_can():
    """A target no affine contraction can fit (a pull whose strength depends on x) is fitted
    far better with the convex potential."""
    torch.manual_seed(0)
    x, t = torch.randn(256, 2) * 2, torch.rand(256)
    target = -torch.tanh(3 * x) * 2 - 0.1 * x  # monotone, saturating: non-affine

    def fit(**kw: object) -> float:
        r = ContractingResidual(2, hidden=16, mu=0.1, **kw)  # type: ignore[arg-type]
        opt = torch.optim.Adam(r.parameters(), lr=1e-2)
        for _ in range(400):
            opt.zero_grad()
            loss = (r(x, t) - target).pow(2).mean()
            loss.backward()
            opt.step()
        return float(loss)

    affine, convex = fit(), fit(potential=32)
    assert convex < 0.25 * affine


def test_the_centre_is_the_fixed_point_with_every_term():
    r = perturb(ContractingResidual(3, hidden=16, mu=0.2, cond_dim=2, skew=True, potential=8), 0.3)
    t, c = torch.rand(5), torch.randn(5, 2)
    _, centre = r.factor_and_centre(t, c)
    assert float(centre.abs().max()) > 0.05
    torch.testing.assert_close(r(centre, t, c), torch.zeros_like(centre), atol=1e-5, rtol=0)


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


@pytest.mark.parametrize("mode", ["centre", "input", "both"])
def test_the_anchor_keeps_the_bound(mode):
    """The anchor a(c) is a function of the condition only: the Jacobian stays -K."""
    mu = 0.3
    r = perturb(ContractingResidual(4, hidden=16, mu=mu, cond_dim=2, anchor=mode), std=0.3)
    for _ in range(3):
        x, t, c, a = torch.randn(1, 4) * 2, torch.rand(1), torch.randn(1, 2), torch.randn(1, 4)
        jac = jacobian(lambda z, t=t, c=c, a=a: r(z, t, c, anchor=a), x)[0, :, 0, :]
        torch.testing.assert_close(jac, -r.gain(t, c, anchor=a)[0], atol=1e-5, rtol=1e-4)
        sym = 0.5 * (jac + jac.T)
        assert float(torch.linalg.eigvalsh(sym.double()).max()) <= -mu + 1e-5


def test_the_anchored_centre_starts_on_the_straight_path_to_the_anchor():
    r = ContractingResidual(3, hidden=16, mu=0.2, cond_dim=2, anchor="centre")
    t, c, a = torch.rand(5), torch.randn(5, 2), torch.randn(5, 3)
    _, centre = r.factor_and_centre(t, c, anchor=a)
    torch.testing.assert_close(centre, t[:, None] * a)  # the learned offset starts at zero
    # so a state on that path is pulled nowhere at the start
    torch.testing.assert_close(r(t[:, None] * a, t, c, anchor=a), torch.zeros(5, 3))
    # as an input only, the anchor changes nothing until training moves its embedding
    plain = perturb(ContractingResidual(3, hidden=16, mu=0.2, cond_dim=2), std=0.3)
    fed = ContractingResidual(3, hidden=16, mu=0.2, cond_dim=2, anchor="input")
    fed.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(5, 3)
    torch.testing.assert_close(fed(x, t, c, anchor=a), plain(x, t, c))
    perturb(fed.anchor_embed, std=0.5)
    assert not torch.allclose(fed(x, t, c, anchor=a), plain(x, t, c))


def test_an_anchored_residual_starts_as_the_base_s_deterministic_one_and_two_step_map():
    """With m = t a(c) and a(c) = base(0, 0, c), Euler from z = 0 visits 0 and a / 2, both
    on the centre's path, so at the start the residual adds nothing there: the field's 1- and
    2-step maps of z = 0 are the base's (what lets ResFT-FM keep its start as the pretrained
    policy); elsewhere, and at 4 steps, it does change the field."""
    from flowpost.flows.solvers import sample

    base = perturb(MLPVelocity(3, hidden=16, depth=1, cond_dim=2))
    field = ResidualField(
        base, ContractingResidual(3, hidden=16, mu=0.3, cond_dim=2, anchor="centre")
    )
    c, zero = torch.randn(6, 2), torch.zeros(6, 3)
    with torch.no_grad():
        for nfe in (1, 2):
            torch.testing.assert_close(
                sample(field, zero, nfe, "euler", cond=c), sample(base, zero, nfe, "euler", cond=c)
            )
        z = torch.randn(6, 3)
        assert not torch.allclose(
            sample(field, z, 2, "euler", cond=c), sample(base, z, 2, "euler", cond=c)
        )
        assert not torch.allclose(
            sample(field, zero, 4, "euler", cond=c), sample(base, zero, 4, "euler", cond=c)
        )


def test_the_residual_field_passes_the_base_one_step_end_point_as_the_anchor():
    base = perturb(MLPVelocity(3, hidden=16, depth=1, cond_dim=2))
    res = perturb(ContractingResidual(3, hidden=16, mu=0.1, cond_dim=2, anchor="both"))
    field = ResidualField(base, res)
    x, t, c = torch.randn(6, 3), torch.rand(6), torch.randn(6, 2)
    anchor = base(torch.zeros(6, 3), torch.zeros(6), c)
    torch.testing.assert_close(field(x, t, c), base(x, t, c) + res(x, t, c, anchor=anchor))
    # a scalar time works as for any field
    torch.testing.assert_close(field(x, torch.tensor(0.5), c), field(x, torch.full((6,), 0.5), c))
    x.requires_grad_(True)
    field(x, t, c).sum().backward()
    assert all(p.grad is None for p in base.parameters())
    assert res.anchor_embed is not None and res.anchor_embed.weight.grad is not None


def test_a_trained_anchor_net_keeps_the_bound_and_gets_the_gradient():
    base = perturb(MLPVelocity(3, hidden=16, depth=1, cond_dim=2))
    own = perturb(MLPVelocity(3, hidden=16, depth=1, cond_dim=2))
    res = perturb(
        ContractingResidual(3, hidden=16, mu=0.2, cond_dim=2, anchor="centre", anchor_net=own)
    )
    field = ResidualField(base, res)
    x, t, c = torch.randn(4, 3), torch.rand(4), torch.randn(4, 2)
    anchor = own(torch.zeros(4, 3), torch.zeros(4), c)
    torch.testing.assert_close(field(x, t, c), base(x, t, c) + res(x, t, c, anchor=anchor))
    # the field's Jacobian less the base's is -K: the anchor net adds nothing in x
    x1, t1, c1 = x[:1], t[:1], c[:1]
    jac = jacobian(lambda z: field(z, t1, c1) - base(z, t1, c1), x1)[0, :, 0, :]
    torch.testing.assert_close(jac, -res.gain(t1, c1, anchor=anchor[:1])[0], atol=1e-5, rtol=1e-4)
    field(x, t, c).pow(2).sum().backward()
    assert all(p.grad is not None for p in own.parameters())
    assert all(p.grad is None for p in base.parameters())
    with pytest.raises(ValueError, match="anchor_net needs an anchor mode"):
        ContractingResidual(3, anchor_net=own)


def test_the_path_force_is_zero_for_a_copy_of_the_base_and_keeps_the_bound():
    """f = path(t a, t, c) - base(t a, t, c): zero while the path net equals the base (the
    start is exactly the anchored residual's), then x-independent: the field's Jacobian less
    the base's is still -K, while the path net gets the gradient and the base none."""
    import copy

    from flowpost.flows.solvers import sample

    base = perturb(MLPVelocity(3, hidden=16, depth=1, cond_dim=2))
    path = copy.deepcopy(base)
    res = ContractingResidual(3, hidden=16, mu=0.2, cond_dim=2, anchor="centre", path_net=path)
    field = ResidualField(base, res)
    x, t, c = torch.randn(5, 3), torch.rand(5), torch.randn(5, 2)
    anchor = base(torch.zeros(5, 3), torch.zeros(5), c)
    torch.testing.assert_close(field(x, t, c), base(x, t, c) + res(x, t, c, anchor=anchor))
    zero = torch.zeros(5, 3)
    with torch.no_grad():  # the anchored start: the base's 1- and 2-step maps of z = 0
        for nfe in (1, 2):
            torch.testing.assert_close(
                sample(field, zero, nfe, "euler", cond=c), sample(base, zero, nfe, "euler", cond=c)
            )
    perturb(path, std=0.3)  # a trained path net
    perturb(res, std=0.3)
    point = t[:, None] * anchor
    force = path(point, t, c) - base(point, t, c)
    assert float(force.abs().max()) > 1e-3
    torch.testing.assert_close(field(x, t, c), base(x, t, c) + res(x, t, c, anchor=anchor) + force)
    x1, t1, c1 = x[:1], t[:1], c[:1]
    jac = jacobian(lambda z: field(z, t1, c1) - base(z, t1, c1), x1)[0, :, 0, :]
    torch.testing.assert_close(jac, -res.gain(t1, c1, anchor=anchor[:1])[0], atol=1e-5, rtol=1e-4)
    sym = 0.5 * (jac + jac.T)
    assert float(torch.linalg.eigvalsh(sym.double()).max()) <= -0.2 + 1e-5
    field(x, t, c).pow(2).sum().backward()
    assert all(p.grad is not None for p in path.parameters())
    assert all(p.grad is None for p in base.parameters())
    with pytest.raises(ValueError, match="path_net needs an anchor mode"):
        ContractingResidual(3, path_net=path)


def test_one_trained_copy_as_anchor_and_path_net_gives_its_own_one_and_two_step_maps():
    """With the same copy as anchor_net and path_net (and the centre's learned offset at
    zero), Euler from z = 0 visits t a(c) with a(c) = copy(0, 0, c): the field there is the
    copy's, so the deterministic 1- and 2-step maps are the copy's, however far it has moved
    from the base; the Jacobian less the base's is still -K."""
    import copy

    from flowpost.flows.solvers import sample

    base = perturb(MLPVelocity(3, hidden=16, depth=1, cond_dim=2))
    own = perturb(copy.deepcopy(base), std=0.3)  # a copy that training has moved
    res = ContractingResidual(
        3, hidden=16, mu=0.2, cond_dim=2, anchor="centre", anchor_net=own, path_net=own
    )
    field = ResidualField(base, res)
    c, zero = torch.randn(6, 2), torch.zeros(6, 3)
    with torch.no_grad():
        for nfe in (1, 2):
            got, want = (
                sample(field, zero, nfe, "euler", cond=c),
                sample(own, zero, nfe, "euler", cond=c),
            )
            torch.testing.assert_close(got, want)
        assert not torch.allclose(
            sample(own, zero, 2, "euler", cond=c), sample(base, zero, 2, "euler", cond=c)
        )
    x1, t1, c1 = torch.randn(1, 3), torch.rand(1), c[:1]
    a1 = own(torch.zeros(1, 3), torch.zeros(1), c1)
    jac = jacobian(lambda z: field(z, t1, c1) - base(z, t1, c1), x1)[0, :, 0, :]
    torch.testing.assert_close(jac, -res.gain(t1, c1, anchor=a1)[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dim,rank", [(4, None), (40, 3)])
def test_max_gain_caps_the_gain_and_keeps_the_bound(dim, rank):
    mu, cap = 0.2, 1.5
    capped = ContractingResidual(dim, hidden=16, mu=mu, num_classes=3, rank=rank, max_gain=cap)
    perturb(capped, std=1.0)  # a factor far above the cap
    free = ContractingResidual(dim, hidden=16, mu=mu, num_classes=3, rank=rank)
    free.load_state_dict(capped.state_dict())
    t, c = torch.rand(64), torch.randint(0, 4, (64,))
    eig_free = torch.linalg.eigvalsh(free.gain(t, c).double())
    eig_capped = torch.linalg.eigvalsh(capped.gain(t, c).double())
    assert float(eig_free[:, -1].min()) > 2 * cap  # the cap has work to do on every input
    # the top eigenvalue is at the cap, the bottom still at mu (the whole factor is scaled)
    torch.testing.assert_close(
        eig_capped[:, -1], torch.full((64,), cap).double(), atol=1e-4, rtol=0
    )
    assert float(eig_capped.min()) >= mu - 1e-5
    # and the field is still -K (x - m) with that capped K: the Jacobian bound is unchanged
    x = torch.randn(1, dim)
    jac = jacobian(lambda z: capped(z, t[:1], c[:1]), x)[0, :, 0, :]
    torch.testing.assert_close(jac, -capped.gain(t[:1], c[:1])[0], atol=1e-5, rtol=1e-4)


def test_max_gain_changes_nothing_below_the_cap():
    capped = ContractingResidual(6, hidden=16, mu=0.1, max_gain=50.0)
    free = ContractingResidual(6, hidden=16, mu=0.1)
    perturb(capped, std=0.1)
    free.load_state_dict(capped.state_dict())
    x, t = torch.randn(32, 6), torch.rand(32)
    assert float(torch.linalg.eigvalsh(free.gain(t).double()).max()) < 50.0
    torch.testing.assert_close(capped(x, t), free(x, t))


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_with_max_gain_one_over_h_an_euler_step_of_the_residual_never_overshoots(steps):
    """The reason for the cap: x - m -> (I - h K)(x - m) with mu <= eig(K) <= 1 / h has every
    eigenvalue in [0, 1 - h mu]. Without the cap the same weights flip states past m."""
    h, mu = 1.0 / steps, 0.1
    capped = perturb(ContractingResidual(5, hidden=16, mu=mu, max_gain=1.0 / h), std=1.0)
    free = ContractingResidual(5, hidden=16, mu=mu)
    free.load_state_dict(capped.state_dict())
    x, t = torch.randn(256, 5) * 2, torch.rand(256)
    _, centre = capped.factor_and_centre(t)
    before = x - centre
    after = x + h * capped(x, t) - centre
    assert float((after * before).sum(1).min()) >= -1e-5  # never past the centre
    ratio = after.norm(dim=1) / before.norm(dim=1)
    assert float(ratio.max()) <= 1 - h * mu + 1e-5
    flipped = x + h * free(x, t) - centre
    assert float((flipped * before).sum(1).min()) < 0  # the uncapped field does overshoot


def test_max_gain_passes_the_gradient_to_the_factor():
    r = perturb(ContractingResidual(4, hidden=16, mu=0.1, max_gain=0.5), std=1.0)
    x, t = torch.randn(16, 4), torch.rand(16)
    r(x, t).pow(2).sum().backward()
    grad = r.factor_head.bias.grad
    assert grad is not None and bool(torch.isfinite(grad).all()) and float(grad.abs().max()) > 0


def test_the_cap_s_gradient_matches_finite_differences():
    # float64 factors, some above the cap (scaled) and one below it (untouched)
    gen = torch.Generator().manual_seed(0)
    factor = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64)
    factor[2] *= 0.05
    assert torch.autograd.gradcheck(
        lambda f: ContractingResidual._cap_factor(f, 0.5), (factor.requires_grad_(),)
    )


@pytest.mark.parametrize("dim,rank,skew", [(3, None, False), (5, 2, True), (40, None, True)])
def test_the_force_offset_is_the_same_family_with_the_same_bound(dim, rank, skew):
    """offset='force': r = -K x + f. Its Jacobian is still -K (bound unchanged) and it is
    the centre form with m = K^-1 f, the centre factor_and_centre solves for (a fixed point).
    Tolerances relative to the gain's entries (float32 rounding; here up to tens)."""
    mu = 0.3
    r = ContractingResidual(dim, hidden=16, mu=mu, cond_dim=2, rank=rank, skew=skew, offset="force")
    r = perturb(r, std=0.3)
    x, t, c = torch.randn(1, dim) * 2, torch.rand(1), torch.randn(1, 2)
    jac = jacobian(lambda z: r(z, t, c), x)[0, :, 0, :]
    gain = r.gain(t, c)[0]
    scale = float(gain.abs().max())
    torch.testing.assert_close(jac, -gain, atol=1e-6 * scale, rtol=1e-5)
    assert float(torch.linalg.eigvalsh((0.5 * (jac + jac.T)).double()).max()) <= -mu + 1e-6 * scale
    assert float(torch.linalg.eigvalsh((0.5 * (gain + gain.T)).double()).max()) > 2 * mu
    _, centre = r.factor_and_centre(t, c)
    assert float(centre.abs().max()) > 0.05
    size = scale * dim * max(1.0, float(centre.abs().max()))  # |K m| can reach this
    torch.testing.assert_close(r(centre, t, c), torch.zeros_like(centre), atol=1e-6 * size, rtol=0)
    torch.testing.assert_close(r(x, t, c), -(x - centre) @ gain.T, atol=1e-6 * size, rtol=1e-4)


def test_the_force_offset_moves_the_field_directly():
    """Why the offset exists: a unit change of the offset head's bias moves the field at the
    origin by K (about mu = 0.1 at init) as a centre, by 1 as a force."""
    moved = {}
    for offset in ("centre", "force"):
        r = ContractingResidual(3, hidden=8, mu=0.1, offset=offset)
        x, t = torch.zeros(1, 3), torch.rand(1)
        before = r(x, t)
        with torch.no_grad():
            r.centre_head.bias[0] += 1.0
        moved[offset] = float((r(x, t) - before)[0, 0])
    assert moved["force"] == pytest.approx(1.0, abs=1e-5)
    assert 0.1 <= moved["centre"] < 0.15  # K[0, 0] = mu + (L L^T)[0, 0], L small at init


def test_errors():
    with pytest.raises(ValueError, match="mu must be > 0"):
        ContractingResidual(2, mu=0.0)
    with pytest.raises(ValueError, match="built for 2 features"):
        ContractingResidual(2, hidden=8)(torch.randn(3, 4), torch.rand(3))
    with pytest.raises(ValueError, match="max_gain must be > mu"):
        ContractingResidual(2, mu=0.5, max_gain=0.5)
    with pytest.raises(ValueError, match="potential must be >= 0"):
        ContractingResidual(2, potential=-1)
    with pytest.raises(ValueError, match="anchor must be one of"):
        ContractingResidual(2, anchor="base")
    with pytest.raises(ValueError, match="offset must be one of"):
        ContractingResidual(2, offset="push")
    with pytest.raises(ValueError, match="no centre for the potential"):
        ContractingResidual(2, offset="force", potential=4)
    with pytest.raises(ValueError, match="pass the pretrained field's anchor"):
        ContractingResidual(2, hidden=8, anchor="centre")(torch.randn(3, 2), torch.rand(3))
