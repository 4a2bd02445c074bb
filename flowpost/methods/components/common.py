"""Small helpers shared by methods: per-sample errors, user objects, deployed-sampler rollouts.

Example:
    >>> import torch
    >>> per_sample_mse(torch.zeros(2, 3), torch.ones(2, 3)).tolist()
    [1.0, 1.0]
    >>> solver_grid(4, "midpoint").tolist()
    [0.0, 0.5, 1.0]
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from flowpost.flows import random
from flowpost.flows.couplings import Coupling, IndependentCoupling
from flowpost.flows.distributed import all_gather_rows
from flowpost.flows.paths import LinearPath, ProbabilityPath
from flowpost.flows.solvers import Trajectory, sample, steps_for_nfe
from flowpost.flows.timesteps import TimeSampler, UniformTime, time_grid

Field = Callable[..., Tensor]

__all__ = [
    "Field",
    "Rollout",
    "per_sample_mse",
    "repeat_rows",
    "load_object",
    "solver_grid",
    "grid_shift",
    "solve",
    "rollout",
    "rollout_noise",
    "group_rows",
    "flow_matching_loss",
    "drop_labels",
]


def per_sample_mse(a: Tensor, b: Tensor) -> Tensor:
    """``||a - b||^2 / n`` per sample (mean over the non-batch dimensions), shape ``(B,)``."""
    return ((a - b) ** 2).flatten(1).mean(1)


def repeat_rows(x: Tensor | None, m: int) -> Tensor | None:
    """Each row repeated ``m`` times in place (``repeat_interleave``), ``None`` stays ``None``."""
    return None if x is None else x.repeat_interleave(m, dim=0)


def load_object(path: str, what: str) -> Any:
    """Import ``"package.module:attribute"``; errors say what was wrong and how to fix it."""
    if ":" not in path:
        raise ValueError(
            f"{what} {path!r} must look like 'package.module:function' (module path, a colon, "
            "then the name inside the module)"
        )
    module_name, attr = path.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"{what} {path!r}: cannot import module {module_name!r} ({err}); "
            "check the spelling and that it is on PYTHONPATH"
        ) from None
    if not hasattr(module, attr):
        raise ValueError(f"{what} {path!r}: module {module_name!r} has no attribute {attr!r}")
    return getattr(module, attr)


def grid_shift(model: Any) -> float:
    """The sampling time shift ``model`` declares as ``time_shift`` (1: the uniform grid). The
    diffusers adapters declare FLUX's resolution-dependent shift and SD3's 3.0, so that the
    sampler methods deploy and train is the one the model is used with.

    >>> grid_shift(torch.nn.Linear(1, 1))
    1.0
    """
    shift = getattr(model, "time_shift", 1.0)
    return float(shift) if isinstance(shift, (int, float)) else 1.0


def solver_grid(
    nfe: int, solver: str = "euler", device: torch.device | str | None = None, shift: float = 1.0
) -> Tensor:
    """The step times ``0 = t_0 < ... < t_K = 1`` of the deployed fixed-step sampler.

    ``K = nfe // evaluations_per_step(solver)`` (Euler 1, midpoint/Heun 2, RK4 4); with
    ``shift != 1`` the shifted grid of :func:`~flowpost.flows.timesteps.time_grid`.

    >>> solver_grid(4, "euler").tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    kind = "uniform" if shift == 1.0 else "shifted"
    return time_grid(steps_for_nfe(nfe, solver), kind, shift, device=device)


def solve(
    model: Field,
    x0: Tensor,
    nfe: int,
    solver: str,
    cond: Tensor | None = None,
    *,
    grad: bool = False,
    checkpoint: bool = False,
) -> Tensor:
    """The deployed sampler's output from ``x0`` (no classifier-free guidance), on the
    model's own grid (:func:`grid_shift`)."""
    shift = grid_shift(model)
    out = sample(
        model, x0, nfe, solver, cond=cond, grid="uniform" if shift == 1.0 else "shifted",
        shift=shift, grad=grad, checkpoint=checkpoint,
    )  # fmt: skip
    assert isinstance(out, Tensor)
    return out


@dataclass
class Rollout:
    """Policy samples ``x1`` from noise ``x0`` (no grad) with their conditions; ``states``
    holds the SDE trajectory of an Euler-Maruyama roll-out."""

    x0: Tensor
    x1: Tensor
    cond: Tensor | None
    states: Trajectory | None = None


