"""Tests of Adversarial Flow Models (flowpost/methods/adversarial.py): every loss term against
hand-computed values, the discriminator's blindness to the source, gradient normalisation,
the ot_weight schedules, the timesteps and sampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowpost.data.base import Batch, DataSpec
from flowpost.flows import random as frandom
from flowpost.methods.adversarial import (
    AdversarialFlow,
    AFConfig,
    ot_loss,
)
from flowpost.methods.base import get_method_class
from flowpost.methods.components.adversarial import (
    centering_penalty,
    finite_difference_penalty,
    relativistic_loss,
)
from flowpost.nets.config import NetConfig
from flowpost.nets.mlp import MLPVelocity
from flowpost.train import guard
from flowpost.train.updater import OptimizerUpdater

torch.set_num_threads(1)


class LinearG(nn.Module):
    """g(x, a, b) = x W + a u + b v: simple enough to check values by hand."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.u = nn.Parameter(torch.randn(dim))
        self.v = nn.Parameter(torch.randn(dim))

    def forward(
        self, x: Tensor, t: Tensor, cond: Tensor | None = None, t_end: Tensor | None = None
    ) -> Tensor:
        assert t_end is not None
        return self.lin(x) + t[:, None] * self.u + t_end[:, None] * self.v


class LinearD(nn.Module):
    """D(x, b) = scale * (x . c + b d): R1/R2 finite differences are exact for it."""

    def __init__(self, dim: int, scale: float = 1.0) -> None:
        super().__init__()
        self.c = nn.Parameter(torch.randn(dim))
        self.d = nn.Parameter(torch.randn(()))
        self.scale = scale

    def forward(self, x: Tensor, cond: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        assert t is not None
        return self.scale * (x.flatten(1) @ self.c + t * self.d)


class Recorder(nn.Module):
    """Wraps a network and keeps every input tensor it is called with."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[Tensor] = []

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:  # type: ignore[no-untyped-def]
        self.calls.append(x.detach().clone())
        return self.inner(x, *args, **kwargs)


class TimeSpy(nn.Module):
    """A generator whose residual output is 0 (G = x_a), recording each call's (a, b)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[tuple[float, float]] = []

    def forward(
        self, x: Tensor, t: Tensor, cond: Tensor | None = None, t_end: Tensor | None = None
    ) -> Tensor:
        assert t_end is not None
        self.times.append((float(t[0]), float(t_end[0])))
        return torch.zeros_like(x)


def make(
    cfg: AFConfig, dim: int = 3, g: nn.Module | None = None, d: nn.Module | None = None
) -> AdversarialFlow:
    return AdversarialFlow(
        cfg,
        DataSpec((dim,)),
        NetConfig(),
        model=g or LinearG(dim),
        discriminator=d or LinearD(dim),
    )


def updater_for(m: AdversarialFlow) -> OptimizerUpdater:
    opts: dict[str, torch.optim.Optimizer] = {
        name: torch.optim.Adam(s.params, lr=s.lr or 1e-3, betas=s.betas or (0.9, 0.999))
        for name, s in m.optimizers().items()
    }
    return OptimizerUpdater(opts)


# --------------------------------------------------------------------------- loss terms


def test_loss_terms_match_hand_values() -> None:
    pos, neg = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(2.0))) / 2
    assert relativistic_loss(pos, neg).item() == pytest.approx(expected, rel=1e-6)
    # w = (0.5, 0.001), differences (0.01, -0.02), eps = 0.01
    fd = finite_difference_penalty(
        torch.tensor([1.0, 2.0]), torch.tensor([0.99, 2.02]), torch.tensor([0.5, 0.001]), 0.01
    )
    assert fd.item() == pytest.approx((0.5 * 1e-4 + 0.001 * 4e-4) / 2 / 1e-4, rel=1e-4)
    assert centering_penalty(
        torch.tensor([1.0, -1.0]), torch.tensor([2.0, 3.0])
    ).item() == pytest.approx((9 + 4) / 2)
    out, src = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [3.0, 1.0]])
    w = torch.tensor([0.5, 1.0])
    # per sample ||.||^2 / n / w = (5/2)/0.5 = 5 and (10/2)/1 = 5
    assert ot_loss(out, src, w).item() == pytest.approx(5.0)


