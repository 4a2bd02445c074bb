"""The :class:`~flowpost.methods.base.Updater` the trainer hands to methods.

It sums a method's loss terms, refuses non-finite ones (naming the step and the term),
back-propagates, clips, sets the scheduled learning rate, steps one optimiser, clears every
gradient (so a policy step never leaks gradients into a discriminator, or the reverse) and
updates EMAs.

Example:
    >>> import torch
    >>> net = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> up = OptimizerUpdater({"policy": opt})
    >>> logs = up.step("policy", mse=net(torch.ones(4, 2)).pow(2).mean())
    >>> sorted(logs)
    ['policy/mse']
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge

from flowpost.train.ema import EMA


class DivergenceError(RuntimeError):
    """The run diverged (a non-finite loss term or weights) and stopped; the trainer's
    message names the step, what was non-finite and the last finite checkpoint, if any."""


class NonFiniteLossError(DivergenceError):
    """A loss term became NaN or Inf (raised before it is back-propagated)."""

    def __init__(self, step: int, term: str, value: float, note: str = "") -> None:
        super().__init__(f"non-finite loss at step {step}: term '{term}' = {value}{note}")
        self.step = step
        self.term = term
        self.value = value


class _Plan(NamedTuple):
    """What a step of one optimiser needs (see :class:`OptimizerUpdater`)."""

    optimizer: torch.optim.Optimizer
    params: list[Tensor]
    clip: float | None  # None: no clipping
    norm_key: str  # the logged name of the gradient norm
    lr_factor: Callable[[int], float] | None  # None: not scheduled
    ema: tuple[EMA, nn.Module] | None  # (EMA, live module) to update after the step
    # the autograd nodes that add into each parameter's .grad, held: torch frees them with
    # each step's graph and builds them anew at the next forward unless something keeps
    # them (a hand-written loop does, through its last loss); the gradients are the same
    accumulators: list[Any]


class OptimizerUpdater:
    """Takes optimiser steps on a method's behalf.

    Args:
        optimizers: optimiser per name (the names a method's ``optimizers()`` declared).
        lr_factor: multiplier of each param group's ``base_lr`` as a function of the
            *training iteration* (``global_step``), applied to the optimisers in ``scheduled``.
            Counting iterations rather than optimiser steps keeps a role that steps k times
            per iteration, or skips iterations (warm-ups), on the run's schedule.
        grad_clip: max global grad norm per name (``None`` or <= 0: no clipping).
        emas: EMA per role name, updated after the optimiser of the same name steps.
        backward: how to back-propagate (``None``: ``loss.backward()``; the trainer passes
            ``accelerator.backward`` where it scales or accumulates).
        live: the live module per role name (for EMA updates).
    """

    def __init__(
        self,
        optimizers: dict[str, torch.optim.Optimizer],
        *,
        lr_factor: Callable[[int], float] | None = None,
        scheduled: set[str] | None = None,
        grad_clip: dict[str, float | None] | None = None,
        emas: dict[str, EMA] | None = None,
        live: dict[str, nn.Module] | None = None,
        backward: Callable[[Tensor], None] | None = None,
    ) -> None:
        self.optimizers = optimizers
        self.lr_factor = lr_factor
        self.scheduled = scheduled if scheduled is not None else set(optimizers)
        for opt in optimizers.values():
            for group in opt.param_groups:
                group.setdefault("base_lr", group["lr"])
        self.grad_clip = grad_clip or {}
        self.emas = emas or {}
        self.live = live or {}
        self.backward = backward
        self.global_step = 0
        self.steps_taken: dict[str, int] = {name: 0 for name in optimizers}
        self._keys: dict[tuple[str, str], str] = {}  # (optimiser, term) -> logged name
        # what a step of each optimiser needs, looked up once (a step is the hot path)
        self._plans = {name: self._plan(name, opt) for name, opt in optimizers.items()}

    def _plan(self, name: str, opt: torch.optim.Optimizer) -> _Plan:
        clip = self.grad_clip.get(name)
        ema, live = self.emas.get(name), self.live.get(name)
        params = [p for g in opt.param_groups for p in g["params"]]
        return _Plan(
            opt,
            params,
            clip if clip is not None and clip > 0 else None,
            f"{name}/grad_norm",
            self.lr_factor if name in self.scheduled else None,
            (ema, live) if ema is not None and live is not None else None,
            [get_gradient_edge(p).node for p in params if p.requires_grad and p.is_leaf],
        )

    def step(self, name: str, **terms: Tensor) -> dict[str, float]:
        plan = self._plans.get(name)
        if plan is None:
            raise KeyError(f"no optimiser named {name!r}; known: {sorted(self.optimizers)}")
        if not terms:
            raise ValueError("update.step needs at least one loss term")
        logs: dict[str, float] = {}
        total: Tensor | None = None
        for key, term in terms.items():
            value = float(term.detach())
            if not math.isfinite(value):
                raise NonFiniteLossError(self.global_step, f"{name}/{key}", value)
            logs[self._key(name, key)] = value
            total = term if total is None else total + term  # not sum(): no `0 + loss`
        assert total is not None
        if self.backward is None:
            total.backward()
        else:
            self.backward(total)
        if plan.clip is not None:
            # the norm before clipping, logged beside the loss terms
            norm = torch.nn.utils.clip_grad_norm_(plan.params, plan.clip)
            logs[plan.norm_key] = float(norm)
        optimizer = plan.optimizer
        if plan.lr_factor is not None:
            factor = plan.lr_factor(self.global_step)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
        optimizer.step()
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        self.steps_taken[name] += 1
        if plan.ema is not None:
            plan.ema[0].update(plan.ema[1], self.steps_taken[name])
        return logs

    def _key(self, name: str, term: str) -> str:
        key = self._keys.get((name, term))
        if key is None:
            key = self._keys[(name, term)] = f"{name}/{term}"
        return key
