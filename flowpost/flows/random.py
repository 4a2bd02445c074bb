"""Per-sample random draws that do not depend on how a batch is split across processes.

Under data parallelism each process holds a slice ``[offset, offset + local)`` of a global
batch of ``total`` samples. If every process drew its own ``local`` noise vectors, the result
would depend on the number of processes. Instead, inside :func:`batch_shard` every draw whose
leading size equals the local batch draws the *global* batch from the (identically seeded)
generator and keeps this process's slice: the same seed and global batch then give the same
samples, noise and times on 1 or N processes, and the generators of all processes stay in step.
Outside a shard (one process, evaluation) these are plain ``torch`` draws, bit for bit.

Methods call these instead of ``torch.randn``/``torch.rand``/``torch.randint`` for anything
drawn per sample; the trainer opens the shard.

Example:
    >>> import torch
    >>> _ = torch.manual_seed(0); full = randn(4, 2)
    >>> _ = torch.manual_seed(0)
    >>> with batch_shard(offset=2, local=2, total=4):
    ...     part = randn(2, 2)
    >>> torch.equal(part, full[2:])
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class Shard:
    """This process's slice of a global batch."""

    offset: int
    local: int
    total: int


_SHARD: ContextVar[Shard | None] = ContextVar("flowpost_batch_shard", default=None)


@contextmanager
def batch_shard(offset: int, local: int, total: int) -> Iterator[Shard]:
    """Within this block, per-sample draws of ``local`` rows are slices of global draws."""
    if not (0 <= offset and local >= 0 and offset + local <= total):
        raise ValueError(f"bad shard: offset {offset}, local {local}, total {total}")
    shard = Shard(offset, local, total)
    token = _SHARD.set(shard)
    try:
        yield shard
    finally:
        _SHARD.reset(token)


def current_shard() -> Shard | None:
    """The open shard, or ``None`` (one process)."""
    return _SHARD.get()


def _draw(draw: Callable[..., Tensor], n: int, tail: tuple[int, ...], **kwargs: Any) -> Tensor:
    """``draw(n, *tail, **kwargs)``; inside a shard of which ``n`` is the local batch, the
    global batch's draw and this process's rows of it. (Sizes go as separate integers: torch
    parses a size tuple only after trying, and failing, to read it as an integer.)"""
    shard = _SHARD.get()
    if shard is None or shard.total == shard.local or n != shard.local:
        return draw(n, *tail, **kwargs)
    return draw(shard.total, *tail, **kwargs)[shard.offset : shard.offset + shard.local]


def randn(
    n: int,
    *tail: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Standard normal ``(n, *tail)``, shard-invariant when ``n`` is the local batch."""
    return _draw(torch.randn, n, tail, device=device, dtype=dtype)


def randn_like(x: Tensor) -> Tensor:
    """Standard normal shaped like ``x`` (rows are samples)."""
    if _SHARD.get() is None:  # the same draw as randn's, by torch's quickest call
        return torch.randn_like(x, memory_format=torch.contiguous_format)
    return randn(x.shape[0], *x.shape[1:], device=x.device, dtype=x.dtype)


def rand(
    n: int,
    *tail: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Uniform on [0, 1) ``(n, *tail)``, shard-invariant when ``n`` is the local batch."""
    return _draw(torch.rand, n, tail, device=device, dtype=dtype)


def randint(
    low: int, high: int, n: int, *tail: int, device: torch.device | str | None = None
) -> Tensor:
    """Integers in ``[low, high)`` ``(n, *tail)``, shard-invariant when ``n`` is the local batch."""

    def draw(*size: int, device: torch.device | str | None) -> Tensor:
        return torch.randint(low, high, size, device=device)

    return _draw(draw, n, tail, device=device)