@pytest.mark.parametrize("by_hop", [True, False])
def test_discriminator_terms_hand_computed(by_hop: bool) -> None:
    torch.manual_seed(0)
    cfg = AFConfig(
        nfe=2, gp_weight=0.3, cp_weight=0.2, gp_fraction=0.5, gp_eps=0.01, gp_by_hop=by_hop
    )
    d = LinearD(3)
    m = make(cfg, d=d)
    real, fake = torch.randn(4, 3), torch.randn(4, 3)
    a, b = torch.tensor([0.0, 0.5, 0.0, 0.5]), torch.tensor([0.5, 1.0, 0.5, 1.0])
    torch.manual_seed(1)
    terms = m.discriminator_terms(real, fake, a, b, None)
    torch.manual_seed(1)  # the same perturbation draws, by hand
    n_real, n_fake = torch.randn(2, 3), torch.randn(2, 3)
    with torch.no_grad():
        r = real @ d.c + b * d.d
        f = fake @ d.c + b * d.d
        adv = torch.log1p(torch.exp(-(r - f))).mean()
        # linear D: D(x + eps n) - D(x) = eps n.c, so each penalty is w (n.c)^2; w = |b-a| = 0.5
        # by hop, else 1
        w = 0.5 if by_hop else 1.0
        gp = 0.3 * (w * (n_real @ d.c) ** 2 + w * (n_fake @ d.c) ** 2).mean()
        cp = 0.2 * ((r + f) ** 2).mean()
    assert terms["adv"].item() == pytest.approx(adv.item(), rel=1e-5)
    assert terms["gp"].item() == pytest.approx(gp.item(), rel=1e-3)
    assert terms["cp"].item() == pytest.approx(cp.item(), rel=1e-5)


def test_generator_terms_hand_computed() -> None:
    torch.manual_seed(0)
    cfg = AFConfig(nfe=4, ot_weight=0.7, grad_norm=False)
    g, d = LinearG(3), LinearD(3)
    m = make(cfg, 3, g, d)
    x_a, real = torch.randn(5, 3), torch.randn(5, 3)
    a = torch.tensor([0.0, 0.25, 0.5, 0.75, 0.25])
    b = a + 0.25
    terms, fake = m.generator_terms(x_a, real, a, b, None, step=0)
    with torch.no_grad():
        expect_fake = x_a + 0.25 * (g.lin(x_a) + a[:, None] * g.u + b[:, None] * g.v)
        r, f = real @ d.c + b * d.d, expect_fake @ d.c + b * d.d
        adv = torch.log1p(torch.exp(-(f - r))).mean()
        ot = 0.7 * (((expect_fake - x_a) ** 2).mean(1) / 0.25).mean()
    assert torch.allclose(fake, expect_fake, atol=1e-6)
    assert terms["adv"].item() == pytest.approx(adv.item(), rel=1e-5)
    assert terms["ot"].item() == pytest.approx(ot.item(), rel=1e-5)


# --------------------------------------------------------------------------- the discriminator


@pytest.mark.parametrize("real_noise", ["fresh", "shared"])
def test_discriminator_never_sees_the_source(real_noise: str) -> None:
    torch.manual_seed(0)
    g, d = Recorder(LinearG(3)), Recorder(LinearD(3))
    m = make(AFConfig(nfe=2, real_noise=real_noise, gp_weight=0.1, gp_fraction=1.0), 3, g, d)
    up = updater_for(m)
    for step in range(3):
        m.train_step(Batch(torch.randn(16, 3)), step, up)
    sources = torch.cat(g.calls)
    seen = torch.cat(d.calls)
    assert seen.shape[1:] == (3,)  # D sees a sample, not a sample concatenated with x_a
    # no input of D is (numerically) any source the generator was given
    assert float(torch.cdist(seen, sources).min()) > 1e-4


def _adv_grad(scale: float, grad_norm: bool) -> Tensor:
    torch.manual_seed(0)
    g, d = LinearG(3), LinearD(3, scale=scale)
    m = make(AFConfig(nfe=1, grad_norm=grad_norm, grad_norm_decay=0.0, ot_weight=0.0), 3, g, d)
    torch.manual_seed(1)
    x_a = torch.randn(8, 3)
    a, b = torch.zeros(8), torch.ones(8)
    # real := the generator's own output, so D(fake) - D(real) = 0 at every scale and the
    # softplus slope is 1/2 for every sample: scaling D by 1000 only scales its gradient
    real = m.jump(g, x_a, a, b).detach()
    terms, _ = m.generator_terms(x_a, real, a, b, None, step=0)
    terms["adv"].backward()
    grads = [p.grad for p in m.generator.parameters()]
    return torch.cat([gr.flatten() for gr in grads if gr is not None])


def test_gradient_normalisation_removes_discriminator_scale() -> None:
    base, scaled = _adv_grad(1.0, True), _adv_grad(1000.0, True)
    assert torch.allclose(base, scaled, rtol=1e-3, atol=1e-9)
    raw, raw_scaled = _adv_grad(1.0, False), _adv_grad(1000.0, False)
    ratio = raw_scaled.norm() / raw.norm()
    assert ratio.item() == pytest.approx(1000.0, rel=1e-3)  # without phi it scales with D


