"""Tests of flowpost/data/base.py: DataSpec, Batch, and ArrayData's checks of samples and labels."""

import pytest
import torch

from flowpost.data.base import ArrayData, Batch, DataSpec


def test_data_spec():
    spec = DataSpec((1, 28, 28), 10)
    assert spec.numel == 784 and spec.is_image
    assert DataSpec((3,)).numel == 3 and not DataSpec((3,)).is_image


def test_array_data_spec_and_batches():
    x = torch.randn(6, 2, dtype=torch.float64)
    data = ArrayData(x, torch.tensor([0, 1, 2, 0, 1, 2]), num_classes=5, name="d")
    assert data.x.dtype == torch.float32 and data.cond.dtype == torch.long
    assert data.spec == DataSpec((2,), 5) and len(data) == 6
    batch = data.batch(torch.tensor([4, 1]))
    torch.testing.assert_close(batch.x, x[[4, 1]].float())
    assert batch.cond.tolist() == [1, 1] and len(batch) == 2
    assert data.all().x is data.x
    # without num_classes it is the largest label + 1; without labels there are no classes
    assert ArrayData(x, torch.tensor([0, 3, 1, 0, 0, 0])).spec.num_classes == 4
    assert ArrayData(x, num_classes=5).spec.num_classes is None
    # whole-valued float labels are accepted as integers
    assert ArrayData(x[:2], torch.tensor([1.0, 0.0])).cond.tolist() == [1, 0]
    moved = Batch(x, None).to("cpu")
    assert moved.cond is None and moved.x.shape == (6, 2)


def test_bad_samples_are_named():
    with pytest.raises(ValueError, match="empty"):
        ArrayData(torch.zeros(0, 2))
    with pytest.raises(ValueError, match=r"\(n, \.\.\.\)"):
        ArrayData(torch.zeros(5))
    x = torch.zeros(5, 2)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="pts: sample 3 contains NaN"):
        ArrayData(x, name="pts")


def test_bad_labels_are_named():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="3 is reserved for the null label"):
        # a label equal to num_classes would silently train the unconditional (null) label
        ArrayData(x, torch.tensor([0, 1, 3, 2]), num_classes=3)
    with pytest.raises(ValueError, match=r"label 1 is -1, outside \[0, 2\]"):
        ArrayData(x, torch.tensor([0, -1, 2, 2]))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        ArrayData(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        ArrayData(x, torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="label 2 is 0.5"):
        ArrayData(x, torch.tensor([0.0, 1.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="dtype torch.bool"):
        ArrayData(x, torch.tensor([True, False, True, True]))


def test_doctests():
    import doctest

    import flowpost.data.base as module

    result = doctest.testmod(module)
    assert result.attempted >= 4 and result.failed == 0


def test_float_condition_vectors():
    data = ArrayData(torch.zeros(3, 2), torch.tensor([[0.5, 1.0], [2.0, 3.0], [0.0, -1.0]]))
    assert data.spec.cond_dim == 2 and data.spec.num_classes is None and data.spec.conditional
    assert data.batch(torch.tensor([1])).cond.tolist() == [[2.0, 3.0]]
    bad = torch.zeros(3, 2)
    bad[1, 0] = float("inf")
    with pytest.raises(ValueError, match="condition of sample 1 contains NaN or Inf"):
        ArrayData(torch.zeros(3, 2), bad)
    with pytest.raises(ValueError, match=r"shape \(3, d\)"):
        ArrayData(torch.zeros(3, 2), torch.zeros(2, 4))
