"""Plots: every function writes a PNG; the image grid tiles images exactly."""

import numpy as np
import pytest
import torch

from flowpost.eval.nfe import NFECurve
from flowpost.eval.plots import (
    image_grid,
    plot_before_after,
    plot_error_vs_nfe,
    plot_hist_1d,
    plot_image_grid,
    plot_scatter_2d,
)


def _is_png(path):
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_image_grid_layout():
    x = -torch.ones(5, 1, 2, 2)
    x[3] = 1.0
    grid = image_grid(x, nrow=3, pad=1)
    assert grid.shape == (2 * 3 + 1, 3 * 3 + 1)
    # image 3 sits in row 1, column 0 and maps to white (1.0); image 0 to black (0.0)
    assert np.all(grid[4:6, 1:3] == 1.0) and np.all(grid[1:3, 1:3] == 0.0)
    rgb = image_grid(torch.zeros(4, 3, 2, 2))
    assert rgb.shape == (7, 7, 3)
    with pytest.raises(ValueError, match="expects"):
        image_grid(torch.zeros(4, 2))


def test_all_plots_write_png(tmp_path):
    x1 = torch.randn(200, 1)
    traj = torch.cumsum(torch.randn(11, 50, 1) * 0.1, dim=0)
    plot_hist_1d(x1, tmp_path / "h.png", reference=x1 + 1)
    plot_hist_1d(x1[:50], tmp_path / "ht.png", trajectories=traj, times=torch.linspace(0, 1, 11))
    plot_scatter_2d(
        torch.randn(300, 2), tmp_path / "s.png", reference=torch.randn(300, 2), density=True
    )
    plot_image_grid(torch.rand(20, 1, 8, 8) * 2 - 1, tmp_path / "sub" / "g.png")
    plot_error_vs_nfe(
        [NFECurve([1, 2, 4], [1.0, 0.5, 0.2], "euler"), ("rk4", [4, 8], [0.1, 0.01])],
        tmp_path / "e.png",
    )
    for before in (torch.randn(100, 1), torch.randn(100, 2), torch.rand(9, 1, 8, 8)):
        plot_before_after(before, before * 0.5, tmp_path / "ba.png", reference=before)
        assert _is_png(tmp_path / "ba.png")
    for name in ("h", "ht", "s", "sub/g", "e"):
        assert _is_png(tmp_path / f"{name}.png"), name


def test_doctests():
    import doctest

    import flowpost.eval.plots as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
