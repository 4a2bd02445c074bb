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
from torch import Tensor, nn

Tensors = list[Tensor]


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
        # the tensors of the last live module: walking the modules at each step costs more
        # than the update itself on a small network (loading weights keeps the tensors)
        self._cached: tuple[nn.Module, Tensors, Tensors, list[tuple[Tensor, Tensor]]] | None
        self._cached = None

    def _tensors(self, live: nn.Module) -> tuple[Tensors, Tensors, list[tuple[Tensor, Tensor]]]:
        """(averaged parameters, live parameters, (averaged, live) buffers)."""
        cached = self._cached
        if cached is not None and cached[0] is live:
            # buffers are walked anew (a module may replace one), unless there are none
            buffers = cached[3] or list(zip(self.module.buffers(), live.buffers()))
            return cached[1], cached[2], buffers
        buffers = list(zip(self.module.buffers(), live.buffers()))
        pairs = getattr(self.module, "ema_pairs", None)
        if callable(pairs):  # the module's own choice, asked each time
            ema_params, live_params = pairs(live)
            return ema_params, live_params, buffers
        self._cached = (live, list(self.module.parameters()), list(live.parameters()), buffers)
        return self._cached[1:]

    @torch.no_grad()
    def update(self, live: nn.Module, num_updates: int | None = None) -> None:
        ema_params, live_params, buffers = self._tensors(live)
        decay = self.decay
        if num_updates is not None:
            decay = min(decay, (1.0 + num_updates) / (10.0 + num_updates))
        # one fused kernel for all parameters: this runs after every optimiser step (under
        # no_grad the live parameters are read as they are: no detached copies)
        if decay == 0.0:
            torch._foreach_copy_(ema_params, live_params)
        else:
            torch._foreach_lerp_(ema_params, live_params, 1.0 - decay)
        for b_ema, b_live in buffers:
            b_ema.copy_(b_live)
