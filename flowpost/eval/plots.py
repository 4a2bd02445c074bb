"""Figures saved as PNG files (matplotlib, Agg backend: no display needed).

Every function takes tensors or arrays and a path, creates the parent folder, writes the
file and closes the figure (so long runs do not accumulate open figures).

* :func:`plot_hist_1d`: histogram of 1-D samples (+ reference), optionally with trajectories
  drawn as lines from t = 0 to t = 1 beside it.
* :func:`plot_scatter_2d`: 2-D samples beside the reference (scatter, or 2-D histograms).
* :func:`plot_image_grid`: a grid of images in [-1, 1].
* :func:`plot_error_vs_nfe`: error-vs-NFE curves on log-log axes.
* :func:`plot_before_after`: before / after / reference panels for any data type.

Example:
    >>> import torch, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "s.png")
    >>> plot_scatter_2d(torch.randn(100, 2), path, reference=torch.randn(100, 2))
    >>> os.path.getsize(path) > 0
    True
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

ArrayLike = Tensor | np.ndarray


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


def _save(fig: Any, path: str | Path) -> None:
    """Save atomically: into a temporary file beside ``path``, then rename over it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.stem}.tmp-{os.getpid()}{p.suffix}")
    try:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
        os.replace(tmp, p)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()


def _hist_axes(
    ax: Any, samples: np.ndarray, reference: np.ndarray | None, title: str, **kwargs: Any
) -> None:
    """Histograms of the samples and the reference (grey, behind) on shared bins; ``kwargs``
    go to ``ax.hist`` (``orientation="horizontal"`` beside a panel of paths)."""
    data = samples.reshape(-1)
    lo, hi = float(data.min()), float(data.max())
    if reference is not None:
        ref = reference.reshape(-1)
        lo, hi = min(lo, float(ref.min())), max(hi, float(ref.max()))
    bins = np.linspace(lo - 1e-3, hi + 1e-3, 121)
    if reference is not None:
        ax.hist(ref, bins=bins, density=True, alpha=0.4, color="gray", label="reference", **kwargs)
    ax.hist(data, bins=bins, density=True, alpha=0.7, color="C0", label="samples", **kwargs)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)


def plot_hist_1d(
    samples: ArrayLike,
    path: str | Path,
    *,
    reference: ArrayLike | None = None,
    trajectories: ArrayLike | None = None,
    times: ArrayLike | None = None,
    max_lines: int = 200,
    title: str = "",
) -> None:
    """Histogram of 1-D samples (n, 1); with ``trajectories`` (steps+1, n, 1) and their
    ``times`` (steps+1,), a panel of sample paths (time on the x axis) is added at left."""
    s = _np(samples)
    ref = None if reference is None else _np(reference)
    if trajectories is None:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        _hist_axes(ax, s, ref, title)
        _save(fig, path)
        return
    traj = _np(trajectories).reshape(_np(trajectories).shape[0], -1)
    t = np.linspace(0, 1, traj.shape[0]) if times is None else _np(times).reshape(-1)
    fig, (ax0, ax1) = plt.subplots(
        1, 2, figsize=(9, 3.5), gridspec_kw={"width_ratios": [2, 1]}, sharey=True
    )
    ax0.plot(t, traj[:, :max_lines], color="C0", alpha=0.25, lw=0.7)
    ax0.set_xlabel("t (0 noise, 1 data)")
    ax0.set_title(title or "trajectories")
    _hist_axes(ax1, s, ref, "", orientation="horizontal")
    _save(fig, path)


def _scatter(
    ax: Any, x: np.ndarray, title: str, lims: tuple[float, float], density: bool, color: str
) -> None:
    if density:
        ax.hist2d(x[:, 0], x[:, 1], bins=80, range=[lims, lims], cmap="viridis")
    else:
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, color=color)
    ax.set_xlim(*lims)
    ax.set_ylim(*lims)
    ax.set_aspect("equal")
    ax.set_title(title)


