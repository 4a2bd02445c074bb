"""Classifiers: shapes, time dependence, a quick fit on separable data, clear errors."""

import pytest
import torch
import torch.nn.functional as F

from flowpost.data.base import DataSpec
from flowpost.nets.classifier import ImageClassifier, TimeClassifier


@pytest.mark.parametrize("side", [8, 28])
def test_image_classifier_shapes(side):
    net = ImageClassifier(DataSpec((1, side, side), 10), channels=(8, 16), feature_dim=32)
    x = torch.randn(3, 1, side, side)
    assert net(x).shape == (3, 10)
    assert net.features(x).shape == (3, 32)
    # the logits are a linear read-out of the features
    assert torch.allclose(net.head(net.features(x)), net(x))


def test_time_classifier_depends_on_time_and_input():
    torch.manual_seed(0)
    for spec in (DataSpec((1, 8, 8), 10), DataSpec((3,), 4)):
        clf = TimeClassifier(spec)
        x = torch.randn(5, *spec.shape)
        a, b = clf(x, torch.zeros(5)), clf(x, torch.ones(5))
        assert a.shape == (5, spec.num_classes)
        assert (a - b).abs().max() > 1e-4
        assert (clf(x, torch.zeros(5)) - clf(x + 1, torch.zeros(5))).abs().max() > 1e-4


def test_time_classifier_learns_separable_vectors():
    # two classes at +-2 in 2-D, noised along the path x_t = (1-t) x0 + t x1: after a short
    # fit, samples near t = 1 are classified almost perfectly, pure noise (t = 0) at chance
    torch.manual_seed(0)
    clf = TimeClassifier(DataSpec((2,), 2), hidden=32, depth=2)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-2)
    for _ in range(150):
        y = torch.randint(0, 2, (128,))
        x1 = (y.float() * 4 - 2.0)[:, None] * torch.tensor([1.0, 0.0])
        x1 = x1 + 0.1 * torch.randn(128, 2)
        t = torch.rand(128)
        xt = (1 - t[:, None]) * torch.randn(128, 2) + t[:, None] * x1
        loss = F.cross_entropy(clf(xt, t), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    y = torch.randint(0, 2, (500,))
    x1 = (y.float() * 4 - 2.0)[:, None] * torch.tensor([1.0, 0.0])
    t = torch.full((500,), 0.95)
    xt = 0.05 * torch.randn(500, 2) + 0.95 * x1
    assert float((clf(xt, t).argmax(1) == y).float().mean()) > 0.97
    p0 = F.softmax(clf(torch.randn(500, 2), torch.zeros(500)), dim=1)
    assert float((p0[:, 0] - 0.5).abs().mean()) < 0.15


def test_errors():
    with pytest.raises(ValueError, match="images"):
        ImageClassifier(DataSpec((2,), 3))
    with pytest.raises(ValueError, match="labelled"):
        ImageClassifier(DataSpec((1, 8, 8), None))
    with pytest.raises(ValueError, match="labelled"):
        TimeClassifier(DataSpec((2,), None))
    with pytest.raises(ValueError, match=r"t must have shape \(4,\)"):
        TimeClassifier(DataSpec((2,), 3))(torch.randn(4, 2), torch.rand(4, 1))


def test_doctests():
    import doctest

    import flowpost.nets.classifier as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
