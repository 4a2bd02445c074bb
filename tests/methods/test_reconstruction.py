"""FT-FM / ResFT-FM: the loss on a hand-computed case, the encode/decode round trip against
the solver's order, the contraction bound of the residual, and what each method trains."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from flowpost.config import ConfigError
from flowpost.data.base import Batch, DataSpec
from flowpost.methods.reconstruction import (
    Reconstruction,
    ReconstructionConfig,
    ResidualReconstruction,
    ResidualReconstructionConfig,
    gaussian_nll,
    reconstruct,
)
from flowpost.nets.config import NetConfig
from flowpost.nets.contracting import ContractingResidual, ResidualField
from flowpost.nets.factory import build_contracting_residual
from flowpost.train.config import build_run_config

NET = NetConfig(hidden=32, depth=2)


class Linear(nn.Module):
    """``v(x, t) = k x``: the exact flow is ``x(1) = x(0) e^k``."""

    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.k * x


class Affine(nn.Module):
    """``v(x, t) = k x + b``: from ``z`` the exact flow ends at ``(z + b / k) e^k - b / k``;
    one Euler step of size ``h`` maps ``x`` to ``(1 + h k) x + h b``."""

    def __init__(self, k: float, b: float) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k))
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.k * x + self.b


class Smooth(nn.Module):
    """A smooth non-linear, time-dependent field for order measurements."""

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return torch.sin(x) * (1.0 + t[:, None]) - 0.5 * x + torch.cos(3.0 * t)[:, None]


def test_gaussian_nll_by_hand() -> None:
    x_hat, x1 = torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)
    # mean sq = 2.5; 2.5 / (2 * 0.25) + log 0.5
    nll = gaussian_nll(x_hat, x1, torch.tensor(math.log(0.5)))
    assert nll.item() == pytest.approx(5.0 + math.log(0.5), abs=1e-6)


def test_reconstruction_loss_on_a_linear_field_by_hand() -> None:
    # v = x: encode exactly (RK4, 64 steps) to z = x1 / e; one Euler step decodes 2 z.
    method = Reconstruction(
        ReconstructionConfig(nfe=1, encode_nfe=256, sigma=0.2, fm_weight=0.0), DataSpec((3,)), NET
    )
    method.policy, method.reference = Linear(1.0), Linear(1.0)
    x1 = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
    rec = method.losses(Batch(x1))["rec"]
    sq = ((2.0 / math.e - 1.0) ** 2 * x1**2).mean(1)
    expected = (sq / (2 * 0.2**2) + math.log(0.2)).mean()
    assert rec.item() == pytest.approx(expected.item(), rel=1e-5)
    rec.backward()  # the gradient reaches the decoder's parameters only
    assert method.policy.k.grad is not None and method.reference.k.grad is None


def test_also_nfe_averages_the_reconstruction_over_the_step_counts_by_hand() -> None:
    # v = x, codes z = x1 / e: 2 Euler steps decode (3/2)^2 z, 1 step 2 z, 4 steps (5/4)^4 z
    config = ReconstructionConfig(
        nfe=2, also_nfe=[1, 4, 2, 1], encode_nfe=256, sigma=0.2, fm_weight=0.0
    )
    assert config.decode_nfes == [2, 1, 4]  # the deployed count first, each count once
    method = Reconstruction(config, DataSpec((3,)), NET)
    method.policy, method.reference = Linear(1.0), Linear(1.0)
    x1 = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
    rec = method.losses(Batch(x1))["rec"]
    expected = 0.0
    for gain in (1.5**2, 2.0, 1.25**4):
        sq = ((gain / math.e - 1.0) ** 2 * x1**2).mean(1)
        expected += float((sq / (2 * 0.2**2) + math.log(0.2)).mean()) / 3
    assert rec.item() == pytest.approx(expected, rel=1e-5)


def test_also_nfe_counts_are_checked_like_nfe() -> None:
    with pytest.raises(ConfigError, match=r"^method\.also_nfe: 2 evaluations do not pay"):
        build_run_config({"method": {"name": "ft_fm", "solver": "rk4", "nfe": 4, "also_nfe": [2]}})
    # ResFT-FM: the largest Euler step, here also_nfe's 1, must not overshoot
    build_run_config({"method": {"name": "resft_fm", "mu": 1.5, "nfe": 2}})
    with pytest.raises(ConfigError, match=r"^method\.mu: .* >= 1, so one step"):
        build_run_config({"method": {"name": "resft_fm", "mu": 1.5, "nfe": 2, "also_nfe": [1]}})


def _two_euler_steps(k: float, b: float, z: Tensor) -> Tensor:
    half = (1 + k / 2) * z + b / 2
    return (1 + k / 2) * half + b / 2


def test_self_reconstruction_at_the_deterministic_code_by_hand() -> None:
    # reference v = x + 1 from z = 0 ends exactly at e - 1; the policy v = 0.5 x + 2 decodes
    # z = 0 in 2 Euler steps to 2.5 (and in 1 step to 2, averaged in by also_nfe)
    config = ReconstructionConfig(
        nfe=2, also_nfe=[1], encode_nfe=256, sigma=0.2, fm_weight=0.0, self_weight=0.5
    )
    method = Reconstruction(config, DataSpec((3,)), NET)
    method.policy, method.reference = Affine(0.5, 2.0), Affine(1.0, 1.0)
    terms = method.losses(Batch(torch.randn(4, 3)))
    expected = 0.0
    for end in (_two_euler_steps(0.5, 2.0, torch.zeros(())).item(), 2.0):
        expected += ((end - (math.e - 1)) ** 2 / (2 * 0.2**2) + math.log(0.2)) / 2
    assert terms["self_rec"].item() == pytest.approx(0.5 * expected, rel=1e-5)
    terms["self_rec"].backward()  # the gradient reaches the decoder only, not the frozen target
    assert method.policy.k.grad is not None and method.reference.b.grad is None


def test_self_reconstruction_on_sampled_codes_by_hand() -> None:
    # codes z = 0.7 eps: the target is the reference's exact end point from each z
    config = ReconstructionConfig(
        nfe=2, encode_nfe=256, sigma=0.2, fm_weight=0.0, self_weight=1.0, self_code_scale=0.7
    )
    method = Reconstruction(config, DataSpec((3,)), NET)
    method.policy, method.reference = Affine(0.5, 2.0), Affine(1.0, 1.0)
    x1 = torch.randn(5, 3)
    torch.manual_seed(3)
    got = method.self_reconstruction_nll(Batch(x1))
    torch.manual_seed(3)
    z = 0.7 * torch.randn_like(x1)
    target = (z + 1.0) * math.e - 1.0
    sq = (_two_euler_steps(0.5, 2.0, z) - target).pow(2).mean(1)
    assert got.item() == pytest.approx((sq / (2 * 0.2**2) + math.log(0.2)).mean().item(), rel=1e-5)


def test_self_reconstruction_is_off_by_default_and_at_z0_draws_nothing() -> None:
    # without code noise or the FM term the loss draws no random numbers: neither the
    # default (no self term) nor the self term at z = 0 may change the RNG stream
    x1 = torch.randn(4, 3)
    torch.manual_seed(0)
    untouched = torch.randn(1)
    for extra in ({}, {"self_weight": 1.0}):
        method = Reconstruction(ReconstructionConfig(fm_weight=0.0, **extra), DataSpec((3,)), NET)
        torch.manual_seed(0)
        assert set(method.losses(Batch(x1))) == ({"rec", "self_rec"} if extra else {"rec"})
        assert torch.equal(torch.randn(1), untouched)


def test_code_noise_adds_the_decoder_sensitivity_to_the_loss() -> None:
    # v = x, one Euler step: D(z + s eps) = 2 z + 2 s eps, so the expected squared error per
    # dimension is (2/e - 1)^2 x1^2 + 4 s^2: the noise costs s^2 |dD/dz|^2 on average
    s = 0.3
    method = Reconstruction(
        ReconstructionConfig(nfe=1, encode_nfe=256, sigma=1.0, fm_weight=0.0, code_noise=s),
        DataSpec((2,)),
        NET,
    )
    method.policy, method.reference = Linear(1.0), Linear(1.0)
    x1 = torch.tensor([[1.0, -2.0]]).repeat(20000, 1)
    torch.manual_seed(0)
    rec = method.losses(Batch(x1))["rec"]  # sigma 1: the loss is half the mean square
    expected = ((2.0 / math.e - 1.0) ** 2 * x1[0] ** 2).mean() + 4 * s**2
    assert 2 * rec.item() == pytest.approx(expected.item(), rel=0.02)
    plain = Reconstruction(
        ReconstructionConfig(nfe=1, encode_nfe=256, sigma=1.0, fm_weight=0.0), DataSpec((2,)), NET
    )
    plain.policy, plain.reference = Linear(1.0), Linear(1.0)
    assert 2 * plain.losses(Batch(x1))["rec"].item() == pytest.approx(
        expected.item() - 4 * s**2, rel=1e-5
    )


@pytest.mark.parametrize(("solver", "order"), [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_round_trip_error_follows_the_solver_order(solver: str, order: int) -> None:
    x1 = torch.linspace(-2, 2, 16)[:, None].repeat(1, 2)
    field = Smooth()
    per = {"euler": 1, "heun": 2, "rk4": 4}[solver]
    errors = []
    for steps in (4, 8, 16):
        x_hat = reconstruct(
            field, field, x1, None, nfe=steps * per, solver=solver,
            encode_nfe=4 * 512, encode_solver="rk4",
        )  # fmt: skip
        errors.append((x_hat - x1).abs().max().item())
    rates = [math.log2(a / b) for a, b in zip(errors[:-1], errors[1:])]
    assert all(abs(r - order) < 0.35 for r in rates), (errors, rates)


def _randomise(module: nn.Module, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize(("dim", "rank"), [(6, None), (40, None), (5, 2)])
@pytest.mark.parametrize("wide", [False, True], ids=["affine", "skew+potential"])
def test_residual_symmetric_jacobian_is_bounded_by_minus_mu(
    dim: int, rank: int | None, wide: bool
) -> None:
    mu = 0.7
    spec = DataSpec((dim,), cond_dim=3)
    extra = {"skew": True, "potential": 16} if wide else {}
    r = build_contracting_residual(spec, mu=mu, hidden=32, rank=rank, **extra)
    _randomise(r)  # an arbitrary (trained-like) residual, not the initialisation
    g = torch.Generator().manual_seed(1)
    worst, tol = -math.inf, 0.0
    for _ in range(24):
        x = torch.randn(1, dim, generator=g) * 3
        t = torch.rand(1, generator=g)
        c = torch.randn(1, 3, generator=g) * 2
        jac = torch.autograd.functional.jacobian(lambda z, t=t, c=c: r(z, t, c), x)[0, :, 0, :]
        jac = jac.double()
        sym = 0.5 * (jac + jac.T)
        worst = max(worst, torch.linalg.eigvalsh(sym).max().item())
        tol = max(tol, 1e-6 * jac.norm().item())  # float32 rounding of the entries of K
    assert worst <= -mu + tol
    # a rank-deficient factor leaves directions contracted at exactly mu (the potential's
    # curvature may cover them)
    if dim > (rank or 8) and not wide:
        assert worst == pytest.approx(-mu, abs=tol)


def test_a_mu_that_makes_the_euler_step_overshoot_is_one_clear_error() -> None:
    # 2 Euler steps of 0.5: the residual's step (I - 0.5 K) with K >= mu I flips at mu >= 2
    build_run_config({"method": {"name": "resft_fm", "mu": 1.9, "nfe": 2}})
    build_run_config({"method": {"name": "resft_fm", "mu": 2.0, "nfe": 4, "solver": "rk4"}})
    for mu, nfe in ((2.0, 2), (1.0, 1), (5.0, 4)):
        with pytest.raises(ConfigError, match=r"^method\.mu: .* >= 1, so one step"):
            build_run_config({"method": {"name": "resft_fm", "mu": mu, "nfe": nfe}})


def test_non_positive_mu_is_one_clear_error() -> None:
    for mu in (0.0, -1.0):
        with pytest.raises(ConfigError, match=r"^method\.mu: must be > 0"):
            build_run_config({"method": {"name": "resft_fm", "mu": mu}})


def test_a_max_gain_at_or_below_mu_is_one_clear_error() -> None:
    cfg = build_run_config({"method": {"name": "resft_fm", "mu": 0.1, "residual_max_gain": 1}})
    assert cfg.method.residual_max_gain == 1.0
    for cap in (0.1, 0.05):
        with pytest.raises(ConfigError, match=r"^method\.residual_max_gain: must be > mu"):
            build_run_config({"method": {"name": "resft_fm", "mu": 0.1, "residual_max_gain": cap}})


def test_the_residual_settings_reach_the_residual() -> None:
    spec = DataSpec((4,), cond_dim=2)
    cfg = ResidualReconstructionConfig(
        encode_nfe=8, mu=0.3, residual_skew=True, residual_potential=12, residual_hidden=24
    )
    method = ResidualReconstruction(cfg, spec, NET)
    assert isinstance(method.policy, ResidualField)
    residual = method.policy.residual
    assert isinstance(residual, ContractingResidual)
    assert (residual.mu, residual.skew, residual.potential) == (0.3, True, 12)
    assert residual.max_gain is None
    capped = ResidualReconstruction(
        ResidualReconstructionConfig(encode_nfe=8, mu=0.3, residual_max_gain=1.0), spec, NET
    )
    assert getattr(capped.policy.residual, "max_gain", None) == 1.0
    batch = Batch(torch.randn(32, 4), torch.randn(32, 2))
    sum(method.losses(batch).values()).backward()
    assert residual.skew_u_head.bias.grad is not None
    assert float(residual.skew_u_head.bias.grad.abs().max()) > 0  # the rotation trains
    assert float(residual.potential_weight_head.bias.grad.abs().max()) > 0
    with pytest.raises(ConfigError, match=r"^method\.residual_potential"):
        build_run_config({"method": {"name": "resft_fm", "residual_potential": -1}})
    anchored = ResidualReconstruction(
        ResidualReconstructionConfig(encode_nfe=8, residual_anchor="both"), spec, NET
    )
    assert isinstance(anchored.policy, ResidualField)
    assert getattr(anchored.policy.residual, "anchor", None) == "both"
    sum(anchored.losses(batch).values()).backward()
    with pytest.raises(ConfigError, match=r"^method\.residual_anchor"):
        build_run_config({"method": {"name": "resft_fm", "residual_anchor": "base"}})
    forced = ResidualReconstruction(
        ResidualReconstructionConfig(encode_nfe=8, residual_offset="force"), spec, NET
    )
    assert getattr(forced.policy.residual, "offset", None) == "force"
    sum(forced.losses(batch).values()).backward()
    with pytest.raises(ConfigError, match=r"^method\.residual_offset: 'force' has no explicit"):
        build_run_config(
            {"method": {"name": "resft_fm", "residual_offset": "force", "residual_potential": 4}}
        )


def test_resft_trains_only_the_residual_and_ft_fm_trains_the_whole_policy() -> None:
    spec = DataSpec((4,), cond_dim=2)
    batch = Batch(torch.randn(32, 4), torch.randn(32, 2))
    res = ResidualReconstruction(ResidualReconstructionConfig(encode_nfe=8), spec, NET)
    ft = Reconstruction(ReconstructionConfig(encode_nfe=8), spec, NET)
    for method, trained in ((res, "policy.residual."), (ft, "policy.")):
        params = dict(method.named_parameters())
        listed = {id(p) for spec_ in method.optimizers().values() for p in spec_.params}
        assert listed and all(n.startswith(trained) for n, p in params.items() if id(p) in listed)
        sum(method.losses(batch).values()).backward()
        assert all(p.grad is None for n, p in params.items() if not n.startswith(trained))


def test_learned_sigma_is_trained_with_the_policy() -> None:
    method = Reconstruction(
        ReconstructionConfig(learn_sigma=True, encode_nfe=8), DataSpec((2,)), NET
    )
    assert any(p is method.log_sigma for p in method.optimizers()["policy"].params)
    sum(method.losses(Batch(torch.randn(8, 2))).values()).backward()
    assert method.log_sigma.grad is not None


def test_pretrained_weights_load_into_the_frozen_base() -> None:
    spec = DataSpec((3,), num_classes=4)
    donor = ResidualReconstruction(ResidualReconstructionConfig(), spec, NET)
    state = {k: torch.randn_like(v) for k, v in donor.policy.base.state_dict().items()}
    method = ResidualReconstruction(ResidualReconstructionConfig(), spec, NET)
    method.load_pretrained(state)
    for key, value in state.items():
        assert torch.equal(method.policy.base.state_dict()[key], value)
        assert torch.equal(method.reference.state_dict()[key], value)


@pytest.mark.parametrize(
    "setting,copy_of",
    [({"residual_anchor_net": "trained"}, "anchor_net"), ({"residual_path_net": True}, "path_net")],
)
def test_a_trained_copy_starts_as_the_pretrained_field_and_trains_with_the_residual(
    setting: dict, copy_of: str
) -> None:
    """The trained anchor's and the path force's network: a copy of the pretrained field
    that loads its weights, is in the optimiser and gets the gradient (the base does not)."""
    spec = DataSpec((3,), cond_dim=2)
    cfg = ResidualReconstructionConfig(encode_nfe=8, residual_anchor="centre", **setting)
    method = ResidualReconstruction(cfg, spec, NET)
    own = getattr(method, copy_of)()
    assert own is not None and own is not method.policy.base
    other = "path_net" if copy_of == "anchor_net" else "anchor_net"
    assert getattr(method, other)() is None
    state = {k: torch.randn_like(v) for k, v in method.policy.base.state_dict().items()}
    method.load_pretrained(state)
    for key, value in state.items():  # the pretrained weights, in the base and the copy
        assert torch.equal(own.state_dict()[key], value)
        assert torch.equal(method.policy.base.state_dict()[key], value)
    listed = {id(p) for spec_ in method.optimizers().values() for p in spec_.params}
    assert all(id(p) in listed for p in own.parameters())
    assert not any(id(p) in listed for p in method.policy.base.parameters())
    sum(method.losses(Batch(torch.randn(16, 3), torch.randn(16, 2))).values()).backward()
    assert any(p.grad is not None and float(p.grad.abs().max()) > 0 for p in own.parameters())
    assert all(p.grad is None for p in method.policy.base.parameters())
    name = next(iter(setting))  # without an anchor mode: one line naming the setting
    with pytest.raises(ConfigError, match=rf"^method\.{name}"):
        build_run_config({"method": {"name": "resft_fm", **setting}})


def test_with_both_the_path_force_uses_the_trained_anchor_s_copy() -> None:
    shared = ResidualReconstruction(
        ResidualReconstructionConfig(
            encode_nfe=8,
            residual_anchor="centre",
            residual_anchor_net="trained",
            residual_path_net=True,
        ),
        DataSpec((3,), cond_dim=2),
        NET,
    )
    assert shared.path_net() is not None and shared.path_net() is shared.anchor_net()
