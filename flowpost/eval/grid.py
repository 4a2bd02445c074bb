"""Sample grids as images: one PNG (and one uint8 array a tracker can log) per evaluation.

:func:`sample_grid` tiles image-shaped samples ``(n, C, H, W)`` into an ``(H', W', 3)``
uint8 array; :func:`save_png` writes it with PIL, atomically.

* Images (``C`` is 1 or 3, values in ``[-1, 1]``: digits, MNIST) are tiled as images,
  grayscale or RGB, and enlarged (nearest neighbour) so that 8x8 digits stay readable.
* Anything else with an image shape is a latent (FLUX has 16 channels, SD3 16, SD 4):
  without the VAE (a GPU user's, never downloaded here) it cannot be decoded, so the grid
  shows the latent channels themselves: one row per sample, one column per channel, each
  channel scaled by its own mean and spread over the samples shown (``mean +- 3 std`` to
  black and white). It shows structure, collapse (identical rows) and divergence (saturated
  tiles), not what the image looks like.

Example:
    >>> import torch
    >>> sample_grid(torch.rand(9, 1, 8, 8) * 2 - 1, min_side=0).shape  # 3x3 tiles, 1px pad
    (28, 28, 3)
    >>> sample_grid(torch.randn(2, 16, 4, 4), min_side=0).shape  # 2 rows of 16 channels
    (11, 81, 3)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowpost.eval.plots import image_grid

MAX_LATENT_ROWS = 8


def _latent_tiles(x: Tensor, rows: int) -> tuple[Tensor, int]:
    """``(rows * C, 1, H, W)`` tiles in ``[-1, 1]`` (each channel scaled on its own), and
    the tiles per row (``C``)."""
    x = x[:rows]
    n, c, h, w = x.shape
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    spread = 3 * x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    scaled = ((x - mean) / spread).clamp(-1, 1)
    return scaled.reshape(n * c, 1, h, w), c


def sample_grid(
    samples: Tensor | np.ndarray, *, max_images: int = 64, min_side: int = 256
) -> np.ndarray:
    """The grid image ``(H', W', 3)`` uint8 of the first ``max_images`` samples (latents: at
    most 8 rows); enlarged by a whole factor until its longer side reaches ``min_side``."""
    x = torch.as_tensor(np.asarray(samples) if isinstance(samples, np.ndarray) else samples)
    x = x.detach().to("cpu", torch.float32)
    if x.ndim != 4:
        raise ValueError(f"a sample grid needs image-shaped samples (n, C, H, W), got {x.shape}")
    x = torch.nan_to_num(x[:max_images], nan=0.0, posinf=1.0, neginf=-1.0)
    nrow = None
    if x.shape[1] not in (1, 3):
        x, nrow = _latent_tiles(x, min(MAX_LATENT_ROWS, max_images))
    grid = image_grid(x, nrow=nrow)  # [0, 1], (H', W') or (H', W', 3)
    if grid.ndim == 2:
        grid = np.repeat(grid[:, :, None], 3, axis=2)
    image = np.round(grid * 255).astype(np.uint8)
    scale = max(1, -(-min_side // max(image.shape[:2]))) if min_side else 1
    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    return image


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 ``(H, W, 3)`` image as PNG (into a temporary file, then renamed)."""
    from PIL import Image

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.stem}.tmp-{os.getpid()}.png")
    try:
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


__all__ = ["sample_grid", "save_png"]
