"""A small Diffusion Transformer (DiT) with adaLN-zero blocks, for 8x8 and 28x28 images.

The image is cut into ``patch_size`` squares, linearly embedded, given 2-D sin-cos (or
learned) position embeddings and passed through transformer blocks whose LayerNorm shift,
scale and residual gates are regressed from the conditioning vector ``c = time(t) +
class(y) [+ end_time(t_end)] [+ repeat(i)]``. The gates and the final layer start at zero
(adaLN-zero, Peebles & Xie 2023), so each block starts as the identity and the network as
the zero field.

``repeats = r`` runs the block stack ``r`` times with shared weights and a learned
repeat-index embedding added to ``c`` on every pass: AF's "deep one-step models".

Example:
    >>> import torch
    >>> net = DiT(1, 8, hidden=32, depth=2, heads=2, patch_size=2, num_classes=10)
    >>> net(torch.randn(3, 1, 8, 8), torch.rand(3), torch.tensor([0, 5, 10])).shape
    torch.Size([3, 1, 8, 8])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowpost.nets.embeddings import (
    CondEmbedding,
    TimeEmbedding,
    end_time_embedding,
    net_conditioning,
)


def sincos_pos_embed_2d(dim: int, grid: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding (grid*grid, dim): half for rows, half for columns."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    pos = torch.arange(grid, dtype=torch.float64)
    ang = pos[:, None] * omega[None, :]  # (grid, quarter)
    emb1d = torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)  # (grid, dim/2)
    rows = emb1d[:, None, :].expand(grid, grid, dim // 2)
    cols = emb1d[None, :, :].expand(grid, grid, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(grid * grid, dim).float()


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class DiTBlock(nn.Module):
    """Pre-norm attention + MLP block with adaLN-zero modulation from ``c``."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.fc1 = nn.Linear(hidden, inner)
        self.fc2 = nn.Linear(inner, hidden)
        self.drop = nn.Dropout(dropout)
        self.ada = nn.Linear(hidden, 6 * hidden)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        b, n, d = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=1)
        h = _modulate(self.norm1(x), shift1, scale1)
        qkv = self.qkv(h).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + gate1[:, None, :] * self.proj(attn.transpose(1, 2).reshape(b, n, d))
        h = _modulate(self.norm2(x), shift2, scale2)
        h = self.fc2(self.drop(F.gelu(self.fc1(h), approximate="tanh")))
        return x + gate2[:, None, :] * h


class DiT(nn.Module):
    """Velocity field ``v(x, t, cond[, t_end])`` as a transformer on image patches.

    Args:
        in_channels, image_size: the image shape ``(C, S, S)``; ``S`` must be divisible by
            ``patch_size`` (28 works with 2, 4, 7; 8 with 2 or 4).
        hidden, depth, heads: transformer width, number of blocks, attention heads.
        pos_embed: ``"sincos"`` (fixed) or ``"learned"``.
        repeats: pass through the blocks ``r`` times with a learned repeat-index embedding.
        end_time: second time input through the zero-initialised ``end_time_embed``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 8,
        hidden: int = 128,
        depth: int = 4,
        heads: int = 4,
        patch_size: int = 2,
        time_embed_dim: int = 64,
        num_classes: int | None = None,
        end_time: bool = False,
        dropout: float = 0.0,
        *,
        repeats: int = 1,
        pos_embed: str = "sincos",
        mlp_ratio: float = 4.0,
        time_scale: float = 1000.0,
        image_width: int | None = None,
        cond_dim: int | None = None,
    ) -> None:
        super().__init__()
        width = image_width or image_size
        if image_size % patch_size or width % patch_size:
            divisors = [
                p for p in range(1, image_size + 1) if image_size % p == 0 and width % p == 0
            ]
            raise ValueError(
                f"DiT: image size {image_size}x{width} is not divisible by "
                f"patch_size={patch_size}; choose one of {divisors}"
            )
        if hidden % heads:
            raise ValueError(f"DiT: hidden={hidden} must be divisible by heads={heads}")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        if pos_embed not in ("sincos", "learned"):
            raise ValueError(f"pos_embed must be 'sincos' or 'learned', got {pos_embed!r}")
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.grid = (image_size // patch_size, width // patch_size)
        self.repeats = repeats
        n_tokens = self.grid[0] * self.grid[1]
        self.patch = nn.Conv2d(in_channels, hidden, patch_size, stride=patch_size)
        if pos_embed == "learned":
            self.pos = nn.Parameter(torch.randn(1, n_tokens, hidden) * 0.02)
        else:
            if self.grid[0] != self.grid[1]:
                raise ValueError(
                    "sin-cos position embedding needs a square image; use pos_embed='learned'"
                )
            self.register_buffer(
                "pos", sincos_pos_embed_2d(hidden, self.grid[0])[None], persistent=False
            )
        self.time_embed = TimeEmbedding(hidden, time_embed_dim, scale=time_scale)
        self.cond_embed = CondEmbedding(hidden, num_classes=num_classes, cond_dim=cond_dim)
        self.blocks = nn.ModuleList(
            DiTBlock(hidden, heads, mlp_ratio, dropout) for _ in range(depth)
        )
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(hidden, 2 * hidden)
        self.final = nn.Linear(hidden, patch_size * patch_size * in_channels)
        for layer in (self.final_ada, self.final):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        # small init keeps early passes close to each other; training separates them
        self.repeat_embed = nn.Embedding(repeats, hidden) if repeats > 1 else None
        if self.repeat_embed is not None:
            nn.init.normal_(self.repeat_embed.weight, std=0.02)
        self.end_time_embed = end_time_embedding(end_time, hidden, time_embed_dim, time_scale)
        # xavier on the token-wise linears, as in DiT; keeps attention logits moderate
        for block in self.blocks:
            assert isinstance(block, DiTBlock)
            for layer in (block.qkv, block.proj, block.fc1, block.fc2):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        fan = self.patch.weight[0].numel()
        nn.init.uniform_(
            self.patch.weight, -math.sqrt(6 / (fan + hidden)), math.sqrt(6 / (fan + hidden))
        )

    def forward(
        self, x: Tensor, t: Tensor, cond: Tensor | None = None, t_end: Tensor | None = None
    ) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"DiT expects images (B, C, H, W), got shape {tuple(x.shape)}")
        b, ch, h, w = x.shape
        p = self.patch_size
        if (h // p, w // p) != self.grid or h % p or w % p or ch != self.in_channels:
            raise ValueError(
                f"DiT was built for images ({self.in_channels}, {self.grid[0] * p}, "
                f"{self.grid[1] * p}), got {tuple(x.shape[1:])}"
            )
        c = net_conditioning(self, x, t, cond, t_end)
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        for i in range(self.repeats):
            ci = c if self.repeat_embed is None else c + self.repeat_embed.weight[i]
            for block in self.blocks:
                tokens = block(tokens, ci)
        shift, scale = self.final_ada(F.silu(c)).chunk(2, dim=1)
        out = self.final(_modulate(self.final_norm(tokens), shift, scale))
        gh, gw = self.grid
        out = out.reshape(b, gh, gw, p, p, ch).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, ch, h, w)


__all__ = ["DiT", "DiTBlock", "sincos_pos_embed_2d"]
