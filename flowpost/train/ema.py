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
    """Keeps ``module`` = EMA of a live network; ``decay`` 0 copies the live weights."""

    def __init__(self, live: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(live).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, live: nn.Module) -> None:
        ema_params: list[torch.Tensor] = list(self.module.parameters())
        live_params: list[torch.Tensor] = list(live.parameters())
        if self.decay == 0.0:
            torch._foreach_copy_(ema_params, [p.detach() for p in live_params])
        else:
            # one fused kernel for all parameters: this runs after every optimiser step
            torch._foreach_lerp_(ema_params, [p.detach() for p in live_params], 1.0 - self.decay)
        for b_ema, b_live in zip(self.module.buffers(), live.buffers()):
            b_ema.copy_(b_live)
