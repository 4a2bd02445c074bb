"""A SiLU MLP velocity field with time (and class) embedding, for vectors or flattened images.

Every block receives the summed conditioning vector ``emb = time(t) + class(c)
[+ end_time(t_end)] [+ repeat(i)]`` through its own linear projection, so conditioning acts
at every depth rather than only at the input.

Example:
    >>> import torch
    >>> net = MLPVelocity(2, hidden=32, depth=2, num_classes=3)
    >>> net(torch.randn(4, 2), torch.rand(4), torch.tensor([0, 1, 2, 3])).shape
    torch.Size([4, 2])
    >>> MLPVelocity(64, hidden=32)(torch.randn(4, 1, 8, 8), torch.rand(4)).shape
    torch.Size([4, 1, 8, 8])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowpost.nets.embeddings import (
    CondEmbedding,
    TimeEmbedding,
    check_time,
    end_time_embedding,
    fourier_features,
    net_conditioning,
)


class _Block(nn.Module):
    """One MLP layer: residual ``h + W2 act(W1 act(h) + P e)`` or plain ``act(W h + P e)``."""

    def __init__(self, width: int, emb_dim: int, residual: bool, dropout: float) -> None:
        super().__init__()
        self.residual = residual
        self.act = nn.SiLU()
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(width, width) if residual else None

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        if self.fc2 is None:
            return self.drop(self.act(self.fc1(h) + self.emb(emb)))
        z = self.act(self.fc1(self.act(h)) + self.emb(emb))
        return h + self.fc2(self.drop(z))


class MLPVelocity(nn.Module):
    """Velocity field ``v(x, t, cond[, t_end])`` as an MLP on the flattened input.

    Args:
        dim: number of input features (``prod(shape)``; images are flattened and restored).
        hidden: width; depth: number of blocks.
        time_embed_dim: size of the sinusoidal time features.
        num_classes: labels ``0..K-1`` plus the null label ``K``; ``cond_dim``: float
            conditions (B, cond_dim) instead (e.g. robot observations).
        end_time: add a second time input ``t_end`` through ``end_time_embed`` whose output
            layer is zero-initialised, so a pretrained ``end_time=False`` state dict loads
            with ``strict=False`` (only ``end_time*`` keys missing) and the function is
            unchanged until training moves it.
        repeats: run the block stack ``r`` times with shared weights, adding a learned
            repeat-index embedding each time (AF's deep one-step models).
        residual: residual blocks (default) or a plain SiLU MLP.
        input_encoding: if > 0, each input coordinate is also encoded with this many
            sinusoidal features scaled by ``input_scale`` (AF's 1-D toy).

    The output layer keeps PyTorch's default initialisation (not zero): a small MLP then
    starts with useful gradients in every layer and trains at once.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 4,
        time_embed_dim: int = 64,
        num_classes: int | None = None,
        end_time: bool = False,
        dropout: float = 0.0,
        *,
        repeats: int = 1,
        residual: bool = True,
        cond_dim: int | None = None,
        input_encoding: int = 0,
        input_scale: float = 100.0,
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"dim, hidden and depth must be >= 1, got {dim}, {hidden}, {depth}")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.dim = dim
        self.repeats = repeats
        self.input_encoding = input_encoding
        self.input_scale = input_scale
        in_features = dim * (1 + input_encoding)
        self.time_embed = TimeEmbedding(hidden, time_embed_dim, scale=time_scale)
        self.cond_embed = CondEmbedding(hidden, num_classes=num_classes, cond_dim=cond_dim)
        self.inp = nn.Linear(in_features, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, hidden, residual, dropout) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))
        self.repeat_embed = nn.Embedding(repeats, hidden) if repeats > 1 else None
        if self.repeat_embed is not None:
            nn.init.normal_(self.repeat_embed.weight, std=0.02)
        # created last, so that building with end_time=True draws the same initial weights
        # for every other layer as end_time=False under the same seed
        self.end_time_embed = end_time_embedding(end_time, hidden, time_embed_dim, time_scale)

    def forward(
        self, x: Tensor, t: Tensor, cond: Tensor | None = None, t_end: Tensor | None = None
    ) -> Tensor:
        b = x.shape[0]
        flat = x.reshape(b, -1)
        if flat.shape[1] != self.dim:
            raise ValueError(
                f"MLPVelocity was built for {self.dim} features, got input of shape "
                f"{tuple(x.shape)} ({flat.shape[1]} features)"
            )
        emb = net_conditioning(self, x, t, cond, t_end)
        inp = flat
        if self.input_encoding:
            inp = torch.cat(
                [flat, fourier_features(flat, self.input_encoding, self.input_scale)], dim=1
            )
        h = self.inp(inp)
        for i in range(self.repeats):
            e = emb if self.repeat_embed is None else emb + self.repeat_embed.weight[i]
            for block in self.blocks:
                h = block(h, e)
        return self.out(h).reshape(x.shape)


__all__ = ["MLPVelocity", "check_time"]  # check_time re-exported for older imports