def group_rows(rows: Tensor, group_size: int) -> Tensor:
    """The row of ``rows`` (a process's slice of the batch) that each of its groups of
    ``group_size`` rollouts is drawn for (:func:`rollout_noise`): the first
    ``len(rows) // group_size`` rows, or, when the batch is split over processes, this
    process's slice of the groups the whole batch forms (1 or N processes alike).

    >>> group_rows(torch.arange(8), 4).tolist()
    [0, 1]
    """
    n = rows.shape[0]
    groups = n // group_size
    shard = random.current_shard()
    if shard is not None and shard.local == n and shard.total != n:
        start = shard.offset // group_size
        return all_gather_rows(rows)[: shard.total // group_size][start : start + groups]
    return rows[:groups]


def rollout_noise(
    like: Tensor, cond: Tensor | None, group_size: int | None = None
) -> tuple[Tensor, Tensor | None]:
    """Starting noise ``x0`` for one roll-out per row of ``like`` and the rows' conditions.

    With ``group_size``, ``len(like) // group_size`` conditions of ``cond`` are each rolled out
    ``group_size`` times (consecutive rows form a group), as group advantages need.
    """
    n = like.shape[0]
    shard = random.current_shard()
    if group_size is not None:
        groups = n // group_size
        if groups < 1:
            raise ValueError(
                f"policy gradient needs a batch of at least group_size={group_size} samples, "
                f"got {n}; raise train.batch_size or lower method.pg_group_size"
            )
        split = shard is not None and shard.local == n and shard.total != n
        if split and n % group_size:  # a group would straddle two processes
            raise ValueError(
                f"each process's share of the batch ({n}) must be a multiple of "
                f"method.pg_group_size={group_size}; change train.batch_size"
            )
        n = groups * group_size
        if cond is not None:
            cond = group_rows(cond, group_size).repeat_interleave(group_size, dim=0)
    elif cond is not None:
        cond = cond[:n]
    x0 = random.randn(n, *like.shape[1:], device=like.device, dtype=like.dtype)
    return x0, cond


def rollout(
    policy: Field,
    like: Tensor,
    cond: Tensor | None,
    nfe: int,
    solver: str,
    *,
    group_size: int | None = None,
) -> Rollout:
    """Samples of ``policy`` at the deployed sampler, one per row of ``like`` (or in groups,
    see :func:`rollout_noise`), no grad."""
    x0, cond = rollout_noise(like, cond, group_size)
    x1 = solve(policy, x0, nfe, solver, cond)
    return Rollout(x0=x0, x1=x1.detach(), cond=cond)


def flow_matching_loss(
    model: Field,
    x1: Tensor,
    cond: Tensor | None,
    *,
    coupling: Coupling | None = None,
    time_sampler: TimeSampler | None = None,
    path: ProbabilityPath | None = None,
) -> Tensor:
    """Mean over the batch of the per-sample ``||v(x_t, t) - u_t||^2 / n`` (defaults:
    independent coupling, uniform times, the linear path).

    >>> _ = torch.manual_seed(0)   # data at 0, a zero field: the loss is E ||x0||^2 / n = 1
    >>> round(float(flow_matching_loss(lambda x, t, c: 0 * x, torch.zeros(4096, 2), None)), 1)
    1.0
    """
    time_sampler = time_sampler if time_sampler is not None else UniformTime()
    path = path if path is not None else LinearPath()
    x0 = random.randn_like(x1)
    if coupling is not None and not isinstance(coupling, IndependentCoupling):
        x0, x1, cond = coupling(x0, x1, cond)  # independent: the pairs as drawn
    t = time_sampler.sample(x1.shape[0], device=x1.device)
    point = path.sample(x0, x1, t)
    pred = model(point.x_t, point.t, cond)
    return (pred - point.velocity).pow(2).mean()


def drop_labels(cond: Tensor | None, p: float, num_classes: int | None) -> Tensor | None:
    """Replace each class label by the null label ``num_classes`` with probability ``p``.

    >>> drop_labels(torch.tensor([0, 1]), 1.0, 10).tolist()
    [10, 10]
    """
    if cond is None or p <= 0 or num_classes is None:
        return cond
    drop = random.rand(*cond.shape, device=cond.device) < p
    return torch.where(drop, torch.full_like(cond, num_classes), cond)
