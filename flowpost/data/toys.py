"""Toy distributions: a 1-D four-mode mixture and five 2-D shapes, all seeded, no download.

Scales (chosen so every toy has a per-coordinate spread of roughly one, like the N(0, I)
prior the flows start from):

=============  ==============================================================================
name           definition
=============  ==============================================================================
mixture1d      modes at -1.5, -0.5, 0.5, 1.5, std 0.05, equal weights (the AF paper's toy)
8gaussians     8 modes on a circle of radius 1.5 at angles k*45 degrees, std 0.1, equal weights
moons          two interleaved half circles (radius 1), centred at the origin, noise std 0.05
checkerboard   uniform on the 8 dark squares of a 4x4 board of unit squares covering [-2, 2]^2
spirals        two interleaved spirals (the second rotated by 180 degrees), radius up to 2,
               noise std 0.05
rings          three concentric circles of radii 0.6, 1.2, 1.8 (equal mass), noise std 0.04
=============  ==============================================================================

Target transforms for fine-tuning experiments (``DataConfig.transform``), applied to every
sample (and to the mode centers of the mixtures):

* ``none``
* ``shift[:d]``     translate every coordinate by ``d`` (default 0.5)
* ``rotate[:deg]``  rotate a 2-D toy by ``deg`` degrees about the origin (default 22.5, which
  puts the 8 Gaussians half-way between their old positions)
* ``scale[:s]``     multiply by ``s`` (default 1.5)
* ``unbalanced``    mixtures only: mode weights proportional to 1, 2, ..., K
  (``mixture1d``: 0.1, 0.2, 0.3, 0.4), so the heaviest mode carries K times the lightest

Example:
    >>> import torch
    >>> x = sample_toy("8gaussians", 1000, generator=torch.Generator().manual_seed(0))
    >>> x.shape
    torch.Size([1000, 2])
    >>> info = mode_info("mixture1d")
    >>> info.centers.flatten().tolist()
    [-1.5, -0.5, 0.5, 1.5]
    >>> (assign_modes(torch.tensor([[-1.49], [3.0]]), info.centers, info.radius)).tolist()
    [0, -1]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from flowpost.data.base import ArrayData

TOYS: tuple[str, ...] = ("mixture1d", "8gaussians", "moons", "checkerboard", "spirals", "rings")
MIXTURES: tuple[str, ...] = ("mixture1d", "8gaussians")
TOY_TRANSFORMS: tuple[str, ...] = ("none", "shift", "rotate", "scale", "unbalanced")

_MIX1D_CENTERS = (-1.5, -0.5, 0.5, 1.5)
_MIX1D_STD = 0.05
_8G_RADIUS = 1.5
_8G_STD = 0.1
_BLOCK = 1024


@dataclass(frozen=True)
class ModeInfo:
    """The modes of a mixture toy: centers (K, d), weights (K,) summing to 1, the per-mode
    standard deviation, and the assignment radius (a sample farther than ``radius`` from every
    center counts as belonging to no mode)."""

    centers: Tensor
    weights: Tensor
    std: float
    radius: float


def toy_dim(name: str) -> int:
    """The dimension of toy ``name`` (1 for ``mixture1d``, else 2)."""
    _check_name(name)
    return 1 if name == "mixture1d" else 2


def _check_name(name: str) -> None:
    if name not in TOYS:
        raise ValueError(f"unknown toy {name!r}; choose one of {', '.join(TOYS)}")


def parse_transform(transform: str) -> tuple[str, float | None]:
    """Split ``"shift:0.3"`` into ``("shift", 0.3)``; ``"none"`` into ``("none", None)``."""
    kind, _, arg = transform.partition(":")
    kind = kind.strip() or "none"
    if kind not in TOY_TRANSFORMS:
        raise ValueError(
            f"unknown toy transform {transform!r}; choose one of {', '.join(TOY_TRANSFORMS)} "
            "(shift/rotate/scale take an optional ':value', e.g. 'shift:0.5')"
        )
    if not arg:
        return kind, None
    if kind in ("none", "unbalanced"):
        raise ValueError(f"toy transform {kind!r} takes no value, got {transform!r}")
    try:
        return kind, float(arg)
    except ValueError:
        raise ValueError(
            f"toy transform {transform!r}: the value after ':' must be a number"
        ) from None


def _check_transform(name: str, transform: str) -> tuple[str, float | None]:
    kind, value = parse_transform(transform)
    if kind == "rotate" and toy_dim(name) != 2:
        raise ValueError(f"transform 'rotate' needs a 2-D toy; {name!r} is 1-D (try 'shift')")
    if kind == "unbalanced" and name not in MIXTURES:
        raise ValueError(f"transform 'unbalanced' applies to the mixtures {MIXTURES}, not {name!r}")
    return kind, value


def _apply_geometric(x: Tensor, kind: str, value: float | None) -> Tensor:
    """The affine part of a transform (shift / rotate / scale); identity otherwise."""
    if kind == "shift":
        return x + (0.5 if value is None else value)
    if kind == "scale":
        return x * (1.5 if value is None else value)
    if kind == "rotate":
        a = math.radians(22.5 if value is None else value)
        rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=x.dtype)
        return x @ rot.T
    return x


def _base_centers(name: str) -> Tensor:
    if name == "mixture1d":
        return torch.tensor(_MIX1D_CENTERS).unsqueeze(1)
    angles = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    return (_8G_RADIUS * torch.stack([angles.cos(), angles.sin()], dim=1)).float()


def mode_info(name: str, transform: str = "none") -> ModeInfo:
    """Centers, weights, std and assignment radius of mixture toy ``name`` after ``transform``.

    The radius is half the distance between neighbouring centers (0.5 for ``mixture1d``,
    0.57 for ``8gaussians``), i.e. five to ten standard deviations: a sample inside it is
    unambiguously that mode's, a sample outside every radius is a failure (between modes).
    """
    if name not in MIXTURES:
        raise ValueError(f"{name!r} has no discrete modes; mode_info applies to {MIXTURES}")
    kind, value = _check_transform(name, transform)
    centers = _base_centers(name)
    k = centers.shape[0]
    if kind == "unbalanced":
        weights = torch.arange(1, k + 1, dtype=torch.float32)
    else:
        weights = torch.ones(k)
    weights = weights / weights.sum()
    std = _MIX1D_STD if name == "mixture1d" else _8G_STD
    gap = float(torch.cdist(centers[:1], centers[1:]).min())
    scale = 1.0
    if kind == "scale":
        scale = abs(1.5 if value is None else value)
    centers = _apply_geometric(centers, kind, value)
    return ModeInfo(centers=centers, weights=weights, std=std * scale, radius=0.5 * gap * scale)


def assign_modes(x: Tensor, centers: Tensor, radius: float) -> Tensor:
    """Index (n,) of the nearest center for each flattened sample, or -1 when it lies farther
    than ``radius`` from every center."""
    flat = x.reshape(x.shape[0], -1).to(centers.dtype)
    if flat.shape[1] != centers.shape[1]:
        raise ValueError(
            f"samples have dimension {flat.shape[1]} but the centers have {centers.shape[1]}"
        )
    dist = torch.cdist(flat, centers)
    best, index = dist.min(dim=1)
    return torch.where(best <= radius, index, torch.full_like(index, -1))


def _uniform(n: int, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator)


def _mixture(name: str, n: int, weights: Tensor, generator: torch.Generator | None) -> Tensor:
    centers = _base_centers(name)
    std = _MIX1D_STD if name == "mixture1d" else _8G_STD
    idx = torch.multinomial(weights, n, replacement=True, generator=generator)
    noise = torch.randn(n, centers.shape[1], generator=generator)
    return centers[idx] + std * noise


def _moons(n: int, g: torch.Generator | None) -> Tensor:
    upper = torch.rand(n, generator=g) < 0.5
    theta = math.pi * _uniform(n, g)
    x = torch.where(upper, theta.cos(), 1.0 - theta.cos())
    y = torch.where(upper, theta.sin(), 0.5 - theta.sin())
    pts = torch.stack([x - 0.5, y - 0.25], dim=1)  # centre the pair at the origin
    return pts + 0.05 * torch.randn(n, 2, generator=g)


def _checkerboard(n: int, g: torch.Generator | None) -> Tensor:
    # 4x4 board of unit squares on [-2, 2]^2; keep the squares whose (column + row) is even
    col = torch.randint(0, 4, (n,), generator=g)
    row_half = torch.randint(0, 2, (n,), generator=g)
    row = 2 * row_half + (col % 2)
    u = torch.rand(n, 2, generator=g)
    return torch.stack([col + u[:, 0], row + u[:, 1]], dim=1) - 2.0


def _spirals(n: int, g: torch.Generator | None) -> Tensor:
    # radius grows linearly with angle; sqrt keeps the density along the arc roughly even
    turns = 1.5
    s = _uniform(n, g).sqrt()
    theta = s * turns * 2 * math.pi
    r = 2.0 * s
    second = torch.rand(n, generator=g) < 0.5
    theta = theta + math.pi * second.float()
    pts = torch.stack([r * theta.cos(), r * theta.sin()], dim=1)
    return pts + 0.05 * torch.randn(n, 2, generator=g)


def _rings(n: int, g: torch.Generator | None) -> Tensor:
    radii = torch.tensor([0.6, 1.2, 1.8])
    r = radii[torch.randint(0, 3, (n,), generator=g)]
    theta = 2 * math.pi * _uniform(n, g)
    pts = torch.stack([r * theta.cos(), r * theta.sin()], dim=1)
    return pts + 0.04 * torch.randn(n, 2, generator=g)


def _draw(name: str, n: int, kind: str, generator: torch.Generator | None) -> Tensor:
    if name in MIXTURES:
        weights = mode_info(name, "unbalanced" if kind == "unbalanced" else "none").weights
        return _mixture(name, n, weights, generator)
    if name == "moons":
        return _moons(n, generator)
    if name == "checkerboard":
        return _checkerboard(n, generator)
    if name == "spirals":
        return _spirals(n, generator)
    return _rings(n, generator)


def sample_toy(
    name: str, n: int, generator: torch.Generator | None = None, transform: str = "none"
) -> Tensor:
    """Draw ``n`` samples (n, d) of toy ``name`` after target ``transform``."""
    _check_name(name)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    kind, value = _check_transform(name, transform)
    # draw in fixed blocks so that the first m of n samples equal sample_toy(name, m) with the
    # same seed: a smaller training set (few demonstrations) is a prefix of a larger one
    blocks = []
    for _ in range(0, n, _BLOCK):
        blocks.append(_draw(name, _BLOCK, kind, generator))
    x = torch.cat(blocks)[:n] if blocks else torch.zeros(0, toy_dim(name))
    return _apply_geometric(x.float(), kind, value)


def toy_dataset(name: str, n: int, seed: int = 0, transform: str = "none") -> ArrayData:
    """A finite dataset of ``n`` samples of toy ``name``; the same seed gives the same data."""
    if n < 1:
        raise ValueError(f"a toy dataset needs n >= 1 samples, got {n}")
    g = torch.Generator().manual_seed(seed)
    label = name if transform in ("", "none") else f"{name}@{transform}"
    return ArrayData(sample_toy(name, n, generator=g, transform=transform), name=label)


__all__ = [
    "TOYS",
    "MIXTURES",
    "TOY_TRANSFORMS",
    "ModeInfo",
    "toy_dim",
    "parse_transform",
    "mode_info",
    "assign_modes",
    "sample_toy",
    "toy_dataset",
]
