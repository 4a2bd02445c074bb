"""Toys: seeded, right shapes, documented modes, scales and transforms."""

import math

import pytest
import torch

from flowpost.data.toys import (
    MIXTURES,
    TOYS,
    assign_modes,
    mode_info,
    parse_transform,
    sample_toy,
    toy_dataset,
    toy_dim,
)


def g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", TOYS)
def test_seeded_shape_and_unit_spread(name):
    a = sample_toy(name, 4000, g(3))
    b = sample_toy(name, 4000, g(3))
    c = sample_toy(name, 4000, g(4))
    assert a.shape == (4000, toy_dim(name))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # documented: every toy is centred with a per-coordinate spread of roughly one
    assert a.mean(0).abs().max() < 0.1
    assert ((a.std(0) > 0.4) & (a.std(0) < 1.3)).all()


def test_mixture1d_modes_weights_and_std():
    x = sample_toy("mixture1d", 20000, g(0))
    info = mode_info("mixture1d")
    assert info.centers.flatten().tolist() == [-1.5, -0.5, 0.5, 1.5]
    idx = assign_modes(x, info.centers, info.radius)
    assert (idx >= 0).all()  # modes are 20 std apart: nothing lands in between
    frac = torch.bincount(idx, minlength=4).float() / len(x)
    assert torch.allclose(frac, torch.full((4,), 0.25), atol=0.015)
    for k in range(4):
        xs = x[idx == k, 0]
        assert abs(float(xs.mean()) - info.centers[k, 0].item()) < 0.005
        assert abs(float(xs.std()) - 0.05) < 0.003


def test_8gaussians_modes_on_circle():
    info = mode_info("8gaussians")
    assert torch.allclose(info.centers.norm(dim=1), torch.full((8,), 1.5), atol=1e-5)
    x = sample_toy("8gaussians", 16000, g(1))
    idx = assign_modes(x, info.centers, info.radius)
    assert float((idx < 0).float().mean()) < 0.001
    frac = torch.bincount(idx[idx >= 0], minlength=8).float() / len(x)
    assert (frac - 0.125).abs().max() < 0.015
    within = (x[idx == 0] - info.centers[0]).std(0)
    assert ((within - 0.1).abs() < 0.01).all()


def test_unbalanced_weights_are_realised():
    for name in MIXTURES:
        info = mode_info(name, "unbalanced")
        k = info.centers.shape[0]
        assert torch.allclose(info.weights, torch.arange(1, k + 1).float() / (k * (k + 1) / 2))
        x = sample_toy(name, 20000, g(2), transform="unbalanced")
        idx = assign_modes(x, info.centers, info.radius)
        frac = torch.bincount(idx[idx >= 0], minlength=k).float() / len(x)
        assert (frac - info.weights).abs().max() < 0.015


def test_geometric_transforms_move_samples_and_modes():
    base = sample_toy("8gaussians", 1000, g(0))
    shifted = sample_toy("8gaussians", 1000, g(0), transform="shift:0.3")
    assert torch.allclose(shifted - base, torch.full_like(base, 0.3), atol=1e-6)
    rot = sample_toy("8gaussians", 1000, g(0), transform="rotate:90")
    assert torch.allclose(rot[:, 0], -base[:, 1], atol=1e-5)
    assert torch.allclose(rot[:, 1], base[:, 0], atol=1e-5)
    scaled = sample_toy("moons", 500, g(0), transform="scale:2")
    assert torch.allclose(scaled, 2 * sample_toy("moons", 500, g(0)))
    # rotating 8 gaussians by 22.5 degrees puts the modes half-way between the old ones
    old, new = mode_info("8gaussians"), mode_info("8gaussians", "rotate")
    assert (assign_modes(new.centers, old.centers, old.radius) == -1).all()
    info = mode_info("mixture1d", "scale:2")
    assert info.std == pytest.approx(0.1) and info.radius == pytest.approx(1.0)
    x = sample_toy("mixture1d", 2000, g(5), transform="scale:2")
    assert (assign_modes(x, info.centers, info.radius) >= 0).all()


def test_checkerboard_only_dark_squares():
    x = sample_toy("checkerboard", 5000, g(0))
    assert x.abs().max() <= 2.0
    cell = torch.floor(x + 2).long()
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()


def test_rings_radii():
    r = sample_toy("rings", 6000, g(0)).norm(dim=1)
    near = torch.stack([(r - c).abs() for c in (0.6, 1.2, 1.8)]).min(0).values
    assert float(near.max()) < 0.25
    assert float(near.mean()) < 0.05


def test_spirals_radius_and_symmetry():
    x = sample_toy("spirals", 4000, g(0))
    assert float(x.norm(dim=1).max()) < 2.3
    # the second spiral is the first rotated by 180 degrees: the cloud is point symmetric
    assert float(x.mean(0).norm()) < 0.1
    assert math.isclose(float((x[:, 0] ** 2).mean()), float((x[:, 1] ** 2).mean()), rel_tol=0.2)


def test_dataset_seeded_and_named():
    a, b = toy_dataset("moons", 100, seed=7), toy_dataset("moons", 100, seed=7)
    assert torch.equal(a.x, b.x) and a.name == "moons"
    assert toy_dataset("moons", 10, transform="shift").name == "moons@shift"


def test_bad_names_and_transforms_raise():
    with pytest.raises(ValueError, match="unknown toy"):
        sample_toy("circles", 10)
    with pytest.raises(ValueError, match="unknown toy transform"):
        parse_transform("flip")
    with pytest.raises(ValueError, match="must be a number"):
        parse_transform("shift:abc")
    with pytest.raises(ValueError, match="2-D"):
        sample_toy("mixture1d", 10, transform="rotate")
    with pytest.raises(ValueError, match="mixtures"):
        sample_toy("moons", 10, transform="unbalanced")
    with pytest.raises(ValueError, match="no discrete modes"):
        mode_info("rings")
    with pytest.raises(ValueError, match="dimension"):
        assign_modes(torch.zeros(3, 2), mode_info("mixture1d").centers, 0.5)


def test_smaller_sample_is_prefix_of_larger():
    small = sample_toy("spirals", 700, g(9))
    large = sample_toy("spirals", 3000, g(9))
    assert torch.equal(small, large[:700])
    assert sample_toy("rings", 0).shape == (0, 2)


def test_doctests():
    import doctest

    import flowpost.data.toys as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
