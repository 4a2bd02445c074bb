"""Cross-process reductions a method can call without knowing about devices or processes.

Under data parallelism (the trainer on N processes) each process holds a slice of the global
batch. A statistic that should be a property of the *global* batch (the mean gradient norm
that AF's EMA tracks, the group statistics of FAIL-PG, the logged losses) is reduced over the
processes with these functions. With one process (or no ``torch.distributed`` group) they
return their input unchanged, bit for bit, so a method calls them unconditionally.

They carry no gradient: they are for statistics, baselines and logs.

Example:
    >>> import torch
    >>> all_mean(torch.tensor([1.0, 3.0]))  # one process: unchanged
    tensor([1., 3.])
    >>> all_gather_rows(torch.ones(2, 3)).shape
    torch.Size([2, 3])
    >>> mean_scalars({"policy/fm": 0.5})
    {'policy/fm': 0.5}
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """Number of processes in the default group (1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return 1


def rank() -> int:
    """This process's rank in the default group (0 without one)."""
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return 0


def _comm_device(x: Tensor) -> Tensor:
    # NCCL reduces CUDA tensors only; gloo reduces CPU tensors (and CUDA ones, slowly)
    if dist.get_backend() == "nccl" and x.device.type != "cuda":
        return x.to(torch.device("cuda", torch.cuda.current_device()))
    return x


def all_sum(x: Tensor) -> Tensor:
    """Element-wise sum of ``x`` over the processes (no gradient)."""
    if world_size() == 1:
        return x
    buf = _comm_device(x.detach().clone())
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(x.device)


def all_mean(x: Tensor) -> Tensor:
    """Element-wise mean of ``x`` over the processes (no gradient).

    The mean of per-process means is the global mean when every process holds the same
    number of samples (the trainer splits the global batch evenly).
    """
    n = world_size()
    if n == 1:
        return x
    return all_sum(x.float() if not x.is_floating_point() else x) / n


def all_gather_rows(x: Tensor) -> Tensor:
    """The global batch: every process's ``x`` concatenated along dim 0, in rank order
    (every process must pass the same shape; no gradient)."""
    n = world_size()
    if n == 1:
        return x
    local = _comm_device(x.detach().contiguous())
    parts = [torch.empty_like(local) for _ in range(n)]
    dist.all_gather(parts, local)
    return torch.cat(parts, 0).to(x.device)


def mean_scalars(values: Mapping[str, float]) -> dict[str, float]:
    """Average a dict of floats over the processes (same keys on every process)."""
    if world_size() == 1 or not values:
        return dict(values)
    keys = sorted(values)
    stacked = all_mean(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64))
    return {k: float(v) for k, v in zip(keys, stacked.tolist(), strict=True)}


def any_true(flag: bool) -> bool:
    """True on every process if ``flag`` is true on any one (e.g. a stop request)."""
    if world_size() == 1:
        return flag
    return bool(all_sum(torch.tensor([1.0 if flag else 0.0])).item() > 0)


__all__ = [
    "all_gather_rows",
    "all_mean",
    "all_sum",
    "any_true",
    "mean_scalars",
    "rank",
    "world_size",
]
