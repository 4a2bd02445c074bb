"""Pieces of two-time generators ``G(x_a, a, b)`` that jump from time ``a`` to ``b > a``: the
time pairs they train on, the source and real samples at those times, one jump and the
sampling chain of jumps, the transport cost of a jump, a weight schedule, and whether a
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from flowpost.config import option
from flowpost.flows import random
from flowpost.flows.paths import expand_like, interpolate
from flowpost.methods.base import MethodConfig

__all__ = [
    "every_hop_times",
    "fixed_k_times",
    "any_step_times",
    "jump_samples",
    "jump",
    "jump_chain",
    "renoised_chain",
    "check_nfe",
    "chain_sources",
    "ot_loss",
    "scheduled_weight",
    "shuffled_within",
    "TransportConfig",
    "takes_end_time",
]


def fixed_k_times(n: int, k: int, device: Any = None, span: float = 1.0) -> tuple[Tensor, Tensor]:
    """``a`` uniform on ``{0, s/k, ..., s (k - 1)/k}`` and ``b = a + s/k`` (each (n,)), with
    ``s = span`` (1: the uniform grid of the paper; < 1 only for hops to the data, whose ``b``
    is then replaced by 1)."""
    return _hop_times(random.randint(0, k, n, device=device), k, span)


def _hop_times(hop: Tensor, k: int, span: float) -> tuple[Tensor, Tensor]:
    """Hop indices ``i`` -> ``a = span * i / k``, ``b = a + span / k`` (``(i * span) / k``,
    so at ``span = 1`` exactly ``i / k``)."""
    a = hop.float() * span / k
    return a, a + span / k


def every_hop_times(n: int, k: int, device: Any = None, span: float = 1.0) -> tuple[Tensor, Tensor]:
    """:func:`fixed_k_times` for a batch whose every row is repeated ``k`` times in a row
    (``n = k * rows``, ``x.repeat_interleave(k, 0)``): copy ``i`` of a row gets ``a = span *
    i / k``, ``b = a + span / k``. Why interleaved, not in blocks: any leading part of the
    batch (the R1/R2 penalty's ``gp_fraction``, ``chain_fraction``'s rows) then holds every hop.

    >>> a, b = every_hop_times(6, 3)
    >>> [round(v, 3) for v in a.tolist()], [round(v, 3) for v in (b - a).tolist()]
    ([0.0, 0.333, 0.667, 0.0, 0.333, 0.667], [0.333, 0.333, 0.333, 0.333, 0.333, 0.333])
    """
    if n % k:
        raise ValueError(f"a batch of {n} rows is not {k} copies of each row, one per hop")
    return _hop_times(torch.arange(n, device=device) % k, k, span)


def any_step_times(n: int, device: Any = None) -> tuple[Tensor, Tensor]:
    """``a ~ U(0, 1)``, ``b ~ U(a, 1)`` (each (n,))."""
    a = random.rand(n, device=device)
    return a, a + (1.0 - a) * random.rand(n, device=device)


def jump_samples(
    x: Tensor,
    a: Tensor,
    b: Tensor,
    shared_noise: bool,
    source: Callable[[Tensor], Tensor] | None = None,
    real_data: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The source ``x_a = (1 - a) z + a x`` and the real sample ``x_b = (1 - b) z' + b x'`` of
    data ``x``: fresh noise ``z'`` or, with ``shared_noise``, the source's own ``z``;
    ``x' = real_data`` when given (e.g. :func:`shuffled_within`), else ``x`` itself.
    ``source(z)``, when given, replaces the interpolant as ``x_a`` (e.g.
    :func:`chain_sources`)."""
    z = random.randn_like(x)
    z_real = z if shared_noise else random.randn_like(x)
    x_a = interpolate(z, x, a) if source is None else source(z)
    return x_a, interpolate(z_real, x if real_data is None else real_data, b)


