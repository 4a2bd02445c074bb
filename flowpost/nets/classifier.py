"""Small classifiers: a CNN with a feature layer (for Frechet distances and confidence
scores of generated digits) and a time-conditional classifier ``C(x_t, t)`` (for AF's
classifier guidance on noised samples).

Both follow the library's conventions: images (B, C, H, W) in [-1, 1], vectors (B, D), time
``t`` a float tensor (B,) in [0, 1] (0 noise, 1 data); both return logits (B, K).

Example:
    >>> import torch
    >>> from flowpost.data.base import DataSpec
    >>> net = ImageClassifier(DataSpec((1, 8, 8), 10))
    >>> x = torch.randn(4, 1, 8, 8)
    >>> net(x).shape, net.features(x).shape
    (torch.Size([4, 10]), torch.Size([4, 128]))
    >>> clf = TimeClassifier(DataSpec((1, 8, 8), 10))
    >>> clf(x, torch.rand(4)).shape
    torch.Size([4, 10])
    >>> TimeClassifier(DataSpec((2,), 3))(torch.randn(4, 2), torch.rand(4)).shape
    torch.Size([4, 3])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowpost.data.base import DataSpec
from flowpost.nets.embeddings import sinusoidal_embedding


def _groups(c: int) -> int:
    return 8 if c % 8 == 0 else 1


class _ConvBackbone(nn.Module):
    """Conv stages (two 3x3 convs, GroupNorm, SiLU; a stride-2 conv between stages), then an
    adaptive 2x2 average pool and a linear feature layer. With ``time_dim`` each conv gets a
    per-channel bias computed from the time embedding (so the features depend on ``t``)."""

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        feature_dim: int,
        time_dim: int | None = None,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("channels must list at least one stage width")
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        widths: list[int] = []
        c_prev = in_channels
        for i, c in enumerate(channels):
            for j in range(2):
                stride = 2 if (i > 0 and j == 0) else 1
                self.convs.append(nn.Conv2d(c_prev, c, 3, stride=stride, padding=1))
                self.norms.append(nn.GroupNorm(_groups(c), c))
                widths.append(c)
                c_prev = c
        self.time_proj = (
            nn.ModuleList(nn.Linear(time_dim, c) for c in widths) if time_dim is not None else None
        )
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(c_prev * 4, feature_dim)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = x
        for k, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            h = conv(h)
            if self.time_proj is not None and temb is not None:
                h = h + self.time_proj[k](temb)[:, :, None, None]
            h = self.act(norm(h))
        return self.act(self.fc(self.pool(h).flatten(1)))


def _check_image_spec(spec: DataSpec, who: str) -> tuple[int, int]:
    if not spec.is_image:
        raise ValueError(f"{who} needs images (C, H, W), got sample shape {spec.shape}")
    if spec.num_classes is None or spec.num_classes < 2:
        raise ValueError(f"{who} needs a labelled dataset with >= 2 classes (spec {spec})")
    return spec.shape[0], spec.num_classes


class ImageClassifier(nn.Module):
    """A small CNN classifier for 8x8 or 28x28 digits with a ``features`` layer.

    ``features(x)`` is the penultimate activation (``feature_dim`` numbers per image), the
    space in which :func:`flowpost.eval.features.frechet_in_features` compares sample sets.
    """

    def __init__(
        self,
        spec: DataSpec,
        channels: Sequence[int] = (32, 64, 64),
        feature_dim: int = 128,
    ) -> None:
        super().__init__()
        c_in, k = _check_image_spec(spec, "ImageClassifier")
        self.spec = spec
        self.backbone = _ConvBackbone(c_in, channels, feature_dim)
        self.head = nn.Linear(feature_dim, k)

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class TimeClassifier(nn.Module):
    """Time-conditional classifier ``C(x_t, t) -> logits`` on noised samples
    ``x_t = (1 - t) x0 + t x1``; a conv net for images, an MLP for vectors."""

    def __init__(
        self,
        spec: DataSpec,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        depth: int = 3,
        time_embed_dim: int = 64,
    ) -> None:
        super().__init__()
        if spec.num_classes is None or spec.num_classes < 2:
            raise ValueError(
                f"TimeClassifier needs a labelled dataset with >= 2 classes (spec {spec}); "
                "classifier guidance cannot be used on unlabelled data"
            )
        self.spec = spec
        self.time_embed_dim = time_embed_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(time_embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        k = spec.num_classes
        self.backbone: _ConvBackbone | None = None
        self.mlp: nn.Sequential | None = None
        if spec.is_image:
            self.backbone = _ConvBackbone(spec.shape[0], channels, hidden, time_dim=hidden)
            self.head = nn.Linear(hidden, k)
        else:
            layers: list[nn.Module] = []
            d = spec.numel + hidden
            for _ in range(depth):
                layers += [nn.Linear(d, hidden), nn.SiLU()]
                d = hidden
            self.mlp = nn.Sequential(*layers)
            self.head = nn.Linear(hidden, k)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(
                f"t must have shape ({x.shape[0]},) (one time per sample), got {tuple(t.shape)}"
            )
        temb = self.time_mlp(sinusoidal_embedding(t, self.time_embed_dim))
        if self.backbone is not None:
            h = self.backbone(x, temb)
        else:
            assert self.mlp is not None
            h = self.mlp(torch.cat([x.flatten(1), temb], dim=1))
        return self.head(h)


__all__ = ["ImageClassifier", "TimeClassifier"]
