"""What every ODE/SDE solver of :mod:`flowpost.flows` shares: the field type, the
:class:`Trajectory` of a solve, and the checks of a time grid and a state.

Example:
    >>> import torch
    >>> grid_values(torch.tensor([1.0, 0.5, 0.0]))   # decreasing: data -> noise
    [1.0, 0.5, 0.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

__all__ = ["VelocityField", "Trajectory", "grid_values", "check_state"]

VelocityField = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


@dataclass
class Trajectory:
    """States of a solve at every grid time: ``states`` ``(steps + 1, B, ...)``, ``times``.

    >>> import torch
    >>> from flowpost.flows.solvers import odeint
    >>> from flowpost.flows.timesteps import time_grid
    >>> traj = odeint(lambda x, t, c: -x, torch.ones(2, 1), time_grid(4), return_trajectory=True)
    >>> traj.states.shape, traj.times.tolist()
    (torch.Size([5, 2, 1]), [0.0, 0.25, 0.5, 0.75, 1.0])
    """

    states: Tensor
    times: Tensor

    @property
    def final(self) -> Tensor:
        """The last state ``states[-1]``."""
        return self.states[-1]


def grid_values(grid: Tensor) -> list[float]:
    """The times of a 1-D, strictly monotone, finite ``grid`` as floats (checked).

    >>> import torch
    >>> grid_values(torch.tensor([0.0, 0.5, 1.0]))
    [0.0, 0.5, 1.0]
    """
    if not isinstance(grid, Tensor) or grid.dim() != 1 or grid.shape[0] < 2:
        raise ValueError(
            f"grid must be a 1-D tensor of at least two times, e.g. time_grid(nfe); got {grid!r}"
        )
    ts = grid.tolist()
    d = [b - a for a, b in zip(ts[:-1], ts[1:])]
    if not (all(v > 0 for v in d) or all(v < 0 for v in d)):
        raise ValueError(
            "grid must be strictly increasing (noise -> data) or strictly decreasing "
            f"(data -> noise); got {ts}"
        )
    if not all(math.isfinite(v) for v in ts):
        raise ValueError(f"grid contains non-finite times: {ts}")
    return ts


def check_state(x: Tensor) -> None:
    """Refuse anything but a floating-point tensor ``(B, ...)`` as a solver state."""
    if not isinstance(x, Tensor) or x.dim() < 1 or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor (B, ...), got {type(x).__name__}")
