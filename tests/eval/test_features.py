"""The shipped feature classifiers: load safely, are accurate, and their scores behave."""

import json

import pytest
import torch

from flowpost.data.images import load_image_dataset, thicken
from flowpost.eval.features import (
    accuracy,
    asset_paths,
    classifier_confidence,
    classifier_features,
    frechet_in_features,
    load_feature_classifier,
)


def test_assets_small_and_described():
    for name in ("digits", "mnist5k"):
        weights, meta = asset_paths(name)
        assert weights.stat().st_size < 1_000_000
        info = json.loads(meta.read_text())
        assert info["dataset"] == name and info["heldout_accuracy"] >= 0.95


def test_digits_classifier_heldout_accuracy():
    _, held = load_image_dataset("digits")
    assert accuracy(held.x, held.cond, "digits") >= 0.90
    net = load_feature_classifier("digits@thick")  # variants share their base's classifier
    assert net is load_feature_classifier("digits")
    assert not any(p.requires_grad for p in net.parameters())


def test_mnist5k_classifier_heldout_accuracy():
    _, held = load_image_dataset("mnist5k")
    assert accuracy(held.x, held.cond, "mnist5k") >= 0.90


def test_frechet_in_features_orders_distortions():
    train, held = load_image_dataset("digits")
    ref = train.x[:600]
    same = frechet_in_features(held.x, ref, "digits")
    thick = frechet_in_features(thicken(held.x), ref, "digits")
    noise = frechet_in_features(torch.rand_like(held.x) * 2 - 1, ref, "digits")
    assert frechet_in_features(held.x, held.x, "digits") == pytest.approx(0.0, abs=1e-6)
    assert same < thick < noise
    assert thick > 3 * same


def test_confidence_and_histogram():
    _, held = load_image_dataset("digits")
    real = classifier_confidence(held.x, "digits")
    assert real.fraction > 0.9
    assert torch.allclose(real.histogram.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert (real.histogram - 0.1).abs().max() < 0.02  # the held-out split is balanced
    noise = classifier_confidence(torch.rand(300, 1, 8, 8) * 2 - 1, "digits")
    assert noise.fraction < real.fraction - 0.3
    only_sevens = classifier_confidence(held.x[held.cond == 7], "digits")
    assert float(only_sevens.histogram[7]) > 0.9


def test_errors():
    with pytest.raises(ValueError, match="no shipped feature classifier"):
        load_feature_classifier("cifar10")
    with pytest.raises(ValueError, match="expects"):
        classifier_features(torch.zeros(2, 1, 28, 28), "digits")
    bad = torch.zeros(3, 1, 8, 8)
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="sample 1"):
        classifier_features(bad, "digits")


def test_doctests():
    import doctest

    import flowpost.eval.features as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
