"""A small class-conditional UNet for single- or few-channel images (8x8 digits, 28x28 MNIST).

Residual blocks with GroupNorm and SiLU receive the conditioning vector ``emb = time(t) +
class(c) [+ end_time(t_end)]`` as a per-channel bias. Each ``channel_mult`` entry is one
resolution level; levels are joined by stride-2 convolutions on the way down and nearest
up-sampling *to the skip's exact size* on the way up, so odd sizes work (28 -> 14 -> 7 -> 4
and back). Optional self-attention runs at the lowest resolution. The output convolution is
zero-initialised (the DDPM/ADM convention), so the network starts as the zero field.

Example:
    >>> import torch
    >>> net = UNet(1, channels=16, channel_mult=(1, 2), num_classes=10)
    >>> net(torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([3, 10])).shape
    torch.Size([2, 1, 8, 8])
    >>> net(torch.randn(2, 1, 28, 28), torch.rand(2)).shape
    torch.Size([2, 1, 28, 28])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowpost.nets.embeddings import (
    CondEmbedding,
    TimeEmbedding,
    end_time_embedding,
    net_conditioning,
)


def group_norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``max_groups`` that divides ``channels``."""
    groups = max(g for g in range(1, max_groups + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """``x -> skip(x) + conv(drop(act(norm(conv(act(norm(x))) + P emb))))``."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = group_norm(c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual."""

    def __init__(self, channels: int, heads: int = 4) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention: {channels} channels do not split into {heads} heads")
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (b, heads, hw, d)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """Velocity field ``v(x, t, cond[, t_end])`` on images (B, C, H, W).

    Args:
        in_channels: image channels (1 for digits and MNIST).
        channels: base width; level ``i`` has ``channels * channel_mult[i]`` channels.
        channel_mult: one entry per resolution level (``(1, 2)``: 8 -> 4; ``(1, 2, 2)``:
            28 -> 14 -> 7).
        num_res_blocks: residual blocks per level on the way down (and up).
        attention: self-attention in the middle (lowest resolution).
        num_classes: labels ``0..K-1`` plus the null label ``K``; ``cond_dim``: float
            condition vectors (B, cond_dim) instead, embedded by a small MLP.
        end_time: second time input through the zero-initialised ``end_time_embed``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 32,
        channel_mult: Sequence[int] = (1, 2),
        time_embed_dim: int = 64,
        num_classes: int | None = None,
        end_time: bool = False,
        dropout: float = 0.0,
        *,
        num_res_blocks: int = 1,
        attention: bool = False,
        heads: int = 4,
        time_scale: float = 1000.0,
        cond_dim: int | None = None,
    ) -> None:
        super().__init__()
        if not channel_mult or any(m < 1 for m in channel_mult):
            raise ValueError(
                f"channel_mult must be a non-empty list of positive ints, got {list(channel_mult)}"
            )
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
        emb_dim = 4 * channels
        self.time_embed = TimeEmbedding(emb_dim, time_embed_dim, scale=time_scale)
        self.cond_embed = CondEmbedding(emb_dim, num_classes=num_classes, cond_dim=cond_dim)
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)
        widths = [channels * m for m in channel_mult]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = channels
        for i, w in enumerate(widths):
            level = nn.ModuleList()
            for _ in range(num_res_blocks):
                level.append(ResBlock(c, w, emb_dim, dropout))
                c = w
            self.down.append(level)
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid1 = ResBlock(c, c, emb_dim, dropout)
        self.mid_attn = SelfAttention2d(c, heads) if attention else None
        self.mid2 = ResBlock(c, c, emb_dim, dropout)
        self.up = nn.ModuleList()
        self.upconv = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            level = nn.ModuleList()
            for j in range(num_res_blocks):
                # the first block of a level takes the level's skip (width w) concatenated
                level.append(ResBlock(c + w if j == 0 else c, w, emb_dim, dropout))
                c = w
            self.up.append(level)
            if i > 0:
                self.upconv.append(nn.Conv2d(c, c, 3, padding=1))
        self.out_norm = group_norm(c)
        self.out = nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)  # type: ignore[arg-type]
        self.end_time_embed = end_time_embedding(end_time, emb_dim, time_embed_dim, time_scale)

    def forward(
        self, x: Tensor, t: Tensor, cond: Tensor | None = None, t_end: Tensor | None = None
    ) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"UNet expects images (B, C, H, W), got shape {tuple(x.shape)}")
        emb = net_conditioning(self, x, t, cond, t_end)
        h = self.inp(x)
        skips = []
        for i, level in enumerate(self.down):
            for block in cast(nn.ModuleList, level):
                h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid1(h, emb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        h = self.mid2(h, emb)
        for i, level in enumerate(self.up):
            skip = skips.pop()
            if i > 0:  # back up one level, to the skip's exact size (7 -> 14 -> 28)
                h = self.upconv[i - 1](F.interpolate(h, size=skip.shape[-2:], mode="nearest"))
            for j, block in enumerate(cast(nn.ModuleList, level)):
                h = block(h if j else torch.cat([h, skip], dim=1), emb)
        return self.out(F.silu(self.out_norm(h)))


__all__ = ["UNet", "ResBlock", "SelfAttention2d", "group_norm"]
