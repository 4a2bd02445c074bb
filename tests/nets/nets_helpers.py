"""Helpers shared by the network tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def perturb(net: nn.Module, std: float = 0.05) -> nn.Module:
    """Add noise to every parameter, so zero-initialised layers (adaLN-zero, zero output
    convolutions, end-time embeddings) stop hiding the paths under test."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * std)
    return net


def assert_all_params_get_grad(
    net: nn.Module, loss_fn: Callable[[], Tensor], steps: int = 1
) -> None:
    """After ``steps`` Adam steps on ``loss_fn``, every parameter gets a non-zero gradient.

    Steps first, because zero-initialised layers legitimately block gradients at step 0: each
    zero layer in a chain (a zero output layer feeding a zero adaLN gate feeding a zero
    end-time embedding...) delays the gradient of what lies behind it by one step.
    """
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        loss_fn().backward()
        opt.step()
        opt.zero_grad()
    loss_fn().backward()
    dead = [
        name
        for name, p in net.named_parameters()
        if p.requires_grad and (p.grad is None or float(p.grad.abs().sum()) == 0.0)
    ]
    assert not dead, f"parameters without gradient: {dead}"


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
