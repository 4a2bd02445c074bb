"""Classifier guidance for generators: a time-conditional classifier ``C(x_t, t)`` scored on
samples noised along the path (one-step generators), or on a multi-step generator's output at
its own target time (:func:`target_cross_entropy`); :class:`GuidanceConfig` holds its keys.

Example:
    >>> import torch
    >>> class Uniform(torch.nn.Module):
    ...     def forward(self, x, t): return torch.zeros(x.shape[0], 4)
    >>> round(float(noised_cross_entropy(Uniform(), torch.zeros(3, 2), torch.tensor([0, 1, 2]))), 4)
    1.3863
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from flowpost.config import option
from flowpost.flows import random
from flowpost.flows.paths import interpolate
from flowpost.methods.base import MethodConfig

__all__ = [
    "noised_cross_entropy",
    "target_cross_entropy",
    "guidance_cross_entropy",
    "GuidanceConfig",
]


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


def guidance_cross_entropy(
    classifier: Callable[[Tensor, Tensor], Tensor],
    x_b: Tensor,
    b: Tensor,
    cond: Tensor,
    *,
    at: str,
    t_min: float,
    b_min: float,
) -> Tensor:
    """Classifier guidance of a generated ``x_b`` (time ``b``): ``at="noised"`` re-noises it
    to ``t' ~ U(t_min, 1)`` (:func:`noised_cross_entropy`, one-step generators);
    ``at="target"`` scores it at ``b`` as it is, on the hops with ``b >= b_min``
    (:func:`target_cross_entropy`, multi-step generators, the authors' code)."""
    if at == "noised":
        return noised_cross_entropy(classifier, x_b, cond, t_min)
    if at == "target":
        return target_cross_entropy(classifier, x_b, b, cond, b_min)
    raise ValueError(f"unknown guidance point {at!r}; use noised or target")


@dataclass
class GuidanceConfig(MethodConfig):
    """Classifier guidance of a generator's output (the ``cg_*`` keys of a method section).

    >>> cfg = GuidanceConfig(cg_weight=0.5)
    >>> class Uniform(torch.nn.Module):
    ...     def forward(self, x, t): return torch.zeros(x.shape[0], 4)
    >>> x, b, c = torch.zeros(2, 3), torch.ones(2), torch.tensor([0, 1])
    >>> round(float(cfg.guidance(Uniform(), x, b, c, one_step=False)), 4)  # 0.5 log 4
    0.6931
    """

    cg_weight: float = option(0.0, "classifier-guidance weight (needs class labels)", min=0.0)
    cg_at: str = option(
        "auto",
        "where the classifier scores the generator's output G: noised (re-noised to "
        "t' ~ U(cg_t_min, 1)), target (G as it is, at its target time b, on the hops with "
        "b >= cg_target_min), auto = noised for nfe 1, target otherwise (the authors')",
        choices=["auto", "noised", "target"],
    )
    cg_t_min: float = option(0.9, "noised guidance: t' ~ U(cg_t_min, 1)", min=0.0, max=1.0)
    cg_target_min: float = option(
        0.51,
        "target guidance: only hops whose target time b >= this are guided (the authors: "
        "t_tgt <= 0.49 in their reversed time)",
        min=0.0,
        max=1.0,
    )

    def guidance(
        self,
        classifier: Callable[[Tensor, Tensor], Tensor],
        x_b: Tensor,
        b: Tensor,
        cond: Tensor,
        *,
        one_step: bool,
    ) -> Tensor:
        """``cg_weight`` times :func:`guidance_cross_entropy` of the generated ``x_b`` at
        ``cg_at`` (``auto``: noised for a one-step generator, at its target time otherwise)."""
        at = self.cg_at if self.cg_at != "auto" else ("noised" if one_step else "target")
        ce = guidance_cross_entropy(
            classifier, x_b, b, cond, at=at, t_min=self.cg_t_min, b_min=self.cg_target_min
        )
        return self.cg_weight * ce
