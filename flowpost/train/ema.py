"""Exponential moving average of a module's parameters (and a copy of its buffers).

Example:
    >>> import torch
    >>> net = torch.nn.Linear(2, 2)
    >>> ema = EMA(net, decay=0.9)
    >>> ema.update(net)
    >>> isinstance(ema.module, torch.nn.Linear)
    True
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps ``module`` = EMA of a live network; ``decay`` 0 copies the live weights.

    Given the number of updates ``k`` so far, the decay is warmed up as
    ``min(decay, (1 + k) / (10 + k))``, so that early averages are not dominated by the
    random initial weights (with 0.999 and no warm-up, 13% of the average after 2000 steps
    would still be the initialisation).

    A live module may define ``make_ema()`` returning its own averaged module (an adapted
    model averages its adapters only, not a copy of its frozen base); that module then
    defines ``ema_pairs(live) -> (averaged tensors, live tensors)``.
    """

    def __init__(self, live: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        make = getattr(live, "make_ema", None)
        self.module = make() if callable(make) else copy.deepcopy(live).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, live: nn.Module, num_updates: int | None = None) -> None:
        pairs = getattr(self.module, "ema_pairs", None)
        if callable(pairs):
            ema_params, live_params = pairs(live)
        else:
            ema_params = list(self.module.parameters())
            live_params = list(live.parameters())
        decay = self.decay
        if num_updates is not None:
            decay = min(decay, (1.0 + num_updates) / (10.0 + num_updates))
        if decay == 0.0:
            torch._foreach_copy_(ema_params, [p.detach() for p in live_params])
        else:
            # one fused kernel for all parameters: this runs after every optimiser step
            torch._foreach_lerp_(ema_params, [p.detach() for p in live_params], 1.0 - decay)
        for b_ema, b_live in zip(self.module.buffers(), live.buffers()):
            b_ema.copy_(b_live)
