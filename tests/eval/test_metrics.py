"""Metrics: zero on identical sets, grow with a shift, agree with closed forms."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from flowpost.eval.metrics import (
    between_modes,
    energy_distance,
    frechet_distance,
    gaussian_w2,
    knn_precision_recall,
    mean_cov,
    mmd,
    mode_weights,
    robust_mode_spread,
    sliced_w2,
    w2,
    within_mode_std,
)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_w2_identical_and_pure_shift():
    x = randn(300, 3)
    assert w2(x, x) == pytest.approx(0.0, abs=1e-9)
    shift = torch.tensor([1.0, -2.0, 2.0])
    assert w2(x, x + shift) == pytest.approx(3.0, abs=1e-6)  # a translation is optimal
    assert w2(x.numpy(), (x + shift).numpy()) == pytest.approx(3.0, abs=1e-6)


def test_w2_unequal_sizes_and_images_are_flattened():
    x = randn(40, 1, 2, 2)
    assert w2(x, torch.cat([x, x])) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="too slow"):
        w2(randn(11, 2), randn(5, 2), max_samples=10)
    with pytest.raises(ValueError, match="different dimensions"):
        w2(randn(5, 2), randn(5, 3))
    bad = randn(5, 2)
    bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match="sample 3"):
        w2(bad, randn(5, 2))


def test_w2_matches_gaussian_closed_form():
    # N(0, I) vs N(m, diag(4, 0.25)): W2^2 = |m|^2 + (2-1)^2 + (0.5-1)^2
    n = 2000
    x = randn(n, 2, seed=1)
    m = np.array([1.0, 0.5])
    y = randn(n, 2, seed=2) * torch.tensor([2.0, 0.5]) + torch.from_numpy(m).float()
    exact = gaussian_w2(np.zeros(2), np.eye(2), m, np.diag([4.0, 0.25]))
    assert exact == pytest.approx(math.sqrt(1.25 + 1 + 0.25))
    assert w2(x, y) == pytest.approx(exact, rel=0.06)


def test_sliced_w2_shift_and_identity():
    x = randn(1000, 4)
    assert sliced_w2(x, x) == pytest.approx(0.0, abs=1e-12)
    s = torch.tensor([2.0, 0.0, 0.0, 0.0])
    # E[(theta . s)^2] = |s|^2 / d for uniform unit directions theta
    assert sliced_w2(x, x + s, n_projections=4000) == pytest.approx(1.0, rel=0.05)
    assert sliced_w2(x, x + s) == sliced_w2(x, x + s)  # seeded: repeatable
    # unequal sizes: a set against itself duplicated is still 0, a shift still |s|/sqrt(d)
    assert sliced_w2(x[:300], torch.cat([x[:300], x[:300]])) == pytest.approx(0.0, abs=1e-12)
    half = sliced_w2(x[:500], x[:250] + s, n_projections=2000)
    assert 0.7 < half < 1.4


def test_sliced_w2_1d_equals_exact_w2():
    x, y = randn(200, 1, seed=3), randn(300, 1, seed=4) * 2 + 1
    assert sliced_w2(x, y, n_projections=3) == pytest.approx(w2(x, y), rel=1e-6)


def test_mmd_and_energy():
    x, x2 = randn(400, 2, seed=5), randn(400, 2, seed=6)
    assert mmd(x, x) == pytest.approx(0.0, abs=1e-12)
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    same_mmd, same_e = mmd(x, x2), energy_distance(x, x2)
    far_mmd, far_e = mmd(x, x2 + 1.0), energy_distance(x, x2 + 1.0)
    assert far_mmd > 10 * same_mmd > 0 and far_e > 10 * same_e > 0
    assert mmd(x, x2 + 2.0) > far_mmd and energy_distance(x, x2 + 2.0) > far_e
    # unbiased estimator: near zero (either sign) for the same law, positive for a shift
    assert abs(mmd(x, x2, unbiased=True)) < 0.02
    assert mmd(x, x2 + 1.0, unbiased=True) > 0.1
    assert mmd(x, x2 + 1.0, bandwidths=[1.0]) > 0
    with pytest.raises(ValueError, match="positive"):
        mmd(x, x2, bandwidths=[0.0])


def test_mmd_bandwidth_comes_from_both_sets():
    # a collapsed sample set against a spread one: the median heuristic must see both sets,
    # so the score is symmetric (with only the first set's distances it was not)
    collapsed, spread = 1e-3 * randn(1500, 2, seed=9), randn(1500, 2, seed=10)
    forward, backward = mmd(collapsed, spread), mmd(spread, collapsed)
    assert forward == pytest.approx(backward, rel=1e-9)
    assert forward > 0.1


def test_energy_distance_1d_closed_form():
    # for point masses at 0 and d: energy distance = 2|d|
    x, y = torch.zeros(10, 1), torch.full((10, 1), 1.5)
    assert energy_distance(x, y) == pytest.approx(3.0)


def test_mode_weights_and_std():
    centers = torch.tensor([[-1.0], [1.0]])
    x = torch.cat([torch.full((30, 1), -1.0), torch.full((10, 1), 1.0), torch.zeros(10, 1)])
    w, unassigned = mode_weights(x, centers, 0.5)
    assert w.tolist() == pytest.approx([0.6, 0.2]) and unassigned == pytest.approx(0.2)
    pts = torch.cat([-1 + 0.1 * randn(500, 1), 1 + 0.2 * randn(500, 1, seed=1)])
    s = within_mode_std(pts, centers, 0.9)
    assert s.tolist() == pytest.approx([0.1, 0.2], rel=0.1)
    assert torch.isnan(within_mode_std(pts[:500], centers, 0.9)[1])


def test_robust_mode_spread_estimates_std_and_ignores_bridges():
    centers = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    pts = torch.cat([centers[0] + 0.1 * randn(2000, 2), centers[1] + 0.2 * randn(2000, 2, seed=1)])
    assert robust_mode_spread(pts, centers, 0.99).tolist() == pytest.approx([0.1, 0.2], rel=0.08)
    # tight clumps (std 0.02) plus 20% of the mass on the bridge between them: the plain std
    # over the assignment radius is inflated several-fold, the robust spread stays near 0.02
    clumps = torch.cat([centers[0] + 0.02 * randn(800, 2), centers[1] + 0.02 * randn(800, 2)])
    u = torch.rand(400, 1, generator=torch.Generator().manual_seed(3))
    bridge = torch.cat([2 * u - 1, 0.02 * randn(400, 1, seed=4)], dim=1)
    x = torch.cat([clumps, bridge])
    assert within_mode_std(x, centers, 0.99).min() > 0.1
    assert robust_mode_spread(x, centers, 0.99).max() < 0.035
    assert torch.isnan(robust_mode_spread(centers[:1], centers, 0.5)).all()


def test_between_modes_counts_mass_outside_the_cores():
    centers = torch.tensor([[0.0], [2.0]])
    x = torch.tensor([[0.0], [0.29], [0.31], [1.0], [2.2]])
    assert between_modes(x, centers, 0.3) == pytest.approx(0.4)


def test_knn_precision_recall_detects_collapse_and_spread():
    ref, same = randn(1500, 2), randn(1500, 2, seed=1)
    m = knn_precision_recall(same, ref)
    assert 0.9 < m["density"] < 1.1 and m["coverage"] > 0.93
    assert m["precision"] > 0.95 and m["recall"] > 0.95
    # collapse to a third of the spread: high fidelity, low diversity
    tight = knn_precision_recall(0.33 * same, ref)
    assert tight["precision"] > 0.95 and tight["density"] > 0.9
    assert tight["coverage"] < 0.5 and tight["recall"] < 0.7
    # over-dispersed: the fidelity drops; recall, unlike coverage, is inflated by the wide
    # sample balls (the reason to read coverage)
    wide = knn_precision_recall(3.0 * same, ref)
    assert wide["density"] < 0.6 and wide["precision"] < 0.75 and wide["coverage"] < 0.75
    assert wide["recall"] > 0.95
    with pytest.raises(ValueError, match="more than 5 samples"):
        knn_precision_recall(ref[:5], ref)


def test_frechet_distance_properties():
    rng = np.random.RandomState(0)
    a = rng.randn(5, 5)
    s1 = a @ a.T + 0.1 * np.eye(5)
    b = rng.randn(5, 5)
    s2 = b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.randn(5), rng.randn(5)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)
    assert gaussian_w2(mu1, s1, mu2, s2) ** 2 == pytest.approx(ref, rel=1e-6)
    # rank-deficient covariances stay finite and non-negative
    low = rng.randn(5, 2)
    v = frechet_distance(mu1, low @ low.T, mu1, low @ low.T)
    assert v == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(mu1, s1, mu2[:3], s2)


def test_frechet_from_samples_matches_w2_for_gaussians():
    x = randn(4000, 3, seed=7)
    y = randn(4000, 3, seed=8) * 1.5 + 0.5
    m1, c1 = mean_cov(x)
    m2, c2 = mean_cov(y)
    # N(0, I) vs N(0.5, 2.25 I) in 3-D: 3 * 0.25 + 3 * 0.25
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(1.5, rel=0.1)


def test_doctests():
    import doctest

    import flowpost.eval.metrics as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
