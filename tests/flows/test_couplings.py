"""Tests for flowpost/flows/couplings.py: exact OT vs brute force, labels, Sinkhorn."""

from __future__ import annotations

import doctest
import itertools

import pytest
import torch

import flowpost.flows.couplings as couplings
from flowpost.flows.couplings import IndependentCoupling, OTCoupling, make_coupling, ot_plan

torch.set_num_threads(1)


def pair_cost(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).flatten(1).pow(2).sum())


def brute_force(x0: torch.Tensor, x1: torch.Tensor) -> float:
    n = x0.shape[0]
    return min(pair_cost(x0[list(p)], x1) for p in itertools.permutations(range(n)))


@pytest.mark.parametrize("n,seed", [(5, 0), (6, 1), (6, 2)])
def test_exact_ot_equals_brute_force(n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 2, 3, generator=g, dtype=torch.float64)  # non-flat samples
    x1 = torch.randn(n, 2, 3, generator=g, dtype=torch.float64) + 0.5
    a, b, _ = OTCoupling("exact")(x0, x1)
    assert torch.equal(b, x1)
    # x0 is re-ordered by a permutation: every row used once.
    match = torch.cdist(a.flatten(1), x0.flatten(1)).argmin(1)
    assert sorted(match.tolist()) == list(range(n))
    assert abs(pair_cost(a, x1) - brute_force(x0, x1)) < 1e-9
    assert pair_cost(a, x1) < pair_cost(x0, x1) or abs(pair_cost(x0, x1) - pair_cost(a, x1)) < 1e-9


def test_labels_stay_with_x1() -> None:
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(32, 2, generator=g)
    labels = torch.arange(32)
    x0 = torch.randn(32, 2, generator=g)
    for coupling in (OTCoupling("exact"), OTCoupling("sinkhorn", reg=0.1), IndependentCoupling()):
        a, b, c = coupling(x0, x1, labels, generator=torch.Generator().manual_seed(0))
        assert torch.equal(b, x1) and c is not None and torch.equal(c, labels)
        assert a.shape == x0.shape


def test_ot_pairs_within_each_label_so_the_noise_given_a_label_stays_standard() -> None:
    # Two classes far apart: a batch-wide plan sends the noise on each class's side to that
    # class (noise mean given the label ~ +-0.8), the within-label plan keeps it ~ 0.
    g = torch.Generator().manual_seed(0)
    n = 512
    labels = torch.arange(n) % 2
    x1 = torch.randn(n, 2, generator=g) * 0.1 + (labels.float() * 2 - 1)[:, None] * 3.0
    x0 = torch.randn(n, 2, generator=g)
    within, _, _ = OTCoupling()(x0, x1, labels)
    batch_wide, _, _ = OTCoupling(within_labels=False)(x0, x1, labels)
    for k in (0, 1):
        rows = labels == k
        # within a label: a permutation of that label's own noise, the exact OT of the subset
        assert torch.equal(within[rows].sort(0).values, x0[rows].sort(0).values)
        assert torch.equal(within[rows], OTCoupling()(x0[rows], x1[rows])[0])
        assert within[rows].mean(0).abs().max() < 0.15  # standard error ~ 0.06
        assert batch_wide[rows].mean(0).abs().max() > 0.5
    # float (vector) conditions are unique per sample: paired batch-wide
    vec = torch.randn(n, 3, generator=g)
    assert torch.equal(OTCoupling()(x0, x1, vec)[0], batch_wide)


def test_ot_shortens_pairs_on_average() -> None:
    g = torch.Generator().manual_seed(4)
    x0, x1 = torch.randn(128, 2, generator=g), torch.randn(128, 2, generator=g) + 2.0
    a, _, _ = OTCoupling()(x0, x1)
    assert pair_cost(a, x1) < 0.8 * pair_cost(x0, x1)


