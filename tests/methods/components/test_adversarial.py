"""Tests of flowpost/methods/components/adversarial.py: losses and regularisers against hand-
computed values, gradient normalisation, paired augmentation."""

from __future__ import annotations

import math

import pytest
import torch

from flowpost.methods.components.adversarial import (
    GradientNormalizer,
    adversarial_policy_loss,
    augment_pair,
    discriminator_loss,
    fail_reward,
    hop_fd_penalty,
)

torch.set_num_threads(1)


def test_discriminator_loss_matches_hand_computed_bce() -> None:
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5])
    # BCE with label 1: log(1 + e^{-l}); label 0: log(1 + e^{l})
    want = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(1.0))) / 2 + math.log(
        1 + math.exp(0.5)
    )
    assert float(discriminator_loss(real, fake)) == pytest.approx(want, abs=1e-6)


def test_policy_loss_and_reward_are_softplus_of_logits() -> None:
    logits = torch.tensor([0.0, 1.0, -2.0])
    want_loss = [-math.log(1 / (1 + math.exp(-v))) for v in (0.0, 1.0, -2.0)]
    want_reward = [-math.log(1 - 1 / (1 + math.exp(-v))) for v in (0.0, 1.0, -2.0)]
    assert adversarial_policy_loss(logits).tolist() == pytest.approx(want_loss, abs=1e-6)
    assert fail_reward(logits).tolist() == pytest.approx(want_reward, abs=1e-6)


def test_gradient_normalizer_formula_and_buffer() -> None:
    phi = GradientNormalizer(decay=0.9)
    x = torch.randn(4, 5, requires_grad=True)
    weights = torch.randn(4, 5)
    (phi(x) * weights).sum().backward()
    stat = float((weights**2).sum()) * 20
    expected = weights / (math.sqrt(0.1 * stat) + 1e-8)
    assert x.grad is not None and torch.allclose(x.grad, expected, rtol=1e-5)
    assert phi.square_avg.item() == pytest.approx(0.1 * stat, rel=1e-5)
    assert "square_avg" in phi.state_dict()  # checkpointed with the method
    x.grad = None
    (phi(x) * weights).sum().backward()  # EMA: 0.9 * 0.1 s + 0.1 s = 0.19 s
    assert phi.square_avg.item() == pytest.approx(0.19 * stat, rel=1e-5)


def test_grouped_gradient_normalizer_gives_each_group_its_own_scale() -> None:
    """Group j's rows are divided by sqrt(EMA((B / B_j) ||g_j||^2 numel)): a group whose
    upstream gradient is 100x larger comes out the same size as the other, where one shared
    statistic would keep the 100x between them; an empty group keeps its EMA."""
    torch.manual_seed(0)
    group = torch.tensor([0, 0, 0, 1, 1, 2])  # group 3 is empty in this batch
    up = torch.randn(6, 5) * torch.tensor([1.0, 1.0, 1.0, 100.0, 100.0, 3.0])[:, None]
    phi = GradientNormalizer(decay=0.5, groups=4)
    phi.square_avg.fill_(7.0)
    x = torch.randn(6, 5, requires_grad=True)
    (phi(x, group) * up).sum().backward()
    assert x.grad is not None
    for j in range(3):
        rows = group == j
        stat = float(up[rows].square().sum()) * 6 / int(rows.sum()) * up.numel()
        ema = 0.5 * 7.0 + 0.5 * stat
        assert phi.square_avg[j].item() == pytest.approx(ema, rel=1e-5)
        assert torch.allclose(x.grad[rows], up[rows] / (math.sqrt(ema) + 1e-8), rtol=1e-5)
    assert phi.square_avg[3].item() == 7.0
    # with decay 0 each group's normalised rows have mean square 1 / numel^2, whatever its scale
    phi0, y = GradientNormalizer(decay=0.0, groups=3), torch.randn(6, 5, requires_grad=True)
    (phi0(y, group) * up).sum().backward()
    assert y.grad is not None
    for j in range(3):
        ms = y.grad[group == j].square().mean().item()
        assert ms == pytest.approx(1 / up.numel() ** 2, rel=1e-5)
    shared, z = GradientNormalizer(decay=0.0), torch.randn(6, 5, requires_grad=True)
    (shared(z) * up).sum().backward()
    assert z.grad is not None
    ratio = z.grad[group == 1].norm(dim=1).mean() / z.grad[group == 0].norm(dim=1).mean()
    assert ratio.item() > 30  # one statistic keeps the groups' scale difference
    with pytest.raises(ValueError, match="groups"):
        GradientNormalizer(groups=2)(torch.randn(2, 2, requires_grad=True))


