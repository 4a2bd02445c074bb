"""Tests of flowpost/eval/grid.py: images are tiled exactly, latents as one row per sample
and one column per channel, the PNG round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from flowpost.eval.grid import sample_grid, save_png


def test_images_are_tiled_pixel_for_pixel() -> None:
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    grid = sample_grid(x, min_side=0)
    assert grid.shape == (2 * 9 + 1, 3 * 9 + 1, 3) and grid.dtype == np.uint8
    for k in range(6):
        r, c = divmod(k, 3)
        tile = grid[1 + 9 * r : 9 + 9 * r, 1 + 9 * c : 9 + 9 * c]
        expected = np.round((x[k, 0].numpy() + 1) / 2 * 255)
        assert np.abs(tile[..., 0].astype(float) - expected).max() <= 1
        assert (tile[..., 0] == tile[..., 2]).all()  # grayscale
    big = sample_grid(x)  # enlarged by a whole factor for viewing
    assert big.shape[1] >= 256 and big.shape[1] % grid.shape[1] == 0
    assert (big[:: big.shape[1] // grid.shape[1], :: big.shape[1] // grid.shape[1]] == grid).all()


def test_rgb_images_keep_their_colours() -> None:
    x = -torch.ones(1, 3, 4, 4)
    x[0, 0] = 1.0  # pure red
    tile = sample_grid(x, min_side=0)[1:5, 1:5]
    assert (tile == np.array([255, 0, 0], dtype=np.uint8)).all()


def test_latents_show_their_channels_one_row_per_sample() -> None:
    torch.manual_seed(0)
    x = torch.randn(20, 16, 4, 4) * torch.linspace(0.1, 10, 16).view(1, 16, 1, 1)
    grid = sample_grid(x, min_side=0)
    assert grid.shape == (8 * 5 + 1, 16 * 5 + 1, 3)  # at most 8 rows, 16 channel columns
    tiles = grid[1:, 1:, 0].reshape(8, 5, 16, 5)[:, :4, :, :4].astype(float)
    spread = tiles.std(axis=(0, 1, 3))
    # each channel is scaled on its own: a channel 100x larger is no brighter or flatter
    assert spread.min() > 0.5 * spread.max()
    same = sample_grid(x[:1].repeat(5, 1, 1, 1), min_side=0)  # a collapse: identical rows
    rows = same[1:, 1:].reshape(5, 5, -1)[:, :4]
    assert all((rows[k] == rows[0]).all() for k in range(5))


def test_non_finite_and_bad_shapes() -> None:
    x = torch.zeros(2, 1, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    x[1, 0, 0, 0] = float("inf")
    assert sample_grid(x, min_side=0).dtype == np.uint8
    with pytest.raises(ValueError, match=r"image-shaped samples \(n, C, H, W\)"):
        sample_grid(torch.randn(5, 2))


def test_png_round_trips(tmp_path) -> None:
    image = sample_grid(torch.rand(4, 1, 8, 8) * 2 - 1)
    path = save_png(image, tmp_path / "a" / "g.png")
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), image)
    assert [p.name for p in path.parent.iterdir()] == ["g.png"]  # no temporary left