def shuffled_within(labels: Tensor | None, n: int, device: Any = None) -> Tensor:
    """A random permutation of ``range(n)`` that maps every row to a row of the same label
    (all rows one group when ``labels`` is ``None``); drawn through
    :mod:`flowpost.flows.random`.

    >>> _ = torch.manual_seed(0)
    >>> labels = torch.tensor([0, 1, 0, 1, 1])
    >>> p = shuffled_within(labels, 5)
    >>> bool((labels[p] == labels).all()), sorted(p.tolist())
    (True, [0, 1, 2, 3, 4])
    """

    # a uniformly random order, then a stable sort by label: the rows label by label, in a
    # random order within each label; two such orders line up rows of equal label position
    # by position (integer labels sort exactly, whatever their size)
    def grouped() -> Tensor:
        order = torch.argsort(random.rand(n, device=device))
        if labels is None:
            return order
        return order[torch.argsort(labels.reshape(n)[order], stable=True)]

    first, second = grouped(), grouped()
    perm = torch.empty_like(first)
    perm[first] = second
    return perm


def jump(
    net: nn.Module,
    x_a: Tensor,
    a: Tensor,
    b: Tensor,
    cond: Tensor | None,
    *,
    end_time: bool,
    residual: bool,
) -> Tensor:
    """``G(x_a, a, b)``: ``g(x_a, a, b)`` (direct) or ``x_a + (b - a) g(x_a, a, b)`` (residual),
    one evaluation of ``net``; ``b`` is dropped for a network without an end-time input.

    >>> class Twice(nn.Module):
    ...     def forward(self, x, t, cond=None): return 2 * x
    >>> a, b = torch.zeros(1), torch.full((1,), 0.5)
    >>> jump(Twice(), torch.ones(1, 2), a, b, None, end_time=False, residual=True).tolist()
    [[2.0, 2.0]]
    """
    out: Tensor = net(x_a, a, cond, b) if end_time else net(x_a, a, cond)
    return x_a + expand_like(b - a, x_a) * out if residual else out


def check_nfe(nfe: int, k: int) -> None:
    """A fixed ``k``-step generator (``k > 0``) samples with ``nfe = k`` only; an any-step
    one (``k = 0``) with any ``nfe >= 1``; otherwise one ``ValueError`` line."""
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    if k > 0 and nfe != k:
        raise ValueError(
            f"this AF generator was trained for fixed {k}-step sampling, so it samples "
            f"with nfe={k} only (got nfe={nfe}); pass eval.nfe={k}, or train with "
            "method.nfe: 0 (any-step) to sample at any nfe"
        )


def jump_chain(
    step: Callable[[Tensor, Tensor, Tensor], Tensor], noise: Tensor, nfe: int, k: int
) -> Tensor:
    """The ``nfe``-jump chain ``x <- step(x, t_i, t_{i+1})`` on a uniform grid from ``noise``.

    A generator trained for fixed ``k``-step sampling (``k > 0``) samples with ``nfe = k``
    only; an any-step one (``k = 0``) with any ``nfe >= 1``.
    """
    check_nfe(nfe, k)
    x = noise
    grid = torch.linspace(0.0, 1.0, nfe + 1, device=noise.device)
    for i in range(nfe):
        x = step(x, grid[i].expand(x.shape[0]), grid[i + 1].expand(x.shape[0]))
    return x


