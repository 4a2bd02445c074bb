"""Tests of flowpost/nets/embeddings.py: sinusoidal features, time and condition embeddings."""

import math

import pytest
import torch

from flowpost.nets.embeddings import (
    CondEmbedding,
    TimeEmbedding,
    check_labels,
    check_time,
    conditioning,
    fourier_features,
    sinusoidal_embedding,
)


def test_sinusoidal_values_and_norm():
    t = torch.rand(7)
    emb = sinusoidal_embedding(t, 16, scale=1000.0)
    assert emb.shape == (7, 16)
    # each (cos, sin) pair has unit norm, so the squared norm is dim / 2
    torch.testing.assert_close(emb.pow(2).sum(1), torch.full((7,), 8.0))
    # the first frequency is 1: columns 0 and 8 are cos / sin of scale * t
    torch.testing.assert_close(emb[:, 0], torch.cos(1000.0 * t))
    torch.testing.assert_close(emb[:, 8], torch.sin(1000.0 * t))
    # the lowest frequency is 1 / max_period ** ((half - 1) / half)
    w = math.exp(-math.log(10000.0) * 7 / 8)
    torch.testing.assert_close(emb[:, 7], torch.cos(1000.0 * w * t))


def test_sinusoidal_at_zero_and_odd_dim():
    emb = sinusoidal_embedding(torch.zeros(3), 9)
    assert emb.shape == (3, 9)
    torch.testing.assert_close(emb[:, :4], torch.ones(3, 4))  # cos(0)
    torch.testing.assert_close(emb[:, 4:], torch.zeros(3, 5))  # sin(0) and the padding


def test_sinusoidal_separates_close_times():
    t = torch.tensor([0.500, 0.501])
    emb = sinusoidal_embedding(t, 64)
    assert float((emb[0] - emb[1]).norm()) > 0.5


def test_sinusoidal_rejects_bad_shapes():
    with pytest.raises(ValueError, match="1-D"):
        sinusoidal_embedding(torch.rand(3, 2), 8)
    with pytest.raises(ValueError, match="dim >= 2"):
        sinusoidal_embedding(torch.rand(3), 1)


def test_fourier_features_per_coordinate():
    x = torch.randn(4, 3)
    ff = fourier_features(x, 6, scale=100.0)
    assert ff.shape == (4, 18)
    torch.testing.assert_close(ff[:, 6:12], sinusoidal_embedding(x[:, 1], 6, scale=100.0))


def test_time_embedding_zero_init_and_default():
    t = torch.rand(5)
    assert float(TimeEmbedding(12, zero_init=True)(t).abs().max()) == 0.0
    out = TimeEmbedding(12)(t)
    assert out.shape == (5, 12) and float(out.std()) > 1e-3


def test_cond_embedding_null_label_and_errors():
    emb = CondEmbedding(8, num_classes=3)
    null = emb(torch.tensor([3, 3]), batch=2)
    torch.testing.assert_close(emb(None, batch=2), null)  # no labels = null label
    assert not torch.allclose(emb(torch.tensor([0, 1]), batch=2), null)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        emb(torch.tensor([0, 4]), batch=2)
    with pytest.raises(ValueError, match="shape"):
        emb(torch.tensor([0, 1, 2]), batch=2)
    with pytest.raises(ValueError, match="unconditional"):
        CondEmbedding(8)(torch.tensor([0, 1]), batch=2)
    assert CondEmbedding(8)(None, batch=2) is None


def test_cond_embedding_float_condition():
    emb = CondEmbedding(8, cond_dim=5)
    assert emb(torch.randn(4, 5), batch=4).shape == (4, 8)
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        emb(torch.randn(4, 3), batch=4)
    with pytest.raises(ValueError, match="either"):
        CondEmbedding(8, num_classes=2, cond_dim=3)


def test_check_labels_dtype():
    with pytest.raises(ValueError, match="integer"):
        check_labels(torch.tensor([0.0, 1.0]), 3, 2)


def test_check_time_shapes():
    assert check_time(torch.tensor(0.5), 3).shape == (3,)  # a scalar is broadcast
    torch.testing.assert_close(check_time(torch.arange(3.0)[:, None], 3), torch.arange(3.0))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        check_time(torch.rand(4), 3)
    with pytest.raises(TypeError, match="tensor"):
        check_time(0.5, 3)


def test_conditioning_sums_time_label_and_end_time():
    time, labels = TimeEmbedding(8), CondEmbedding(8, num_classes=3)
    end = TimeEmbedding(8)
    t, t_end, c = torch.rand(4), torch.rand(4), torch.tensor([0, 1, 2, 3])
    cpu = torch.device("cpu")
    out = conditioning(time, labels, t, c, 4, cpu, end_time_embed=end, t_end=t_end)
    torch.testing.assert_close(out, time(t) + labels(c, 4) + end(t_end))
    # no labels on a conditional embedding: the null label; no t_end: no end-time term
    torch.testing.assert_close(
        conditioning(time, labels, t, None, 4, cpu, end_time_embed=end),
        time(t) + labels(torch.full((4,), 3), 4),
    )
    torch.testing.assert_close(conditioning(time, CondEmbedding(8), t, None, 4, cpu), time(t))
    with pytest.raises(ValueError, match="end_time=True"):
        conditioning(time, labels, t, c, 4, cpu, t_end=t_end)
    with pytest.raises(ValueError, match=r"t_end must have shape \(4,\)"):
        conditioning(time, labels, t, c, 4, cpu, end_time_embed=end, t_end=torch.rand(3))


def test_doctests():
    import doctest

    import flowpost.nets.embeddings as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
