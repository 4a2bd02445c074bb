"""Scores of generated digits in the feature space of a shipped classifier.

``flowpost/assets/classifier_{digits,mnist5k}.safetensors`` hold small CNNs
(:class:`flowpost.nets.classifier.ImageClassifier`) trained on the fixed train split by
``scripts/train_feature_classifier.py``; the ``.json`` beside each holds the architecture
and the held-out accuracy. Weights are read with ``safetensors`` (never ``torch.load``).

* :func:`frechet_in_features`: the Frechet distance between Gaussians fitted to the
  penultimate-layer features of two sample sets (an FID for digits).
* :func:`classifier_confidence`: the fraction of samples the classifier labels with
  confidence above a threshold (a proxy for legibility) and the histogram of predicted
  classes (a proxy for diversity / class balance).

Example:
    >>> from flowpost.data.images import load_image_dataset
    >>> _, held = load_image_dataset("digits")
    >>> frechet_in_features(held.x[:150], held.x[150:300], "digits") < 5.0
    True
    >>> classifier_confidence(held.x, "digits").fraction > 0.9
    True
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from flowpost.data.base import DataSpec
from flowpost.eval.metrics import frechet_distance
from flowpost.nets.classifier import ImageClassifier

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets"
SHIPPED: tuple[str, ...] = ("digits", "mnist5k")


class Confidence(NamedTuple):
    """``fraction`` of samples classified with max softmax probability above the threshold,
    and ``histogram`` (K,): the fraction of samples predicted as each class."""

    fraction: float
    histogram: Tensor


def base_dataset(dataset: str) -> str:
    """``"digits@thick"`` -> ``"digits"``: the dataset a transformed variant comes from."""
    return dataset.split("@", 1)[0]


def asset_paths(name: str) -> tuple[Path, Path]:
    """(weights, metadata) paths of the shipped classifier for dataset ``name``."""
    return ASSET_DIR / f"classifier_{name}.safetensors", ASSET_DIR / f"classifier_{name}.json"


def build_from_meta(meta: dict) -> ImageClassifier:
    """An untrained classifier with the architecture recorded in a metadata dict."""
    spec = DataSpec(tuple(meta["shape"]), int(meta["num_classes"]))
    return ImageClassifier(
        spec, channels=tuple(meta["channels"]), feature_dim=int(meta["feature_dim"])
    )


def load_feature_classifier(name: str) -> ImageClassifier:
    """The shipped classifier for ``digits`` or ``mnist5k`` or a variant of them such as
    ``digits@thick`` (eval mode, frozen, CPU; loaded once and shared)."""
    key = base_dataset(name)
    if key not in SHIPPED:
        raise ValueError(
            f"no shipped feature classifier for {name!r}; available: {', '.join(SHIPPED)}"
        )
    return _load(key)


@functools.lru_cache(maxsize=4)
def _load(key: str) -> ImageClassifier:
    from safetensors.torch import load_file

    weights, meta_path = asset_paths(key)
    if not weights.is_file() or not meta_path.is_file():
        raise FileNotFoundError(
            f"classifier files missing: {weights} / {meta_path}; run "
            f"scripts/train_feature_classifier.py --dataset {key} to recreate them"
        )
    meta = json.loads(meta_path.read_text())
    net = build_from_meta(meta)
    net.load_state_dict(load_file(str(weights)))
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _batched(net: ImageClassifier, x: Tensor, fn: str, batch: int = 512) -> Tensor:
    if tuple(x.shape[1:]) != net.spec.shape:
        raise ValueError(
            f"samples have shape {tuple(x.shape[1:])} but the classifier expects "
            f"{net.spec.shape}; use the classifier of the dataset the samples imitate"
        )
    x = x.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x.flatten(1)).all(1)).nonzero()[0, 0])
        raise ValueError(f"sample {bad} contains NaN or Inf; the generator diverged")
    outs = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch):
            chunk = x[start : start + batch]
            outs.append(net.features(chunk) if fn == "features" else net(chunk))
    return torch.cat(outs)


def classifier_features(samples: Tensor, dataset: str) -> Tensor:
    """Penultimate-layer features (n, feature_dim) of images under the shipped classifier."""
    return _batched(load_feature_classifier(dataset), samples, "features")


def frechet_in_features(samples: Tensor, reference: Tensor, dataset: str) -> float:
    """Frechet distance between Gaussian fits to the classifier features of two sets."""
    if samples.shape[0] < 2 or reference.shape[0] < 2:
        raise ValueError("frechet_in_features needs at least 2 samples in each set")
    fa = classifier_features(samples, dataset).double().numpy()
    fb = classifier_features(reference, dataset).double().numpy()
    return frechet_distance(
        fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False)
    )


def classifier_confidence(samples: Tensor, dataset: str, threshold: float = 0.9) -> Confidence:
    """Fraction of samples classified with confidence > ``threshold``, and class histogram."""
    net = load_feature_classifier(dataset)
    probs = F.softmax(_batched(net, samples, "logits"), dim=1)
    conf, pred = probs.max(dim=1)
    k = probs.shape[1]
    hist = torch.bincount(pred, minlength=k).double() / samples.shape[0]
    return Confidence(float((conf > threshold).double().mean()), hist)


def accuracy(samples: Tensor, labels: Tensor, dataset: str) -> float:
    """Fraction of ``samples`` the shipped classifier labels correctly."""
    logits = _batched(load_feature_classifier(dataset), samples, "logits")
    return float((logits.argmax(1) == labels.long()).double().mean())


__all__ = [
    "ASSET_DIR",
    "SHIPPED",
    "Confidence",
    "base_dataset",
    "asset_paths",
    "build_from_meta",
    "load_feature_classifier",
    "classifier_features",
    "frechet_in_features",
    "classifier_confidence",
    "accuracy",
]
