"""Embeddings shared by the reference networks: time, class labels, float conditions, inputs.

Time ``t`` lives in ``[0, 1]`` (0 noise, 1 data). Sinusoidal features are computed on
``scale * t`` (default 1000) so that the smallest frequencies still separate nearby times,
exactly as for integer diffusion steps.

Class labels follow the library convention: a network built with ``num_classes=K`` embeds
``K + 1`` labels; label ``K`` is the *null* label used for classifier-free guidance.

Example:
    >>> import torch
    >>> sinusoidal_embedding(torch.rand(5), 16).shape
    torch.Size([5, 16])
    >>> TimeEmbedding(32, freq_dim=16)(torch.rand(5)).shape
    torch.Size([5, 32])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_embedding(
    t: Tensor, dim: int, scale: float = 1000.0, max_period: float = 10000.0
) -> Tensor:
    """Sinusoidal features ``[cos(w_k s t), sin(w_k s t)]`` of a time tensor ``t`` (B,).

    Frequencies ``w_k`` are geometric from 1 to ``1 / max_period``; ``scale`` maps ``[0, 1]``
    onto the range those frequencies resolve. An odd ``dim`` is zero-padded by one column.
    """
    if t.ndim != 1:
        raise ValueError(f"time must be a 1-D tensor (B,), got shape {tuple(t.shape)}")
    if dim < 2:
        raise ValueError(f"sinusoidal embedding needs dim >= 2, got {dim}")
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(exponent / half)
    args = (scale * t.float())[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


def fourier_features(x: Tensor, dim: int, scale: float = 100.0) -> Tensor:
    """Per-coordinate sinusoidal encoding of a flat input ``x`` (B, D) -> (B, D * dim).

    Used for low-dimensional inputs (AF's 1-D toy encodes every scalar input this way,
    scaled by 100), which lets a plain MLP represent sharp, narrow modes.
    """
    b, d = x.shape
    return sinusoidal_embedding(x.reshape(-1), dim, scale=scale).reshape(b, d * dim)


class TimeEmbedding(nn.Module):
    """Sinusoidal features of ``t`` followed by a two-layer SiLU MLP: (B,) -> (B, out_dim).

    ``zero_init=True`` zeroes the output layer so the embedding starts as exactly zero; the
    ``end_time`` embeddings use it so that adding a second time input leaves a pretrained
    network's function unchanged.

    Example:
        >>> import torch
        >>> emb = TimeEmbedding(8, zero_init=True)
        >>> bool(emb(torch.rand(3)).abs().max() == 0)
        True
    """

    def __init__(
        self,
        out_dim: int,
        freq_dim: int = 64,
        hidden: int | None = None,
        scale: float = 1000.0,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        hidden = hidden or out_dim
        self.freq_dim = freq_dim
        self.scale = scale
        self.fc1 = nn.Linear(freq_dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)
        if zero_init:
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def forward(self, t: Tensor) -> Tensor:
        emb = sinusoidal_embedding(t, self.freq_dim, scale=self.scale)
        return self.fc2(F.silu(self.fc1(emb)))


def check_time(t: Tensor, batch: int, name: str = "t") -> Tensor:
    """Accept a float ``t`` of shape (B,), (B, 1) or a scalar; return it as (B,)."""
    if not torch.is_tensor(t):
        raise TypeError(f"{name} must be a tensor of shape ({batch},), got {type(t).__name__}")
    if t.ndim == 0:
        return t.float().expand(batch)
    t = t.reshape(t.shape[0], -1) if t.ndim > 1 else t
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.shape != (batch,):
        raise ValueError(
            f"{name} must have shape ({batch},) to match the batch, got {tuple(t.shape)}"
        )
    return t.float()


def check_labels(cond: Tensor, num_classes: int, batch: int) -> None:
    """Raise a clear error for labels of the wrong shape, dtype or range (null: num_classes)."""
    if cond.shape != (batch,):
        raise ValueError(
            f"class labels must have shape ({batch},) to match the batch, got {tuple(cond.shape)}"
        )
    if cond.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"class labels must be an integer tensor, got dtype {cond.dtype}")
    if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) > num_classes):
        raise ValueError(
            f"class labels must lie in [0, {num_classes}] ({num_classes} is the null label), "
            f"got range [{int(cond.min())}, {int(cond.max())}]"
        )


class CondEmbedding(nn.Module):
    """Embeds a condition: class labels (with a null label) or a float vector (B, cond_dim).

    With ``num_classes=K`` it is an ``nn.Embedding(K + 1, dim)``; with ``cond_dim`` (e.g. a
    robot observation) a two-layer SiLU MLP. An unconditional embedding maps ``cond=None`` to
    ``None``; a label-conditional one given ``None`` uses the null label, so an unconditional
    call of a CFG-trained model is well defined.

    Example:
        >>> import torch
        >>> emb = CondEmbedding(16, num_classes=10)
        >>> emb(torch.tensor([0, 10]), batch=2).shape  # 10 is the null label
        torch.Size([2, 16])
    """

    def __init__(self, dim: int, num_classes: int | None = None, cond_dim: int | None = None):
        super().__init__()
        if num_classes is not None and cond_dim is not None:
            raise ValueError("give either num_classes (labels) or cond_dim (float vectors)")
        self.num_classes = num_classes
        self.cond_dim = cond_dim
        self.embed: nn.Module | None = None
        if num_classes is not None:
            if num_classes < 1:
                raise ValueError(f"num_classes must be >= 1, got {num_classes}")
            self.embed = nn.Embedding(num_classes + 1, dim)
            nn.init.normal_(self.embed.weight, std=0.02)
        elif cond_dim is not None:
            self.embed = nn.Sequential(nn.Linear(cond_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    @property
    def active(self) -> bool:
        return self.embed is not None

    def forward(
        self, cond: Tensor | None, batch: int, device: torch.device | None = None
    ) -> Tensor | None:
        """(B, dim) embedding, or ``None`` for an unconditional network given no condition."""
        if self.embed is None:
            if cond is not None:
                raise ValueError(
                    "this network was built unconditional (num_classes=None) but was given "
                    "labels; build it with num_classes=K or pass cond=None"
                )
            return None
        if self.num_classes is not None:
            if cond is None:  # unconditional call of a conditional net: the null label
                cond = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
            check_labels(cond, self.num_classes, batch)
            return self.embed(cond.long())
        if cond is None:
            raise ValueError(
                f"this network needs a float condition of shape ({batch}, "
                f"{self.cond_dim}), got None"
            )
        if cond.shape != (batch, self.cond_dim):
            raise ValueError(
                f"condition must have shape ({batch}, {self.cond_dim}), got {tuple(cond.shape)}"
            )
        return self.embed(cond.float())


def conditioning(
    time_embed: nn.Module,
    cond_embed: CondEmbedding,
    t: Tensor,
    cond: Tensor | None,
    batch: int,
    device: torch.device,
    *,
    end_time_embed: nn.Module | None = None,
    t_end: Tensor | None = None,
) -> Tensor:
    """The summed conditioning vector ``time(t) + class(c) [+ end_time(t_end)]`` (B, dim).

    Shared by every velocity network so that time, label and end-time inputs are checked
    and combined in one place.

    Example:
        >>> import torch
        >>> time, labels = TimeEmbedding(8), CondEmbedding(8, num_classes=3)
        >>> conditioning(time, labels, torch.rand(4), torch.tensor([0, 1, 2, 3]), 4,
        ...              torch.device("cpu")).shape
        torch.Size([4, 8])
    """
    emb = time_embed(check_time(t, batch))
    c = cond_embed(cond, batch, device)
    if c is not None:
        emb = emb + c
    if t_end is not None:
        if end_time_embed is None:
            raise ValueError(
                "this network has no end-time input; build it with end_time=True to pass t_end"
            )
        emb = emb + end_time_embed(check_time(t_end, batch, "t_end"))
    return emb


def end_time_embedding(
    end_time: bool, dim: int, time_embed_dim: int, scale: float
) -> TimeEmbedding | None:
    """The end-time embedding of a two-time network (zero-initialised, so a flow's weights
    load into it unchanged), or ``None`` without an end-time input.

    >>> end_time_embedding(False, 8, 4, 1000.0) is None
    True
    """
    if not end_time:
        return None
    return TimeEmbedding(dim, time_embed_dim, scale=scale, zero_init=True)


def net_conditioning(
    net: nn.Module, x: Tensor, t: Tensor, cond: Tensor | None, t_end: Tensor | None = None
) -> Tensor:
    """:func:`conditioning` of a batch ``x`` with ``net``'s own ``time_embed``,
    ``cond_embed`` and ``end_time_embed``."""
    return conditioning(
        net.time_embed,  # type: ignore[arg-type]
        net.cond_embed,  # type: ignore[arg-type]
        t,
        cond,
        x.shape[0],
        x.device,
        end_time_embed=net.end_time_embed,  # type: ignore[arg-type]
        t_end=t_end,
    )


__all__ = [
    "conditioning",
    "net_conditioning",
    "end_time_embedding",
    "sinusoidal_embedding",
    "fourier_features",
    "TimeEmbedding",
    "CondEmbedding",
    "check_labels",
    "check_time",
]
