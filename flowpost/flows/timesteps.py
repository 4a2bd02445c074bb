"""Training-time samplers ``t ~ p(t)`` on ``(0, 1)`` and sampling grids ``0 = t_0 < ... < t_N = 1``.

Convention: ``t = 0`` is noise, ``t = 1`` is data. SD3/FLUX write their time as a *noise level*
``s = 1 - t``; their ``shift`` is converted here (see :class:`ShiftedTime`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from flowpost.flows import random

__all__ = [
    "TimeSampler",
    "UniformTime",
    "LogitNormalTime",
    "ShiftedTime",
    "make_time_sampler",
    "time_grid",
    "shift_time",
]


def shift_time(t: Tensor, shift: float) -> Tensor:
    """Apply the SD3/FLUX time shift in this library's convention.

    With noise level ``s = 1 - t`` the shift is ``s' = shift s / (1 + (shift - 1) s)``; back in
    our time, ``t' = 1 - s' = t / (t + shift (1 - t))``. ``shift > 1`` moves times toward the
    noise end ``t = 0``; ``shift = 1`` is the identity. The map is increasing and fixes 0 and 1.

    >>> shift_time(torch.tensor([0.0, 0.5, 1.0]), 3.0).tolist()
    [0.0, 0.25, 1.0]
    """
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return t / (t + shift * (1 - t))


class TimeSampler(ABC):
    """Draws training times ``t`` of shape ``(n,)`` in ``[0, 1]``."""

    @abstractmethod
    def sample(
        self,
        n: int,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``n`` times, float32, on ``device``, drawn with ``generator`` (global RNG if None)."""


def _draw(
    n: int, device: torch.device | str | None, generator: torch.Generator | None, *, normal: bool
) -> Tensor:
    """``n`` standard normal (``normal``) or uniform draws: per-sample and shard-invariant
    (:mod:`flowpost.flows.random`) without a ``generator``, from ``generator`` with one."""
    if n < 0:
        raise ValueError(f"number of times must be >= 0, got {n}")
    if generator is None:
        return random.randn(n, device=device) if normal else random.rand(n, device=device)
    draw = torch.randn if normal else torch.rand
    return draw(n, device=device, generator=generator)


class UniformTime(TimeSampler):
    """``t ~ U(0, 1)``: density 1, mean 1/2, variance 1/12.

    >>> t = UniformTime().sample(5, generator=torch.Generator().manual_seed(0))
    >>> t.shape, bool(((t >= 0) & (t <= 1)).all())
    (torch.Size([5]), True)
    """

    def sample(
        self,
        n: int,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        return _draw(n, device, generator, normal=False)


class LogitNormalTime(TimeSampler):
    """``t = sigmoid(z)``, ``z ~ N(mean, std^2)`` (SD3's logit-normal sampling).

    CDF: ``P(t <= a) = Phi((logit(a) - mean) / std)``; the median is ``sigmoid(mean)``.
    ``mean < 0`` puts more weight near noise (``t = 0``).

    >>> t = LogitNormalTime(0.0, 1.0).sample(4, generator=torch.Generator().manual_seed(0))
    >>> bool(((t > 0) & (t < 1)).all())
    True
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        if std <= 0:
            raise ValueError(f"LogitNormalTime std must be > 0, got {std}")
        self.mean = float(mean)
        self.std = float(std)

    def sample(
        self,
        n: int,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        z = _draw(n, device, generator, normal=True)
        return torch.sigmoid(self.mean + self.std * z)


class ShiftedTime(TimeSampler):
    """SD3/FLUX shifted times: ``u ~ base`` (uniform by default), ``t = u / (u + shift (1 - u))``.

    In SD3's noise-level convention ``s = 1 - t`` this is ``s' = shift s / (1 + (shift - 1) s)``.
    For a uniform base the CDF is ``P(t <= a) = shift a / (1 + (shift - 1) a)``; ``shift > 1``
    spends more training on noisy times (small ``t``).

    >>> t = ShiftedTime(3.0).sample(1000, generator=torch.Generator().manual_seed(0))
    >>> bool(t.median() < 0.5)
    True
    """

    def __init__(self, shift: float = 3.0, base: TimeSampler | None = None) -> None:
        if shift <= 0:
            raise ValueError(f"ShiftedTime shift must be > 0, got {shift}")
        self.shift = float(shift)
        self.base = base if base is not None else UniformTime()

    def sample(
        self,
        n: int,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        u = self.base.sample(n, device=device, generator=generator)
        return shift_time(u, self.shift)


_SAMPLERS: dict[str, type[TimeSampler]] = {
    "uniform": UniformTime,
    "logit_normal": LogitNormalTime,
    "shifted": ShiftedTime,
}


def make_time_sampler(name: str, **kwargs: float) -> TimeSampler:
    """Build a sampler by name: "uniform", "logit_normal" (mean, std) or "shifted" (shift).

    >>> make_time_sampler("logit_normal", mean=-0.5, std=1.0).mean
    -0.5
    """
    if name not in _SAMPLERS:
        raise ValueError(f"unknown time sampler {name!r}; choose one of {sorted(_SAMPLERS)}")
    try:
        return _SAMPLERS[name](**kwargs)  # type: ignore[arg-type]
    except TypeError as e:
        raise ValueError(f"bad options {kwargs} for time sampler {name!r}: {e}") from None


def time_grid(
    nfe: int,
    kind: str = "uniform",
    shift: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Sampling grid of ``nfe + 1`` increasing times from 0 to 1 (``nfe`` intervals = steps).

    ``"uniform"``: ``t_k = k / nfe``. ``"shifted"``: the uniform grid mapped by
    :func:`shift_time` (``t_k' = t_k / (t_k + shift (1 - t_k))``), denser near noise when
    ``shift > 1``, as SD3/FLUX sample.

    >>> time_grid(4).tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    >>> time_grid(2, "shifted", shift=3.0).tolist()
    [0.0, 0.25, 1.0]
    """
    if nfe < 1:
        raise ValueError(f"time_grid needs at least one step, got nfe={nfe}")
    # Computed in float64 so that the end points are exactly 0 and 1 after the cast.
    u = torch.arange(nfe + 1, dtype=torch.float64) / nfe
    if kind == "uniform":
        grid = u
    elif kind == "shifted":
        grid = shift_time(u, shift)
    else:
        raise ValueError(f"unknown time grid kind {kind!r}; choose 'uniform' or 'shifted'")
    return grid.to(device=device, dtype=dtype)
