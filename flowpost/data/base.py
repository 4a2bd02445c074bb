"""The data containers every other folder speaks: a dataset spec and an in-memory dataset.

Example:
    >>> import torch
    >>> from flowpost.data.base import ArrayData
    >>> data = ArrayData(torch.randn(10, 2), name="toy")
    >>> data.spec.shape, data.spec.num_classes, len(data)
    ((2,), None, 10)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class DataSpec:
    """Shape of one sample (without batch) and the number of classes (None: unconditional)."""

    shape: tuple[int, ...]
    num_classes: int | None = None

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3


@dataclass
class Batch:
    """A batch of target samples ``x`` (batch, ...) with optional integer labels ``cond``."""

    x: Tensor
    cond: Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.x.to(device), None if self.cond is None else self.cond.to(device))

    def __len__(self) -> int:
        return self.x.shape[0]


class ArrayData:
    """A finite dataset held in memory: samples ``x`` (n, ...) and optional labels (n,).

    Checks at construction that the data is non-empty and finite, naming the first bad index,
    so a user learns at once which sample of which source is broken.
    """

    def __init__(
        self,
        x: Tensor,
        cond: Tensor | None = None,
        *,
        num_classes: int | None = None,
        name: str = "data",
    ) -> None:
        if x.ndim < 2:
            raise ValueError(f"{name}: expected samples of shape (n, ...), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"{name}: the dataset is empty; give it at least one sample")
        x = x.float()
        bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
        if bool(bad.any()):
            index = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"{name}: sample {index} contains NaN or Inf ({int(bad.sum())} bad samples in "
                "all); clean or drop them before training"
            )
        if cond is not None:
            if cond.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{name}: {x.shape[0]} samples but {cond.shape[0]} labels; they must match"
                )
            cond = cond.long()
            if num_classes is None:
                num_classes = int(cond.max()) + 1
        self.x = x
        self.cond = cond
        self.name = name
        self.spec = DataSpec(tuple(x.shape[1:]), num_classes if cond is not None else None)

    def __len__(self) -> int:
        return self.x.shape[0]

    def batch(self, index: Tensor) -> Batch:
        return Batch(self.x[index], None if self.cond is None else self.cond[index])

    def all(self) -> Batch:
        return Batch(self.x, self.cond)
