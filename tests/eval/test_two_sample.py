"""The energy permutation test: its statistic by brute force, its p-value's calibration and
power, and an exhaustive enumeration of the relabellings on a tiny set."""

from __future__ import annotations

import itertools

import pytest
import torch

from flowpost.eval.two_sample import energy_test


def brute_energy(x: torch.Tensor, y: torch.Tensor) -> float:
    """The unbiased energy distance, pair by pair."""
    n, m = len(x), len(y)
    xy = sum(float((a - b).norm()) for a in x for b in y) / (n * m)
    xx = sum(float((x[i] - x[j]).norm()) for i in range(n) for j in range(n) if i != j)
    yy = sum(float((y[i] - y[j]).norm()) for i in range(m) for j in range(m) if i != j)
    return 2 * xy - xx / (n * (n - 1)) - yy / (m * (m - 1))


def test_the_statistic_is_the_unbiased_energy_distance_pair_by_pair() -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(7, 3, generator=g), torch.randn(9, 3, generator=g) + 0.5
    assert energy_test(x, y, permutations=10).statistic == pytest.approx(brute_energy(x, y))


def test_the_p_value_matches_an_exhaustive_enumeration_of_the_relabellings() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 2, generator=g) + 0.7, torch.randn(4, 2, generator=g)
    pooled = torch.cat([x, y])
    observed = brute_energy(x, y)
    values = []
    for pick in itertools.combinations(range(8), 4):
        rest = [i for i in range(8) if i not in pick]
        values.append(brute_energy(pooled[list(pick)], pooled[rest]))
    exact = sum(v >= observed - 1e-12 for v in values) / len(values)
    test = energy_test(x, y, permutations=4000, seed=0)
    # 4000 random relabellings estimate the exact fraction within a few standard errors
    assert test.p == pytest.approx(exact, abs=4 * (exact * (1 - exact) / 4000) ** 0.5 + 1e-3)


def test_one_distribution_rejects_at_about_the_nominal_rate() -> None:
    rejections = 0
    for seed in range(40):
        g = torch.Generator().manual_seed(100 + seed)
        x, y = torch.randn(64, 2, generator=g), torch.randn(300, 2, generator=g)
        rejections += energy_test(x, y, permutations=100, seed=seed).p <= 0.05
    # 40 draws at level 0.05: 2 expected; 7 or more has probability below 0.5 %
    assert rejections <= 6


def test_it_tells_a_small_shift_and_a_scale_change_apart() -> None:
    g = torch.Generator().manual_seed(5)
    y = torch.randn(500, 2, generator=g)
    assert energy_test(torch.randn(256, 2, generator=g) + 0.4, y).p < 0.01
    assert energy_test(1.5 * torch.randn(256, 2, generator=g), y).p < 0.01


def test_p_is_never_below_one_over_permutations_plus_one_and_leaves_the_global_stream() -> None:
    x, y = torch.zeros(5, 2) + 10.0, torch.zeros(5, 2)
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    test = energy_test(x, y, permutations=50)
    assert test.p >= 1 / 51
    assert torch.equal(torch.rand(1), expected)  # the test drew from its own generator


def test_too_few_points_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="at least 2 points"):
        energy_test(torch.zeros(1, 2), torch.zeros(5, 2))
