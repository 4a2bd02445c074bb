"""Pieces of two-time generators ``G(x_a, a, b)`` that jump from time ``a`` to ``b > a``: the
time pairs they train on, the transport cost of a jump, a weight schedule, and whether a
user's network takes the end time.

Example:
    >>> a, b = fixed_k_times(6, k=4)
    >>> set((4 * a).round().int().tolist()) <= {0, 1, 2, 3}, bool(((b - a) == 0.25).all())
    (True, True)
    >>> [round(scheduled_weight(0.2, 0.005, "cosine", 100, s), 4) for s in (0, 50, 100, 1000)]
    [0.2, 0.1025, 0.005, 0.005]
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from torch import Tensor, nn

from flowpost.flows import random

__all__ = ["fixed_k_times", "any_step_times", "ot_loss", "scheduled_weight", "takes_end_time"]


def fixed_k_times(n: int, k: int, device: Any = None) -> tuple[Tensor, Tensor]:
    """``a`` uniform on ``{0, 1/k, ..., 1 - 1/k}`` and ``b = a + 1/k`` (each (n,))."""
    a = random.randint(0, k, n, device=device).float() / k
    return a, a + 1.0 / k


def any_step_times(n: int, device: Any = None) -> tuple[Tensor, Tensor]:
    """``a ~ U(0, 1)``, ``b ~ U(a, 1)`` (each (n,))."""
    a = random.rand(n, device=device)
    return a, a + (1.0 - a) * random.rand(n, device=device)


def ot_loss(out: Tensor, source: Tensor, w: Tensor) -> Tensor:
    """``mean_i ||out_i - source_i||^2 / (n w_i)``: the transport cost of the jump."""
    return ((out - source).square().flatten(1).mean(1) / w).mean()


def scheduled_weight(start: float, end: float, schedule: str, decay_steps: int, step: int) -> float:
    """A loss weight at optimiser ``step``: ``constant`` (``start``), ``cosine`` decay from
    ``start`` to ``end`` over ``decay_steps`` then flat, or a ``step`` drop to ``end`` at
    ``decay_steps``. A pure function of the step, so resuming is exact."""
    if schedule == "constant":
        return start
    progress = min(max(step, 0) / decay_steps, 1.0)
    if schedule == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return start if step < decay_steps else end
    raise ValueError(f"unknown schedule {schedule!r}; use constant, cosine or step")


def takes_end_time(module: nn.Module) -> bool:
    """Whether ``module.forward`` accepts an end time (``t_end``, a 4th argument, ``*args``).

    >>> class V(nn.Module):
    ...     def forward(self, x, t, cond=None): return x
    >>> takes_end_time(V())
    False
    """
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return True
    if "t_end" in {p.name for p in params}:
        return True
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 4