class HopScaledD(nn.Module):
    """D(x, b) = s(b) x . c with s = 1 at b = 1/2 and 100 at b = 1: a much sharper
    discriminator at the last hop, as a trained one is."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.c = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor, cond: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        assert t is not None
        return (1.0 + 99.0 * (t > 0.75).float()) * (x.flatten(1) @ self.c)


@pytest.mark.parametrize("per_hop", [False, True])
def test_per_hop_gradient_normalisation_balances_the_hops(per_hop: bool) -> None:
    """k = 2: the adversarial gradient reaching G's output is normalised per hop when
    ``grad_norm_per_hop`` (each hop then as large as a one-step model's: mean square
    1 / numel^2 with decay 0), by one statistic otherwise (the last hop's 100x sharper D
    then gets 100x the first hop's gradient)."""
    torch.manual_seed(0)
    cfg = AFConfig(nfe=2, ot_weight=0.0, grad_norm_decay=0.0, grad_norm_per_hop=per_hop)
    m = make(cfg, dim=3, d=HopScaledD(3))
    a = torch.tensor([0.0, 0.5] * 4)
    b = a + 0.5
    x_a = torch.randn(8, 3)
    fake = m.jump(m.generator, x_a, a, b)
    fake.retain_grad()
    hop = (a * 2).long()
    adv_in = m.grad_norm(fake, hop)
    r = m.discriminator(torch.randn(8, 3), None, b).detach()
    relativistic_loss(m.discriminator(adv_in, None, b), r).backward()
    assert fake.grad is not None
    ms = [fake.grad[hop == j].square().mean().item() for j in (0, 1)]
    if per_hop:
        assert m.grad_norm.square_avg.shape == (2,)
        assert ms == pytest.approx([1 / 24**2, 1 / 24**2], rel=1e-4)
    else:
        assert m.grad_norm.square_avg.shape == ()
        assert ms[1] / ms[0] > 100.0**2 / 4  # only the sigmoid weights differ between rows
    # the method's own generator step uses the same grouping
    terms, _ = m.generator_terms(x_a, torch.randn(8, 3), a, b, None, step=0)
    assert math.isfinite(terms["adv"].item())


# --------------------------------------------------------------------------- schedules, times


def test_ot_schedules() -> None:
    const = AFConfig(ot_weight=0.05)
    assert [const.ot_weight_at(s) for s in (0, 10**6)] == [0.05, 0.05]
    cos = AFConfig(ot_weight=0.2, ot_schedule="cosine", ot_end=0.01, ot_decay_steps=1000)
    assert cos.ot_weight_at(0) == pytest.approx(0.2)
    assert cos.ot_weight_at(500) == pytest.approx(0.105)
    assert cos.ot_weight_at(250) == pytest.approx(0.01 + 0.19 * (1 + math.cos(math.pi / 4)) / 2)
    assert cos.ot_weight_at(1000) == pytest.approx(0.01)
    assert cos.ot_weight_at(5000) == pytest.approx(0.01)
    drop = AFConfig(ot_weight=0.2, ot_schedule="step", ot_end=0.02, ot_decay_steps=100)
    assert [drop.ot_weight_at(s) for s in (0, 99, 100, 400)] == [0.2, 0.2, 0.02, 0.02]


# --------------------------------------------------------------------------- sampling, setup


def test_generate_checks_nfe() -> None:
    m = make(AFConfig(nfe=2))
    with pytest.raises(ValueError, match="nfe=2"):
        m.generate(torch.randn(3, 3), nfe=4)
    assert m.generate(torch.randn(3, 3), nfe=2).shape == (3, 3)
    anystep = make(AFConfig(nfe=0))
    for nfe in (1, 3, 8):
        assert anystep.generate(torch.randn(3, 3), nfe=nfe).shape == (3, 3)


def test_generate_chain_times_and_ema_roles() -> None:
    g = Recorder(LinearG(2))
    m = make(AFConfig(nfe=4), 2, g)
    spy = TimeSpy()

    z = torch.randn(5, 2)
    out = m.generate(z, nfe=4, roles={"generator": spy})
    assert spy.times == [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]
    assert torch.equal(out, z) and not g.calls  # residual with g = 0; the EMA role was used
    assert m.ema_roles() == ("generator",)


def test_chain_sources_start_hops_where_the_sampler_is() -> None:
    """chain_fraction 1: every hop from a = i/k starts at the generator's own i-step chain
    from the same noise (what generate() would reach), not at the interpolant; 0: the
    interpolant (1 - a) z + a x."""
    torch.manual_seed(0)
    x = torch.randn(64, 2) + 5.0
    for frac in (0.0, 1.0):
        m = make(AFConfig(nfe=4, chain_fraction=frac), 2)
        state = torch.random.get_rng_state()
        a, b, x_a, _ = m.draw(x)
        torch.random.set_rng_state(state)
        frandom.randint(0, 4, 64)  # replay the draws: fixed_k_times, then the noise
        z = frandom.randn_like(x)
        for i in range(4):
            rows = (a * 4).round().long() == i
            if frac == 0.0:
                want = (1 - a[rows, None]) * z[rows] + a[rows, None] * x[rows]
            else:
                want = z[rows]
                for j in range(i):
                    s = torch.full((int(rows.sum()),), j / 4)
                    want = m.jump(m.generator, want, s, s + 0.25)
            assert torch.allclose(x_a[rows], want, atol=1e-5), (frac, i)
        assert bool(((b - a - 0.25).abs() < 1e-6).all())
    with pytest.raises(ValueError, match="chain_fraction"):
        AFConfig(nfe=0, chain_fraction=0.5)


def test_hops_to_the_data_train_every_hop_to_b_1_and_sample_by_renoising() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 2) + 5.0
    m = make(AFConfig(nfe=4, hops="to_data"), 2)
    a, b, x_a, x_b = m.draw(x)
    assert set((a * 4).round().long().tolist()) == {0, 1, 2, 3} and bool((b == 1).all())
    assert torch.allclose(x_b, x)  # the real sample at b = 1 is the data itself
    spy = TimeSpy()

    z = torch.randn(5, 2)
    torch.manual_seed(1)
    out = m.generate(z, nfe=4, roles={"generator": spy})
    assert spy.times == [(0.0, 1.0), (0.25, 1.0), (0.5, 1.0), (0.75, 1.0)]
    # residual with g = 0 returns its input: the last hop's input, re-noised at 3/4
    torch.manual_seed(1)
    x_hat = z
    for t in (0.25, 0.5, 0.75):
        x_hat = (1 - t) * frandom.randn_like(x_hat) + t * x_hat
    assert torch.allclose(out, x_hat, atol=1e-6)
    with pytest.raises(ValueError, match="to_data"):
        AFConfig(nfe=0, hops="to_data")
    with pytest.raises(ValueError, match="to_data"):
        AFConfig(nfe=2, hops="to_data", chain_fraction=0.5)