def test_sinkhorn_with_small_reg_approaches_exact() -> None:
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(6, 2, generator=g, dtype=torch.float64)
    x1 = torch.randn(6, 2, generator=g, dtype=torch.float64)
    exact = ot_plan(x0, x1, "exact")
    gaps = []
    for reg in (0.1, 0.01, 0.001):
        plan = ot_plan(x0, x1, "sinkhorn", reg=reg)
        assert abs(plan.sum() - 1) < 1e-6 and (plan >= 0).all()
        gaps.append(abs(plan - exact).sum())
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.05, gaps
    # Sampled pairs from a sharp plan reproduce the exact pairing's cost.
    a, _, _ = OTCoupling("sinkhorn", reg=0.001)(x0, x1, generator=torch.Generator().manual_seed(0))
    assert abs(pair_cost(a, x1) - brute_force(x0, x1)) < 1e-6


def test_sinkhorn_sampling_follows_plan_and_generator() -> None:
    g = torch.Generator().manual_seed(6)
    x0, x1 = torch.randn(4, 1, generator=g), torch.randn(4, 1, generator=g)
    coup = OTCoupling("sinkhorn", reg=2.0)  # blurry plan: pairs are random
    # Replicate the batch: every copy of a target draws its source independently.
    reps = 500
    idx = coup.source_indices(x0, x1.repeat(reps, 1), torch.Generator().manual_seed(0))
    idx = idx.view(reps, 4)
    freq = torch.zeros(4, 4, dtype=torch.float64)
    for j in range(4):
        freq[:, j] = torch.bincount(idx[:, j], minlength=4) / reps
    plan = torch.from_numpy(ot_plan(x0, x1.repeat(reps, 1), "sinkhorn", reg=2.0))
    cond = (plan / plan.sum(0, keepdim=True))[:, :4]  # pi(x0 | x1_j), same for every copy
    assert (freq - cond).abs().max() < 0.07
    assert cond.min() > 0.05  # the plan is blurry, so the check above is not trivial
    i1 = coup.source_indices(x0, x1, torch.Generator().manual_seed(9))
    assert torch.equal(i1, coup.source_indices(x0, x1, torch.Generator().manual_seed(9)))


def test_exact_with_unequal_batch_sizes_samples_from_plan() -> None:
    g = torch.Generator().manual_seed(7)
    x0, x1 = torch.randn(10, 2, generator=g), torch.randn(5, 2, generator=g)
    a, b, _ = OTCoupling()(x0, x1, generator=torch.Generator().manual_seed(0))
    assert a.shape == (5, 2) and torch.equal(b, x1)
    assert all(any(torch.equal(r, s) for s in x0) for r in a)


def test_make_coupling_and_errors() -> None:
    assert isinstance(make_coupling("independent"), IndependentCoupling)
    assert make_coupling("ot").method == "exact"  # type: ignore[attr-defined]
    sk = make_coupling("sinkhorn", reg=0.2)
    assert isinstance(sk, OTCoupling) and sk.method == "sinkhorn" and sk.reg == 0.2
    with pytest.raises(ValueError, match="unknown coupling"):
        make_coupling("optimal")
    with pytest.raises(ValueError, match="bad options"):
        make_coupling("ot", regg=0.1)
    with pytest.raises(ValueError, match="labels belong to x1"):
        OTCoupling()(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="same shape"):
        OTCoupling()(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="NaN"):
        OTCoupling()(torch.full((3, 2), float("nan")), torch.zeros(3, 2))


def test_sinkhorn_warns_when_not_converged() -> None:
    g = torch.Generator().manual_seed(8)
    x0, x1 = torch.randn(50, 2, generator=g), torch.randn(50, 2, generator=g) + 3.0
    with pytest.warns(UserWarning, match="did not converge"):
        ot_plan(x0, x1, "sinkhorn", reg=0.05, num_iter_max=1)


def test_doctests() -> None:
    assert doctest.testmod(couplings).failed == 0
