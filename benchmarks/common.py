"""Pieces shared by the benchmark scripts (run as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PlainMLP(nn.Module):
    """A velocity MLP on ``(x, t)`` with 3 hidden SiLU layers, the same for every library
    compared; ``calls`` counts network evaluations."""

    def __init__(self, dim: int = 2, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim + 1, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, dim),
        )  # fmt: skip
        self.calls = 0

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        self.calls += 1
        return self.net(torch.cat([x, t.unsqueeze(1)], 1))