def test_hop_span_keeps_one_gradient_norm_statistic_per_hop() -> None:
    torch.manual_seed(0)
    cfg = AFConfig(nfe=4, hops="to_data", hop_span=0.5, grad_norm_per_hop=True)
    m = make(cfg, 2)
    m.train_step(Batch(torch.randn(256, 2)), 0, updater_for(m))
    assert bool((m.grad_norm.square_avg > 0).all())  # every hop's statistic was updated


def test_hop_span_moves_the_hop_starts_in_training_and_in_the_sampler_alike() -> None:
    torch.manual_seed(0)
    m = make(AFConfig(nfe=4, hops="to_data", hop_span=0.5), 2)
    a, b, _, _ = m.draw(torch.randn(256, 2))
    assert sorted(set((a * 8).round().long().tolist())) == [0, 1, 2, 3]  # a in {0, 1/8, ..}
    assert bool((b == 1).all())
    spy = TimeSpy()
    m.generate(torch.randn(5, 2), nfe=4, roles={"generator": spy})
    assert spy.times == [(0.0, 1.0), (0.125, 1.0), (0.25, 1.0), (0.375, 1.0)]
    with pytest.raises(ValueError, match="hop_span"):
        AFConfig(nfe=4, hop_span=0.5)  # chained interval hops must reach t = 1


def test_shuffled_real_data_pairs_each_fake_with_another_row_of_its_label() -> None:
    torch.manual_seed(0)
    x = torch.arange(8.0)[:, None].repeat(1, 2)  # row i is (i, i): rows are recognisable
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    m = make(AFConfig(nfe=4, hops="to_data", real_data="shuffled"), 2)
    _, _, _, x_b = m.draw(x, labels)  # b = 1: the real sample is a data row
    rows = x_b[:, 0].long()
    assert sorted(rows.tolist()) == list(range(8)) and torch.equal(labels[rows], labels)
    assert not torch.equal(rows, torch.arange(8))  # another row's data, not its own
    _, _, _, same = make(AFConfig(nfe=4, hops="to_data"), 2).draw(x, labels)
    assert torch.equal(same, x)  # the paper: its own data point
    with pytest.raises(ValueError, match="class-labelled"):
        m.draw(x, torch.randn(8, 3))  # a continuous condition has no "same label"


