"""Classifier guidance for generators: a time-conditional classifier ``C(x_t, t)`` scored on
samples noised along the path (one-step generators), or on a multi-step generator's output at
its own target time (:func:`target_cross_entropy`).

Example:
    >>> import torch
    >>> class Uniform(torch.nn.Module):
    ...     def forward(self, x, t): return torch.zeros(x.shape[0], 4)
    >>> round(float(noised_cross_entropy(Uniform(), torch.zeros(3, 2), torch.tensor([0, 1, 2]))), 4)
    1.3863
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from flowpost.flows import random
from flowpost.flows.paths import interpolate

__all__ = ["noised_cross_entropy", "target_cross_entropy"]


def noised_cross_entropy(
    classifier: Callable[[Tensor, Tensor], Tensor], x: Tensor, cond: Tensor, t_min: float = 0.0
) -> Tensor:
    """``CE(C(x_t, t), c)`` at ``x_t = (1 - t) z + t x`` with fresh noise ``z`` and
    ``t ~ U(t_min, 1)``: the classifier's own training loss on data (``t_min = 0``), and the
    guidance loss of generated samples (``t_min`` near 1, the data end)."""
    t = t_min + (1 - t_min) * random.rand(x.shape[0], device=x.device)
    x_t = interpolate(random.randn_like(x), x, t)
    return F.cross_entropy(classifier(x_t, t), cond)


def target_cross_entropy(
    classifier: Callable[[Tensor, Tensor], Tensor],
    x_b: Tensor,
    b: Tensor,
    cond: Tensor,
    b_min: float = 0.0,
) -> Tensor:
    """``mean_i [b_i >= b_min] CE(C(x_b,i, b_i), c_i)``: a multi-step generator's output
    ``x_b`` is already a sample of time ``b``, so it is scored there as it is, without
    re-noising; hops that end before ``b_min`` count 0 in the batch mean (the authors' code
    for multi-step models: ``cg_flow: False``, guidance on ``t_tgt <= 0.49`` of their reversed
    time, i.e. ``b >= 0.51``)."""
    ce = F.cross_entropy(classifier(x_b, b), cond, reduction="none")
    return torch.where(b >= b_min, ce, torch.zeros_like(ce)).mean()