def test_grouped_normalizer_loads_a_single_statistic() -> None:
    """A checkpoint of the global statistic (one number) seeds every group with it."""
    one = GradientNormalizer()
    one.square_avg.fill_(2.5)
    grouped = GradientNormalizer(groups=3)
    grouped.load_state_dict(one.state_dict())
    assert grouped.square_avg.tolist() == [2.5, 2.5, 2.5]


def test_augmentation_is_shared_between_real_and_fake() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 1, 8, 8)
    r, f = augment_pair(x, x.clone(), 1.0)
    assert torch.equal(r, f) and not torch.equal(r, x)
    r0, f0 = augment_pair(x, x + 1, 0.0)
    assert torch.equal(r0, x) and torch.equal(f0, x + 1)


def test_hop_fd_penalty_by_hand() -> None:
    # D(x, cond, b) = b * sum(x): the difference along eps n is eps b sum(n), so with the
    # same direction drawn again the penalty is mean_i w_i b_i^2 sum(n_i)^2 on both halves
    d = lambda x, cond, b: b * x.sum(1)  # noqa: E731
    real, fake = torch.randn(4, 3), torch.randn(4, 3)
    a, b = torch.tensor([0.0, 0.0, 0.5, 0.5]), torch.tensor([0.5, 1.0, 1.0, 0.75])
    logits = (d(real, None, b), d(fake, None, b))
    torch.manual_seed(3)
    got = hop_fd_penalty(d, real, fake, logits, a, b, None, fraction=0.5, eps=0.01)
    torch.manual_seed(3)
    n_real, n_fake = torch.randn(2, 3), torch.randn(2, 3)
    w, bb = (b - a)[:2], b[:2]
    want = (w * bb**2 * n_real.sum(1) ** 2).mean() + (w * bb**2 * n_fake.sum(1) ** 2).mean()
    assert got is not None and float(got) == pytest.approx(float(want), rel=1e-3)
    # weight 1 per sample instead of the hop length
    torch.manual_seed(3)
    flat = hop_fd_penalty(d, real, fake, logits, a, b, None, fraction=0.5, eps=0.01, by_hop=False)
    want_flat = (bb**2 * n_real.sum(1) ** 2).mean() + (bb**2 * n_fake.sum(1) ** 2).mean()
    assert flat is not None and float(flat) == pytest.approx(float(want_flat), rel=1e-3)
    assert hop_fd_penalty(d, real, fake, logits, a, b, None, fraction=0.0, eps=0.01) is None
    # the discriminator evaluated at another time input (a hop label): d_time replaces b in
    # D, the weight stays the hop length
    t = torch.tensor([2.0, 3.0, 0.0, 0.0])
    logits_t = (d(real, None, t), d(fake, None, t))
    torch.manual_seed(3)
    got_t = hop_fd_penalty(d, real, fake, logits_t, a, b, None, fraction=0.5, eps=0.01, d_time=t)
    tt = t[:2]
    want_t = (w * tt**2 * n_real.sum(1) ** 2).mean() + (w * tt**2 * n_fake.sum(1) ** 2).mean()
    assert got_t is not None and float(got_t) == pytest.approx(float(want_t), rel=1e-3)
