"""Imitation anchors: terms of a policy update that tie the deployed sampler's samples to the
expert batch *as a set*, beside a per-sample adversarial score.

A discriminator's pathwise gradient pushes each sample toward where the discriminator is high,
i.e. toward the modes' centres: nothing in it rewards spread, and a few-step sampler trained
on it alone tends to shrink each mode into a clump (issue 9). Two anchors counter that:

* :func:`sample_energy`: the energy distance ``2 E|X - Y| - E|X - X'|`` (``- E|Y - Y'|``, a
  constant, left out) between the differentiable policy samples ``X`` and the expert batch
  ``Y``. Its ``- E|X - X'|`` half repels policy samples from each other, so a clump (policy
  samples tighter than the experts around them) is pushed apart until the spreads match; it
  is a proper divergence (zero only when the distributions agree) and has no bandwidth, so it
  needs no knowledge of the data's scale. With class labels (integer ``cond``) it is taken
  within each class and averaged; other conditions are appended to the sample (a joint
  distance).
* :func:`sample_recall`: for each expert sample the distance to its nearest policy sample,
  averaged (the recall half of a Chamfer distance; implicit maximum likelihood estimation,
  Li and Malik 2018). Each demonstration pulls the policy sample nearest to it, so every
  part of the expert distribution, the edges of a mode included, gets a sample nearby; it is
  local (no pull across the gaps between modes), has no bandwidth and leaves precision to the
  discriminator.
* the flow-matching loss on the expert batch (``fm_weight``, in the policy update): SFT kept
  on as a regulariser.

Under data parallelism both distances are taken within each process's slice of the batch.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.randn(512, 2, generator=g)
    >>> good = torch.randn(512, 2, generator=g)
    >>> clump = 0.3 * torch.randn(512, 2, generator=g)
    >>> bool(sample_energy(good, None, y, None) < sample_energy(clump, None, y, None))
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["sample_energy", "sample_recall"]


def _energy(x: Tensor, y: Tensor) -> Tensor:
    """``2 mean|x_i - y_j| - mean_{i != k} |x_i - x_k|`` on flattened rows."""
    a, b = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1).detach()
    n = a.shape[0]
    cross = _dist(a, b).mean()
    if n < 2:
        return 2 * cross
    within = _dist(a, a).sum() / (n * (n - 1))
    return 2 * cross - within


def _dist(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise Euclidean distances with a gradient that stays finite at 0 (the diagonal)."""
    sq = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1)[None, :] - 2 * a @ b.T
    return (sq.clamp_min(0.0) + 1e-12).sqrt()


def _recall(x: Tensor, y: Tensor) -> Tensor:
    """``mean_j min_i |x_i - y_j|`` on flattened rows."""
    a, b = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1).detach()
    return _dist(a, b).min(dim=0).values.mean()


def _per_condition(
    fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    x_cond: Tensor | None,
    y: Tensor,
    y_cond: Tensor | None,
) -> Tensor:
    """``fn(x, y)``; within each class for integer labels (averaged); other conditions are
    appended to the samples."""
    if x_cond is None or y_cond is None:
        return fn(x, y)
    if not x_cond.is_floating_point():
        values = []
        for label in torch.unique(x_cond):
            xs, ys = x[x_cond == label], y[y_cond == label]
            if len(xs) and len(ys):
                values.append(fn(xs, ys))
        return torch.stack(values).mean() if values else x.sum() * 0.0
    xf = torch.cat([x.reshape(x.shape[0], -1), x_cond.reshape(x.shape[0], -1)], dim=1)
    yf = torch.cat([y.reshape(y.shape[0], -1), y_cond.reshape(y.shape[0], -1)], dim=1)
    return fn(xf, yf)


def sample_energy(x: Tensor, x_cond: Tensor | None, y: Tensor, y_cond: Tensor | None) -> Tensor:
    """Energy distance (without its constant expert-expert half) between policy samples ``x``
    (differentiable) and expert samples ``y``, per class for integer labels."""
    return _per_condition(_energy, x, x_cond, y, y_cond)


def sample_recall(x: Tensor, x_cond: Tensor | None, y: Tensor, y_cond: Tensor | None) -> Tensor:
    """Mean over expert samples ``y`` of the distance to the nearest policy sample ``x``
    (differentiable), per class for integer labels.

    >>> y = torch.tensor([[0.0], [1.0]])
    >>> round(float(sample_recall(torch.tensor([[0.0], [0.1]]), None, y, None)), 4)  # 1.0: far
    0.45
    """
    return _per_condition(_recall, x, x_cond, y, y_cond)
