"""Image datasets: shapes, ranges, labels, a fixed stratified split, and the variants."""

import numpy as np
import pytest
import torch

from flowpost.data.base import ArrayData
from flowpost.data.images import (
    apply_image_transform,
    load_image_dataset,
    parse_balance,
    stratified_split,
    thicken,
)


@pytest.mark.parametrize(("name", "side", "total"), [("digits", 8, 1797), ("mnist5k", 28, 5000)])
def test_shapes_ranges_labels_split(name, side, total):
    train, held = load_image_dataset(name)
    assert train.x.shape[1:] == (1, side, side) and held.x.shape[1:] == (1, side, side)
    assert len(train) + len(held) == total
    assert abs(len(held) / total - 0.2) < 0.01
    for d in (train, held):
        assert float(d.x.min()) == -1.0 and float(d.x.max()) == 1.0
        assert d.spec.num_classes == 10
        assert set(d.cond.tolist()) == set(range(10))
    # stratified: each class is held out in the same proportion
    frac = (
        torch.bincount(held.cond, minlength=10).float()
        / (
            torch.bincount(held.cond, minlength=10) + torch.bincount(train.cond, minlength=10)
        ).float()
    )
    assert (frac - 0.2).abs().max() < 0.01
    # the split is fixed: the same images come back whatever the seed, and no image is in both
    train2, held2 = load_image_dataset(name, seed=123)
    assert torch.equal(train.x, train2.x) and torch.equal(held.cond, held2.cond)
    flat_t = {tuple(r) for r in train.x.flatten(1)[:300].tolist()}
    assert not any(tuple(r) in flat_t for r in held.x.flatten(1).tolist())


def test_stratified_split_is_a_partition():
    labels = np.repeat(np.arange(3), [10, 20, 30])
    tr, he = stratified_split(labels, 0.2, seed=0)
    assert sorted(np.concatenate([tr, he]).tolist()) == list(range(60))
    assert np.bincount(labels[he]).tolist() == [2, 4, 6]


def test_thicken_grows_strokes_and_keeps_them():
    x = -torch.ones(1, 1, 28, 28)
    x[0, 0, 10, 10] = 1.0
    t = thicken(x)
    assert int((t > 0).sum()) == 5  # the pixel and its four neighbours
    assert t[0, 0, 9, 10] == 1.0 and t[0, 0, 10, 11] == 1.0 and t[0, 0, 9, 9] == -1.0
    small = -torch.ones(1, 1, 8, 8)
    small[0, 0, 3, 3] = 0.5
    ts = thicken(small)
    assert int((ts > -1).sum()) == 2 and ts[0, 0, 3, 4] == 0.5
    train, _ = load_image_dataset("mnist5k")
    thick, _ = load_image_dataset("mnist5k", "thick")
    assert (thick.x >= train.x).all()
    lit, lit_thick = float((train.x > 0).float().mean()), float((thick.x > 0).float().mean())
    assert lit_thick > 1.5 * lit
    assert thick.name == "mnist5k@thick"


def test_invert_and_balance():
    train, _ = load_image_dataset("digits")
    inv = apply_image_transform(train, "invert")
    assert torch.equal(inv.x, -train.x)
    bal, held = load_image_dataset("digits", "balance:1,1,1,1,1,1,1,1,1,5")
    counts = torch.bincount(bal.cond, minlength=10).float()
    assert (counts[:9] == counts[0]).all()
    assert abs(float(counts[9] / counts[0]) - 5.0) < 0.2
    # the held-out target has the same shifted balance
    hc = torch.bincount(held.cond, minlength=10).float()
    assert abs(float(hc[9] / hc[0]) - 5.0) < 0.5
    drop, _ = load_image_dataset("digits", "balance:0,1,1,1,1,1,1,1,1,1")
    assert 0 not in drop.cond.tolist()


def test_bad_transforms_raise():
    with pytest.raises(ValueError, match="unknown image transform"):
        load_image_dataset("digits", "blur")
    with pytest.raises(ValueError, match="10 non-negative class weights"):
        parse_balance("balance:1,2")
    with pytest.raises(ValueError, match="needs class labels"):
        apply_image_transform(ArrayData(torch.zeros(4, 1, 8, 8)), "balance:" + ",".join("1" * 10))
    with pytest.raises(ValueError, match="unknown image dataset"):
        load_image_dataset("cifar10")


def test_doctests():
    import doctest

    import flowpost.data.images as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