class TimeLog(nn.Module):
    """Wraps a discriminator and keeps the time input of every call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.times: list[Tensor] = []

    def forward(self, x: Tensor, cond: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        assert t is not None
        self.times.append(t.detach().clone())
        return self.inner(x, cond, t)


@pytest.mark.parametrize("hops", ["interval", "to_data"])
def test_every_discriminator_call_gets_the_hop_label(hops: str) -> None:
    # a whole training step: D's own update, its R1/R2 penalty and the generator's term
    torch.manual_seed(0)
    d = TimeLog(LinearD(2))
    m = make(AFConfig(nfe=4, hops=hops, gp_weight=0.1, gp_fraction=1.0), 2, d=d)
    m.train_step(Batch(torch.randn(64, 2)), 0, updater_for(m))
    seen = torch.cat(d.times)
    assert len(d.times) >= 5  # real, fake, perturbed real, perturbed fake, generator's
    if hops == "to_data":  # the start a in {0, 1/4, 1/2, 3/4}: never the shared end b = 1
        assert set((seen * 4).round().long().tolist()) == {0, 1, 2, 3}
    else:  # the paper: the end b = a + 1/4 in {1/4, ..., 1}
        assert set((seen * 4).round().long().tolist()) == {1, 2, 3, 4}


def test_all_hops_trains_every_hop_on_every_row_of_the_batch() -> None:
    torch.manual_seed(0)
    d = TimeLog(LinearD(2))
    cfg = AFConfig(nfe=4, hops="to_data", hop_span=0.5, all_hops=True, gp_weight=0.1)
    m = make(cfg, 2, d=d)
    x = torch.randn(16, 2)
    big, _ = m.hop_batch(x, None)
    assert big.shape == (64, 2) and torch.equal(big[3::4], x)  # each row once per hop
    a, b, x_a, x_b = m.draw(big)
    # copy i of each row trains hop i, a = 0.5 * i / 4, and ends on the data
    assert torch.equal(a, (torch.arange(64) % 4).float() / 8)
    assert bool((b == 1).all()) and torch.allclose(x_b, big)
    m.train_step(Batch(x), 0, updater_for(m))
    assert max(t.shape[0] for t in d.times) == 64  # D sees every row at every hop
    # the R1/R2 penalty's leading quarter of the batch (16 rows) still holds every hop
    penalty = [t for t in d.times if t.shape[0] == 16]
    assert penalty and all(set((t * 8).round().long().tolist()) == {0, 1, 2, 3} for t in penalty)
    labels = torch.arange(16) % 3
    _, twice = make(AFConfig(nfe=2, all_hops=True), 2).hop_batch(x, labels)
    assert twice is not None and torch.equal(twice, labels.repeat_interleave(2))
    assert make(AFConfig(nfe=1, all_hops=True), 2).hop_batch(x, None)[0] is x  # k = 1: as is
    with pytest.raises(ValueError, match="all_hops"):
        AFConfig(nfe=0, all_hops=True)


def test_disc_time_labels_hops_to_the_data_by_their_start() -> None:
    a, b = torch.tensor([0.0, 0.5]), torch.tensor([0.5, 1.0])
    assert make(AFConfig(nfe=2)).disc_time(a, b) is b  # interval hops: the paper's end time
    assert make(AFConfig(nfe=2, hops="to_data")).disc_time(a, b) is a
    assert make(AFConfig(nfe=1, hops="to_data")).disc_time(a, b) is b  # one step: unchanged
    assert make(AFConfig(nfe=2, hops="to_data", disc_time="end")).disc_time(a, b) is b
    assert make(AFConfig(nfe=2, disc_time="start")).disc_time(a, b) is a
    # a direct generator is allowed when every hop ends on the data
    assert not make(AFConfig(nfe=2, hops="to_data", parameterization="direct")).residual
    with pytest.raises(ValueError, match="any-step"):
        AFConfig(nfe=0, disc_time="start")
    # the resolved mode is saved with the run; a run saved before the option keeps b
    m = make(AFConfig(nfe=2, hops="to_data"))
    assert m.extra_state()["disc_time"] == "start"
    m.load_extra_state({"residual": True})
    assert m.disc_time(a, b) is b


class TimedD(nn.Module):
    """A small MLP discriminator D(x, t) on the concatenation of x and its time input."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 32), nn.SiLU(), nn.Linear(32, 1))

    def forward(self, x: Tensor, cond: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        assert t is not None
        return self.net(torch.cat([x, t[:, None]], 1)).squeeze(1)


@pytest.mark.parametrize("disc_time", ["end", "start"])
def test_hop_label_lets_the_discriminator_see_hops_whose_mixture_is_the_data(
    disc_time: str,
) -> None:
    # data: +-1 with equal weight; hop a = 0 always lands on +1, hop a = 1/2 always on -1.
    # Each hop is wrong, but their mixture is exactly the data: a discriminator told only
    # b = 1 cannot beat chance (relativistic loss >= log 2 for equal real / fake laws, by
    # Jensen), one told the hop's start a can (its optimum is log(2) / 2: a real point on the
    # hop's own side is indistinguishable, one on the other side is separated).
    torch.manual_seed(0)
    m = make(
        AFConfig(nfe=2, hops="to_data", disc_time=disc_time, gp_weight=0, cp_weight=0),
        1,
        d=TimedD(),
    )
    opt = torch.optim.Adam(m.discriminator.parameters(), lr=1e-2)

    def batch(n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        a = torch.cat([torch.zeros(n // 2), torch.full((n // 2,), 0.5)])
        fake = torch.where(a == 0, 1.0, -1.0)[:, None] + 0.05 * torch.randn(n, 1)
        real = torch.sign(torch.randn(n, 1)) + 0.05 * torch.randn(n, 1)
        return real, fake, a, torch.ones(n)

    for _ in range(300):
        loss = m.discriminator_terms(*batch(256), None)["adv"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = float(m.discriminator_terms(*batch(8192), None)["adv"])
    if disc_time == "end":
        assert final > 0.66  # chance: the mixture is the data
    else:
        assert final < 0.45  # near its optimum log(2) / 2 = 0.347


def test_config_errors_and_registry() -> None:
    with pytest.raises(ValueError, match="residual"):
        make(AFConfig(nfe=2, parameterization="direct"))
    with pytest.raises(ValueError, match="cg_weight"):
        make(AFConfig(cg_weight=0.1))
    assert get_method_class("adversarial") is AdversarialFlow


def test_optimizers_follow_repeats() -> None:
    m = AdversarialFlow(
        AFConfig(lr=2e-4),
        DataSpec((3,)),
        NetConfig(repeats=4),
        model=LinearG(3),
        discriminator=LinearD(3),
    )
    specs = m.optimizers()
    assert specs["generator"].lr * specs["generator"].lr_scale == pytest.approx(5e-5)
    assert specs["discriminator"].lr == pytest.approx(2e-4)
    assert specs["generator"].betas == (0.0, 0.9)


def test_pretrained_flow_gives_one_euler_step() -> None:
    torch.manual_seed(0)
    flow = MLPVelocity(2, hidden=16, depth=2)
    gen = MLPVelocity(2, hidden=16, depth=2, end_time=True)
    m = make(AFConfig(nfe=1), 2, gen, LinearD(2))
    assert not m.residual  # auto: direct prediction from scratch
    m.load_pretrained(flow.state_dict())
    assert m.residual
    z = torch.randn(6, 2)
    with torch.no_grad():
        euler = z + flow(z, torch.zeros(6))
        assert torch.allclose(m.generate(z, nfe=1), euler, atol=1e-6)
    assert m.extra_state() == {"residual": True, "disc_time": "end"}


def test_training_learns_a_shift_with_ot_map() -> None:
    """A small end-to-end check: N(0, 1) -> N(2, 0.5^2) in 1-D; with the OT term the learned
    map approaches the monotone OT map 2 + z / 2."""
    torch.manual_seed(0)
    g = MLPVelocity(1, hidden=32, depth=2, end_time=True)
    d = MLPVelocity(1, hidden=32, depth=2)

    class DHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = d

        def forward(self, x: Tensor, cond: Tensor | None = None, t: Tensor | None = None) -> Tensor:
            assert t is not None
            return self.net(x, t)[:, 0]

    cfg = AFConfig(nfe=1, parameterization="residual", ot_weight=0.05, lr=1e-3)
    m = make(cfg, 1, g, DHead())
    up = updater_for(m)
    for step in range(300):
        m.train_step(Batch(2 + 0.5 * torch.randn(256, 1)), step, up)
    z = torch.randn(4000, 1)
    with torch.no_grad():
        out = m.generate(z, nfe=1)
    assert out.mean().item() == pytest.approx(2.0, abs=0.25)
    assert out.std().item() == pytest.approx(0.5, abs=0.15)
    assert (out - (2 + 0.5 * z)).abs().mean().item() < 0.3


class SpyClassifier(nn.Module):
    """Logits ``x.sum(1) * s`` for class 1 and 0 otherwise; records the times it sees."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.tensor(0.5))
        self.k = k
        self.times: list[Tensor] = []

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        self.times.append(t.detach().clone())
        logits = torch.zeros(x.shape[0], self.k)
        logits[:, 1] = self.s * x.flatten(1).sum(1)
        return logits


def test_classifier_guidance_term() -> None:
    torch.manual_seed(0)
    k = 3
    spec = DataSpec((2,), num_classes=k)
    clf = SpyClassifier(k)
    g = LinearG(2)
    m = AdversarialFlow(
        AFConfig(nfe=1, cg_weight=0.3, ot_weight=0.0),
        spec,
        NetConfig(),
        model=g,
        discriminator=LinearD(2),
        classifier=clf,
    )
    z, cond = torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    a, b = torch.zeros(6), torch.ones(6)
    torch.manual_seed(3)
    terms, fake = m.generator_terms(z, torch.randn(6, 2), a, b, cond, step=0)
    t = clf.times[-1]
    assert bool(((t >= 0.9) & (t <= 1.0)).all())
    # redo the guidance draw by hand: same seed, same order of draws (augment: none; t; z')
    torch.manual_seed(3)
    torch.randn(6, 2)  # the real sample drawn above
    t2 = 0.9 + 0.1 * torch.rand(6)
    x_t = (1 - t2[:, None]) * torch.randn(6, 2) + t2[:, None] * fake.detach()
    logits = torch.zeros(6, k)
    logits[:, 1] = 0.5 * x_t.sum(1)
    expected = 0.3 * torch.nn.functional.cross_entropy(logits, cond)
    assert torch.allclose(t, t2)
    assert terms["cg"].item() == pytest.approx(expected.item(), rel=1e-5)
    terms["cg"].backward()
    assert g.lin.weight.grad is not None and float(g.lin.weight.grad.abs().sum()) > 0
    assert clf.s.grad is None  # the classifier is frozen during the generator's step


class TimedSpy(nn.Module):
    """Logits ``s * x.sum(1) + 2 t`` for class 1 and 0 otherwise; records ``(x, t)``."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.tensor(0.5))
        self.k = k
        self.calls: list[tuple[Tensor, Tensor]] = []

    def logits(self, x: Tensor, t: Tensor) -> Tensor:
        out = torch.zeros(x.shape[0], self.k)
        out[:, 1] = self.s * x.flatten(1).sum(1) + 2.0 * t
        return out

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls.append((x.detach().clone(), t.detach().clone()))
        return self.logits(x, t)


def test_multistep_guidance_scores_the_output_at_its_target_time() -> None:
    """The authors' multi-step guidance (``cg_flow: False``): C sees the generator's output G
    itself, at its target time b, not re-noised; hops ending before b = 0.51 (their
    ``t_tgt > 0.49``) are not guided but still count in the batch mean. Each wrong formula
    (re-noising G, extrapolating to t = 1, scoring at t = 1, guiding every hop) differs."""
    torch.manual_seed(0)
    k, n = 3, 8
    clf, g = TimedSpy(k), LinearG(2)
    m = AdversarialFlow(
        AFConfig(nfe=4, cg_weight=0.3, ot_weight=0.0),
        DataSpec((2,), num_classes=k),
        NetConfig(),
        model=g,
        discriminator=LinearD(2),
        classifier=clf,
    )
    x_a, cond = torch.randn(n, 2), torch.arange(n) % k
    a = torch.tensor([0.0, 0.25, 0.5, 0.75] * (n // 4))
    b = a + 0.25
    terms, fake = m.generator_terms(x_a, torch.randn(n, 2), a, b, cond, step=0)
    seen_x, seen_t = clf.calls[-1]
    assert torch.equal(seen_x, fake.detach()) and torch.equal(seen_t, b)
    with torch.no_grad():
        ce = F.cross_entropy(clf.logits(fake, b), cond, reduction="none")
        expected = 0.3 * (ce * (b >= 0.51)).sum() / n
        x_hat = x_a + (1 - a)[:, None] * (fake - x_a) / (b - a)[:, None]
        wrong = {
            "every hop": 0.3 * ce.mean(),
            "scored at t = 1": 0.3
            * (
                F.cross_entropy(clf.logits(fake, b * 0 + 1), cond, reduction="none") * (b >= 0.51)
            ).mean(),
            "extrapolated to t = 1": 0.3
            * (F.cross_entropy(clf.logits(x_hat, b), cond, reduction="none") * (b >= 0.51)).mean(),
        }
    assert terms["cg"].item() == pytest.approx(expected.item(), rel=1e-6)
    for name, value in wrong.items():
        assert abs(terms["cg"].item() - value.item()) > 1e-3, name
    terms["cg"].backward()
    assert g.lin.weight.grad is not None and float(g.lin.weight.grad.abs().sum()) > 0
    assert clf.s.grad is None
    # cg_at: noised forces the one-step formula on a multi-step model: C sees other inputs
    m.config.cg_at = "noised"
    m.generator_terms(x_a, torch.randn(n, 2), a, b, cond, step=0)
    seen_x, seen_t = clf.calls[-1]
    assert not torch.allclose(seen_x, fake.detach()) and bool((seen_t >= 0.9).all())


def test_train_step_with_guidance_and_time_classifier() -> None:
    torch.manual_seed(0)
    spec = DataSpec((2,), num_classes=2)
    net = NetConfig(hidden=16, depth=1)
    m = AdversarialFlow(AFConfig(nfe=2, cg_weight=0.1), spec, net)
    assert m.classifier is not None and "classifier" in m.optimizers()
    up = updater_for(m)
    before = [p.detach().clone() for p in m.classifier.parameters()]
    logs = m.train_step(Batch(torch.randn(32, 2), torch.randint(0, 2, (32,))), 0, up)
    assert {"classifier/ce", "generator/cg", "discriminator/gp"} <= set(logs)
    for key in ("discriminator/acc_real", "discriminator/acc_fake"):  # the guard's cue
        assert 0.0 <= logs[key] <= 1.0
    assert all(math.isfinite(v) for v in logs.values())
    moved = [not torch.equal(b, p) for b, p in zip(before, m.classifier.parameters())]
    assert any(moved)


def test_trainer_resume_is_exact_with_grad_norm_state(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Through the real trainer: 4 straight steps == 2 steps, checkpoint, resume, 2 steps
    (generator, discriminator and the gradient-norm EMA buffer all bit-exact)."""
    import shutil

    from flowpost.train import Trainer
    from flowpost.train.checkpoint import latest_checkpoint, load_checkpoint
    from flowpost.train.config import build_run_config

    recipe = {
        "data": {"name": "mixture1d", "n_heldout": 100},
        "model": {"hidden": 16, "depth": 1},
        "method": {
            "name": "adversarial",
            "nfe": 2,
            "ot_weight": 0.1,
            "ot_schedule": "cosine",
            "ot_decay_steps": 3,
            "discriminator": {"hidden": 16, "depth": 1},
        },
        "train": {"steps": 4, "batch_size": 32, "checkpoint_every": 2, "log_every": 1},
        "eval": {"nfe": 2, "n_samples": 100, "plots": False},
    }
    cfg = build_run_config(recipe)
    Trainer.from_config(cfg, tmp_path / "straight", progress=False).fit()
    ckpts = sorted((tmp_path / "straight" / "checkpoints").iterdir())
    assert len(ckpts) == 2
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(ckpts[0], tmp_path / "resumed" / "checkpoints" / ckpts[0].name)
    Trainer.from_config(build_run_config(recipe), tmp_path / "resumed", progress=False).fit(
        resume=True
    )
    a_path = latest_checkpoint(tmp_path / "straight" / "checkpoints")
    b_path = latest_checkpoint(tmp_path / "resumed" / "checkpoints")
    assert a_path is not None and b_path is not None
    a, _ = load_checkpoint(a_path)
    b, _ = load_checkpoint(b_path)
    assert "model.grad_norm.square_avg" in a and float(a["model.grad_norm.square_avg"]) > 0
    for key in a:
        if key.startswith(("model.", "ema.")):
            assert torch.equal(a[key], b[key]), key


def test_collapse_guard_rolls_back_every_af_role(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """AF under the trainer's held-out guard (``train.holdout_fraction``): everything AF
    trains or accumulates (generator, its EMA, discriminator, the gradient-norm statistic)
    lives in the checkpoint, so a rollback after a collapse restores all of it."""
    from flowpost.train.checkpoint import latest_checkpoint, load_checkpoint, split_prefixed
    from flowpost.train.config import build_run_config
    from flowpost.train.selection import BEST_DIR
    from flowpost.train.trainer import Trainer

    cfg = build_run_config(
        {
            "data": {"name": "8gaussians", "toy_size": 400, "n_heldout": 100},
            "model": {"hidden": 16, "depth": 1},
            "method": {"name": "adversarial", "lr": 1e-3, "discriminator": {"hidden": 16}},
            "train": {"steps": 6, "batch_size": 32, "holdout_fraction": 0.25},
            "eval": {"nfe": 1, "n_samples": 100, "plots": False},
        }
    )
    cfg.train.validate_every, cfg.train.checkpoint_every = 2, 0
    trainer = Trainer.from_config(cfg, tmp_path / "run", progress=False)
    trainer.run_steps(2)  # validated at steps 0 and 2: the better one is in best/
    found = latest_checkpoint(tmp_path / "run" / BEST_DIR)
    assert found is not None
    tensors = load_checkpoint(found)[0]
    best, best_ema = split_prefixed(tensors, "model"), split_prefixed(tensors, "ema.generator")
    method = trainer.method
    assert isinstance(method, AdversarialFlow)
    with torch.no_grad():  # a collapse: every sample thrown far away, D and phi disturbed
        for module in (method.generator, trainer.emas["generator"].module):
            module.out[1].bias.add_(100.0)  # type: ignore[index, union-attr, operator]
        for p in method.discriminator.parameters():
            p.add_(1.0)
        method.grad_norm.square_avg.fill_(123.0)
    assert guard.validate(trainer) == "collapse" and trainer.rollbacks == 1
    for key, value in method.state_dict().items():
        assert torch.equal(value, best[key]), key
    for key, value in trainer.emas["generator"].module.state_dict().items():
        assert torch.equal(value, best_ema[key]), key
    assert {k.split(".")[0] for k in best} >= {"generator", "discriminator", "grad_norm"}
