"""Geometry of sampling trajectories: path length and straightness.

Norms follow the library convention: the norm of a sample difference ``a`` with ``n``
entries is its root mean square ``||a|| = sqrt(sum a_i^2 / n)``, so the numbers do not grow
with the data's size.

* ``path_length = sum_k ||x_{k+1} - x_k||``, the length of the polygon through the states,
  a discretisation of ``int_0^1 ||v(x_t, t)|| dt`` (GFT's "mean path length").
* ``straightness = ||x_N - x_0|| / path_length`` in ``[0, 1]``; it is 1 exactly when the
  states lie in order on a straight segment (a zero-length path counts as straight).
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowpost.flows.solvers import Trajectory

__all__ = ["path_length", "straightness", "rms_norm"]


def rms_norm(a: Tensor) -> Tensor:
    """Per-sample RMS norm ``sqrt(mean over non-batch dims of a^2)``: ``(B, ...) -> (B,)``.

    >>> rms_norm(torch.tensor([[3.0, 4.0]])).tolist()  # sqrt((9 + 16) / 2)
    [3.535533905029297]
    """
    return a.flatten(1).pow(2).mean(1).sqrt()


def _check(traj: Trajectory) -> Tensor:
    s = traj.states
    if s.dim() < 3 or s.shape[0] < 2:
        raise ValueError(
            "trajectory states must be (steps + 1, B, ...) with at least 2 states; solve with "
            f"return_trajectory=True (got shape {tuple(s.shape)})"
        )
    return s


def path_length(traj: Trajectory) -> Tensor:
    """Per-sample length ``sum_k ||x_{k+1} - x_k||`` (RMS norm) of a trajectory: ``(B,)``.

    >>> states = torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]], [[2.0, 2.0]]])
    >>> path_length(Trajectory(states, torch.linspace(0, 1, 3))).tolist()
    [2.0]
    """
    s = _check(traj)
    d = (s[1:] - s[:-1]).flatten(2)  # (steps, B, n)
    return d.pow(2).mean(2).sqrt().sum(0)


def straightness(traj: Trajectory) -> Tensor:
    """Per-sample ``||x_N - x_0|| / path_length``: 1 for a straight path, smaller if it bends.

    >>> states = torch.tensor([[[0.0]], [[1.0]], [[0.0]]])  # out and back
    >>> straightness(Trajectory(states, torch.linspace(0, 1, 3))).tolist()
    [0.0]
    """
    s = _check(traj)
    length = path_length(traj)
    chord = rms_norm(s[-1] - s[0])
    safe = torch.where(length > 0, length, torch.ones_like(length))
    return torch.where(length > 0, chord / safe, torch.ones_like(length))
