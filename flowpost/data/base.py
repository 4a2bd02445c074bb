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
    """Shape of one sample (without batch) and its condition: ``num_classes`` for integer
    labels, ``cond_dim`` for float condition vectors (observations, goals); both None:
    unconditional. At most one of the two is set.

    Example:
        >>> spec = DataSpec((1, 8, 8), num_classes=10)
        >>> spec.numel, spec.is_image, DataSpec((2,)).is_image
        (64, True, False)
        >>> DataSpec((8,), cond_dim=20).conditional
        True
    """

    shape: tuple[int, ...]
    num_classes: int | None = None
    cond_dim: int | None = None

    def __post_init__(self) -> None:
        if self.num_classes is not None and self.cond_dim is not None:
            raise ValueError("a DataSpec has class labels (num_classes) or vectors (cond_dim)")

    @property
    def conditional(self) -> bool:
        return self.num_classes is not None or self.cond_dim is not None

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
    """A batch of target samples ``x`` (batch, ...) with optional conditions ``cond``: integer
    labels (batch,) or float vectors (batch, cond_dim).

    Example:
        >>> import torch
        >>> batch = Batch(torch.zeros(3, 2), torch.tensor([0, 1, 1])).to("cpu")
        >>> len(batch), batch.cond.tolist()
        (3, [0, 1, 1])
    """

    x: Tensor
    cond: Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.x.to(device), None if self.cond is None else self.cond.to(device))

    def __len__(self) -> int:
        return self.x.shape[0]


def _check_labels(cond: Tensor, n: int, num_classes: int | None, name: str) -> tuple[Tensor, int]:
    """Labels as a LongTensor (n,) in ``[0, num_classes)``, and the number of classes.

    A label equal to ``num_classes`` would silently become the networks' null (unconditional)
    label, and a negative one would index from the end of an embedding table: both are refused.
    """
    if cond.ndim != 1 or cond.shape[0] != n:
        raise ValueError(
            f"{name}: labels must have shape ({n},), one integer per sample, got "
            f"{tuple(cond.shape)}"
        )
    if cond.is_floating_point():
        whole = torch.isfinite(cond) & (cond == cond.round())
        if not bool(whole.all()):
            bad = int((~whole).nonzero()[0, 0])
            raise ValueError(f"{name}: label {bad} is {float(cond[bad])}; labels must be integers")
    elif cond.is_complex() or cond.dtype == torch.bool:
        raise ValueError(f"{name}: labels have dtype {cond.dtype}; expected integers")
    cond = cond.long()
    low, high = int(cond.min()), int(cond.max())
    if num_classes is None:
        num_classes = high + 1
    if num_classes < 1:
        raise ValueError(f"{name}: num_classes must be >= 1, got {num_classes}")
    if low < 0 or high >= num_classes:
        bad = int(((cond < 0) | (cond >= num_classes)).nonzero()[0, 0])
        raise ValueError(
            f"{name}: label {bad} is {int(cond[bad])}, outside [0, {num_classes - 1}] for "
            f"num_classes={num_classes} (the value {num_classes} is reserved for the null "
            "label); relabel the data or raise num_classes"
        )
    return cond, num_classes


def _check_vectors(cond: Tensor, n: int, name: str) -> Tensor:
    """Float condition vectors (n, d): one finite row per sample."""
    if cond.shape[0] != n or cond.shape[1] < 1:
        raise ValueError(
            f"{name}: condition vectors must have shape ({n}, d), one row per sample, got "
            f"{tuple(cond.shape)}"
        )
    if cond.is_complex() or cond.dtype == torch.bool:
        raise ValueError(f"{name}: condition vectors have dtype {cond.dtype}; expected floats")
    cond = cond.float()
    bad = ~torch.isfinite(cond).all(dim=1)
    if bool(bad.any()):
        raise ValueError(
            f"{name}: the condition of sample {int(bad.nonzero()[0, 0])} contains NaN or Inf"
        )
    return cond


class ArrayData:
    """A finite dataset held in memory: samples ``x`` (n, ...) and optional conditions.

    Checks at construction that the data is non-empty and finite, naming the first bad index,
    so a user learns at once which sample of which source is broken. A 1-D ``cond`` (n,) is
    class labels: integers in ``[0, num_classes)`` (``num_classes`` defaults to the largest
    label + 1). A 2-D ``cond`` (n, d) is float condition vectors (observations, goals), which
    must be finite; the spec then has ``cond_dim = d`` (a 2-D integer ``cond`` is refused).

    Example:
        >>> import torch
        >>> data = ArrayData(torch.randn(4, 1, 8, 8), torch.tensor([0, 2, 1, 2]))
        >>> data.spec.num_classes, data.batch(torch.tensor([1, 3])).cond.tolist()
        (3, [2, 2])
        >>> ArrayData(torch.randn(4, 2), torch.randn(4, 5)).spec.cond_dim
        5
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
        cond_dim = None
        if cond is not None and cond.ndim == 2 and cond.is_floating_point():
            cond = _check_vectors(cond, x.shape[0], name)
            cond_dim, num_classes = cond.shape[1], None
        elif cond is not None:
            cond, num_classes = _check_labels(cond, x.shape[0], num_classes, name)
        self.x = x
        self.cond = cond
        self.name = name
        self.spec = DataSpec(
            tuple(x.shape[1:]), num_classes if cond is not None else None, cond_dim
        )

    def __len__(self) -> int:
        return self.x.shape[0]

    def batch(self, index: Tensor) -> Batch:
        return Batch(self.x[index], None if self.cond is None else self.cond[index])

    def all(self) -> Batch:
        return Batch(self.x, self.cond)