def renoised_chain(
    step: Callable[[Tensor, Tensor, Tensor], Tensor],
    noise: Tensor,
    nfe: int,
    k: int,
    span: float = 1.0,
) -> Tensor:
    """The ``nfe``-hop sampler of generators trained to jump straight to the data
    (``hops: to_data``): ``x_hat = step(x, t_i, 1)``, then ``x <- (1 - t_{i+1}) z_i +
    t_{i+1} x_hat`` with fresh noise ``z_i`` (:func:`flowpost.flows.random.randn_like`), on
    the grid ``t_i = span * i / nfe`` from ``noise``; returns the last ``x_hat``. Why fresh
    noise: if ``x_hat`` is distributed as the data, the next hop's input is distributed
    exactly as the interpolant ``(1 - t) z + t x`` it was trained on, so errors do not drift
    along the chain. ``span < 1`` keeps every hop's start noisier (``t < span``).

    >>> to_zero = lambda x, a, b: torch.zeros_like(x)  # every hop predicts 0
    >>> _ = torch.manual_seed(0)
    >>> out = renoised_chain(to_zero, torch.ones(3, 2), 2, 2)
    >>> out.abs().max().item()
    0.0
    """
    check_nfe(nfe, k)
    x, n = noise, noise.shape[0]
    if not 0.0 < span <= 1.0:
        raise ValueError(f"span must be in (0, 1], got {span}")
    grid = torch.linspace(0.0, span, nfe + 1, device=noise.device)
    one = torch.ones(n, device=x.device, dtype=x.dtype)
    for i in range(nfe - 1):
        x_hat = step(x, grid[i].expand(n), one)
        x = interpolate(random.randn_like(x_hat), x_hat, grid[i + 1].expand(n))
    return step(x, grid[nfe - 1].expand(n), one)


def chain_sources(
    step: Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor],
    z: Tensor,
    x: Tensor,
    a: Tensor,
    k: int,
    rows: int,
    cond: Tensor | None = None,
) -> Tensor:
    """Hop sources for a fixed ``k``-step generator: the first ``rows`` samples start where
    the sampler's own chain from ``z`` is at time ``a`` (``z`` moved by
    ``step(x, i/k, (i+1)/k, cond)`` for every grid step before ``a``, no gradient; the chain
    never sees the data), the rest at the interpolant ``(1 - a) z + a x``.

    >>> z, x, a = torch.zeros(3, 1), torch.ones(3, 1), torch.tensor([0.0, 0.5, 0.75])
    >>> up = lambda y, s, t, c: y + 2 * (t - s)[:, None]
    >>> chain_sources(up, z, x, a, k=4, rows=2).flatten().tolist()  # chain, chain, interpolant
    [0.0, 1.0, 0.75]
    """
    x_a = interpolate(z, x, a)
    hops = (a[:rows] * k).round().long()
    chain = z[:rows].clone()
    with torch.no_grad():
        for i in range(k - 1):
            need = hops > i
            if not bool(need.any()):
                break
            s = torch.full((int(need.sum()),), i / k, device=z.device, dtype=a.dtype)
            c = None if cond is None else cond[:rows][need]
            chain[need] = step(chain[need], s, s + 1.0 / k, c)
    return torch.cat([chain, x_a[rows:]])


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


@dataclass
class TransportConfig(MethodConfig):
    """The optimal-transport term's weight over training (the ``ot_*`` keys of a method).

    >>> cfg = TransportConfig(ot_weight=0.2, ot_schedule="cosine", ot_end=0.005, ot_decay_steps=100)
    >>> [round(cfg.ot_weight_at(s), 4) for s in (0, 50, 100, 1000)]
    [0.2, 0.1025, 0.005, 0.005]
    """

    ot_weight: float = option(0.05, "optimal-transport weight at step 0", min=0.0)
    ot_schedule: str = option(
        "constant",
        "ot_weight over training: constant, cosine decay to ot_end over "
        "ot_decay_steps, or a step drop to ot_end at ot_decay_steps",
        choices=["constant", "cosine", "step"],
    )
    ot_end: float = option(0.005, "ot_weight floor (cosine) / value after the drop (step)", min=0.0)
    ot_decay_steps: int = option(100_000, "length of the cosine decay / step of the drop", min=1)

    def ot_weight_at(self, step: int) -> float:
        """``ot_weight`` at optimiser ``step`` under ``ot_schedule`` (exact on resume)."""
        return scheduled_weight(
            self.ot_weight, self.ot_end, self.ot_schedule, self.ot_decay_steps, step
        )


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