def plot_scatter_2d(
    samples: ArrayLike,
    path: str | Path,
    *,
    reference: ArrayLike | None = None,
    density: bool = False,
    max_points: int = 5000,
    title: str = "",
) -> None:
    """2-D samples (n, 2) (beside the reference when given), as points or 2-D histograms."""
    s = _np(samples).reshape(-1, 2)[:max_points]
    sets = [(s, title or "samples", "C0")]
    if reference is not None:
        sets.append((_np(reference).reshape(-1, 2)[:max_points], "reference", "gray"))
    both = np.concatenate([x for x, _, _ in sets])
    lim = float(np.percentile(np.abs(both), 99.5)) * 1.15 + 1e-3
    fig, axes = plt.subplots(1, len(sets), figsize=(4 * len(sets), 4), squeeze=False)
    for ax, (x, name, color) in zip(axes[0], sets):
        _scatter(ax, x, name, (-lim, lim), density, color)
    _save(fig, path)


def image_grid(images: ArrayLike, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile images (n, C, H, W) in [-1, 1] into one (rows*H, cols*W[, 3]) array in [0, 1]."""
    x = _np(images)
    if x.ndim != 4:
        raise ValueError(f"image_grid expects (n, C, H, W), got shape {x.shape}")
    n, c, h, w = x.shape
    cols = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    x = np.clip((x + 1) / 2, 0, 1)
    grid = np.ones((c, rows * (h + pad) + pad, cols * (w + pad) + pad), dtype=np.float32)
    for k in range(n):
        r, q = divmod(k, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top : top + h, left : left + w] = x[k]
    return grid[0] if c == 1 else grid[:3].transpose(1, 2, 0)


def _show_grid(ax: Any, images: ArrayLike, title: str, max_images: int) -> None:
    g = image_grid(_np(images)[:max_images])
    ax.imshow(g, cmap="gray" if g.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")


def plot_image_grid(
    images: ArrayLike, path: str | Path, *, max_images: int = 64, title: str = ""
) -> None:
    """Save a grid of the first ``max_images`` images (n, C, H, W) in [-1, 1]."""
    fig, ax = plt.subplots(figsize=(5, 5))
    _show_grid(ax, images, title, max_images)
    _save(fig, path)


def plot_error_vs_nfe(
    curves: Sequence[Any],
    path: str | Path,
    *,
    ylabel: str = "W2 to reference",
    title: str = "",
    logy: bool = True,
) -> None:
    """Error-vs-NFE curves: each item has ``nfes``, ``errors`` and ``label`` attributes
    (:class:`flowpost.eval.nfe.NFECurve`) or is a tuple ``(label, nfes, errors)``."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for c in curves:
        label, nfes, errors = (c.label, c.nfes, c.errors) if hasattr(c, "nfes") else c
        ax.plot(nfes, errors, marker="o", label=label)
    ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("NFE (network evaluations)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_before_after(
    before: ArrayLike,
    after: ArrayLike,
    path: str | Path,
    *,
    reference: ArrayLike | None = None,
    titles: Sequence[str] = ("before", "after", "target"),
    max_images: int = 36,
    max_points: int = 3000,
) -> None:
    """Side-by-side panels of samples before and after fine-tuning (and the target):
    histograms for 1-D, scatter plots for 2-D, image grids for (n, C, H, W)."""
    sets = [_np(before), _np(after)] + ([] if reference is None else [_np(reference)])
    fig, axes = plt.subplots(1, len(sets), figsize=(4 * len(sets), 4), squeeze=False)
    kind = (
        "image"
        if sets[0].ndim == 4
        else ("1d" if sets[0].reshape(len(sets[0]), -1).shape[1] == 1 else "2d")
    )
    if kind == "2d":
        both = np.concatenate([x.reshape(-1, 2)[:max_points] for x in sets])
        lim = float(np.percentile(np.abs(both), 99.5)) * 1.15 + 1e-3
    for ax, x, name in zip(axes[0], sets, titles):
        if kind == "image":
            _show_grid(ax, x, name, max_images)
        elif kind == "1d":
            _hist_axes(ax, x, None, name)
        else:
            _scatter(ax, x.reshape(-1, 2)[:max_points], name, (-lim, lim), False, "C0")
    _save(fig, path)


__all__ = [
    "plot_hist_1d",
    "plot_scatter_2d",
    "image_grid",
    "plot_image_grid",
    "plot_error_vs_nfe",
    "plot_before_after",
]
