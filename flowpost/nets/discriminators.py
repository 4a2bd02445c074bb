"""Discriminators ``D(x, cond=None, t=None) -> logits (B,)`` for adversarial post-training.

* :class:`MLPDiscriminator` for vectors (or flattened images),
* :class:`ConvDiscriminator` for images: strided convolutions, LeakyReLU, global sum pooling,
* :class:`FeatureDiscriminator`: a frozen feature extractor (any ``nn.Module`` mapping images
  to features) followed by a trainable :class:`MLPDiscriminator` head.

Class labels enter by *projection* (Miyato & Koyama 2018: ``logit = psi(h) + <embed(c), h>``),
by *embedding* (a label embedding concatenated to the input), or not at all. The null label
``num_classes`` is embedded like any other label; ``cond=None`` means the null label, and
labels are ignored when ``conditional="none"`` or ``num_classes=None``. Float condition
vectors (``cond_dim``, e.g. robot observations) enter the same two ways through a small SiLU
MLP in place of the label table; ``cond=None`` then means the zero vector. A time-conditional
discriminator (AF's ``D(x_b, b)``) sees sinusoidal features of ``t``; it never sees the
generator's source sample.

Any ``nn.Module`` whose ``forward(x, cond=None)`` (or ``(x, cond=None, t=None)`` when time
matters) returns one logit per sample can be used by the methods in place of these.

Example:
    >>> import torch
    >>> d = MLPDiscriminator(2, hidden=32, depth=2, num_classes=4)
    >>> d(torch.randn(5, 2), torch.tensor([0, 1, 2, 3, 4])).shape
    torch.Size([5])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from flowpost.nets.embeddings import (
    check_labels,
    check_time,
    fourier_features,
    sinusoidal_embedding,
)

CONDITIONING = ("projection", "embedding", "none")


def _maybe_sn(layer: nn.Module, use: bool) -> nn.Module:
    return _sn(layer) if use else layer


class _Conditioning(nn.Module):
    """Label/time handling shared by the discriminators: checks inputs, builds extra features."""

    def __init__(
        self,
        feat_dim: int,
        num_classes: int | None,
        conditional: str,
        time_conditional: bool,
        time_embed_dim: int,
        cond_dim: int | None = None,
    ) -> None:
        super().__init__()
        if conditional not in CONDITIONING:
            raise ValueError(f"conditional must be one of {CONDITIONING}, got {conditional!r}")
        if num_classes is not None and cond_dim is not None:
            raise ValueError("give either num_classes (labels) or cond_dim (float vectors)")
        self.num_classes = num_classes
        self.cond_dim = cond_dim
        has_cond = num_classes is not None or cond_dim is not None
        self.conditional = conditional if has_cond else "none"
        self.time_conditional = time_conditional
        self.time_embed_dim = time_embed_dim
        self.label_dim = time_embed_dim if self.conditional == "embedding" else 0
        self.extra_dim = self.label_dim + (time_embed_dim if time_conditional else 0)
        self.label: nn.Module | None = None
        if cond_dim is not None and self.conditional != "none":
            out = time_embed_dim if self.conditional == "embedding" else feat_dim
            self.label = nn.Sequential(nn.Linear(cond_dim, out), nn.SiLU(), nn.Linear(out, out))
        elif self.conditional == "embedding":
            self.label = nn.Embedding(num_classes + 1, time_embed_dim)  # type: ignore[operator]
        elif self.conditional == "projection":
            self.label = nn.Embedding(num_classes + 1, feat_dim)  # type: ignore[operator]
            # small init: the projection term starts negligible next to psi(h); spectral
            # norm is not applied to embedding tables
            nn.init.normal_(self.label.weight, std=0.02)

    def labels(self, cond: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
        if self.conditional == "none":
            return None
        if self.cond_dim is not None:
            if cond is None:
                return torch.zeros(batch, self.cond_dim, device=device)
            if cond.shape != (batch, self.cond_dim):
                raise ValueError(
                    f"condition must have shape ({batch}, {self.cond_dim}), got {tuple(cond.shape)}"
                )
            return cond.float()
        if self.num_classes is None:
            return None
        if cond is None:  # the null label, as for the velocity nets
            return torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        check_labels(cond, self.num_classes, batch)
        return cond.long()

    def extra(self, labels: Tensor | None, t: Tensor | None, batch: int) -> Tensor | None:
        """Features concatenated to the input: label embedding and/or time features."""
        parts = []
        if self.conditional == "embedding" and labels is not None:
            assert self.label is not None
            parts.append(self.label(labels))
        if self.time_conditional:
            if t is None:
                raise ValueError("this discriminator is time-conditional: pass t (B,)")
            parts.append(sinusoidal_embedding(check_time(t, batch), self.time_embed_dim))
        elif t is not None:
            raise ValueError(
                "this discriminator was built without time input; build it "
                "with time_conditional=True to pass t"
            )
        return torch.cat(parts, dim=1) if parts else None

    def project(self, logit: Tensor, feats: Tensor, labels: Tensor | None) -> Tensor:
        if self.conditional == "projection" and labels is not None:
            assert self.label is not None
            logit = logit + (self.label(labels) * feats).sum(dim=1)
        return logit


class MLPDiscriminator(nn.Module):
    """LeakyReLU MLP on the flattened input: ``(x, cond, t) -> (B,)`` logits.

    Args:
        dim: input features (images are flattened).
        hidden, depth: width and number of hidden layers.
        num_classes: labels ``0..K-1`` plus the null label ``K``.
        conditional: ``"projection"`` | ``"embedding"`` | ``"none"``.
        spectral_norm: spectral normalisation on every linear layer (with ``"none"`` or
            ``"embedding"`` conditioning the network is then 1-Lipschitz in ``x``).
        time_conditional: also takes ``t`` (B,) through sinusoidal features.
        input_encoding: per-coordinate sinusoidal features of ``x`` (AF's 1-D toy).
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 3,
        num_classes: int | None = None,
        conditional: str = "projection",
        spectral_norm: bool = False,
        time_conditional: bool = False,
        *,
        time_embed_dim: int = 64,
        input_encoding: int = 0,
        input_scale: float = 100.0,
        negative_slope: float = 0.2,
        cond_dim: int | None = None,
    ) -> None:
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"dim, hidden and depth must be >= 1, got {dim}, {hidden}, {depth}")
        self.dim = dim
        self.input_encoding = input_encoding
        self.input_scale = input_scale
        self.slope = negative_slope
        self.cond = _Conditioning(
            hidden, num_classes, conditional, time_conditional, time_embed_dim, cond_dim
        )
        width = dim * (1 + input_encoding) + self.cond.extra_dim
        layers = []
        for _ in range(depth):
            layers.append(_maybe_sn(nn.Linear(width, hidden), spectral_norm))
            width = hidden
        self.layers = nn.ModuleList(layers)
        self.head = _maybe_sn(nn.Linear(hidden, 1), spectral_norm)

    def features(
        self, x: Tensor, cond: Tensor | None = None, t: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Last hidden features (B, hidden) and the labels used (for projection)."""
        b = x.shape[0]
        h = x.reshape(b, -1)
        if h.shape[1] != self.dim:
            raise ValueError(
                f"discriminator built for {self.dim} features, got input of shape {tuple(x.shape)}"
            )
        if self.input_encoding:
            h = torch.cat([h, fourier_features(h, self.input_encoding, self.input_scale)], 1)
        labels = self.cond.labels(cond, b, x.device)
        extra = self.cond.extra(labels, t, b)
        if extra is not None:
            h = torch.cat([h, extra.to(h.dtype)], dim=1)
        for layer in self.layers:
            h = F.leaky_relu(layer(h), self.slope)
        return h, labels

    def forward(self, x: Tensor, cond: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        h, labels = self.features(x, cond, t)
        return self.cond.project(self.head(h)[:, 0], h, labels)


class ConvDiscriminator(nn.Module):
    """Strided-convolution discriminator for images (B, C, H, W) -> (B,) logits.

    A 3x3 stem, then ``depth`` stages of 4x4 stride-2 convolutions (width doubling per
    stage, capped at 4x ``channels``), LeakyReLU(0.2), global sum pooling, a linear logit and
    optional projection conditioning. Label embedding / time features enter as a per-channel
    bias after the stem.

    Example:
        >>> import torch
        >>> d = ConvDiscriminator(1, channels=8, depth=2, num_classes=10)
        >>> d(torch.randn(3, 1, 28, 28), torch.tensor([1, 2, 10])).shape
        torch.Size([3])
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 32,
        depth: int = 3,
        num_classes: int | None = None,
        conditional: str = "projection",
        spectral_norm: bool = False,
        time_conditional: bool = False,
        *,
        time_embed_dim: int = 64,
        negative_slope: float = 0.2,
        cond_dim: int | None = None,
    ) -> None:
        super().__init__()
        if channels < 1 or depth < 1:
            raise ValueError(f"channels and depth must be >= 1, got {channels}, {depth}")
        self.slope = negative_slope
        widths = [channels * min(2**i, 4) for i in range(depth + 1)]
        self.cond = _Conditioning(
            widths[-1], num_classes, conditional, time_conditional, time_embed_dim, cond_dim
        )
        self.stem = _maybe_sn(nn.Conv2d(in_channels, channels, 3, padding=1), spectral_norm)
        self.extra = (
            _maybe_sn(nn.Linear(self.cond.extra_dim, channels), spectral_norm)
            if self.cond.extra_dim
            else None
        )
        self.stages = nn.ModuleList(
            _maybe_sn(nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1), spectral_norm)
            for i in range(depth)
        )
        self.head = _maybe_sn(nn.Linear(widths[-1], 1), spectral_norm)

    def forward(self, x: Tensor, cond: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        if x.ndim != 4:
            raise ValueError(
                f"ConvDiscriminator expects images (B, C, H, W), got shape {tuple(x.shape)}"
            )
        b = x.shape[0]
        labels = self.cond.labels(cond, b, x.device)
        extra = self.cond.extra(labels, t, b)
        h = self.stem(x)
        if extra is not None and self.extra is not None:
            h = h + self.extra(extra.to(h.dtype))[:, :, None, None]
        h = F.leaky_relu(h, self.slope)
        for stage in self.stages:
            h = F.leaky_relu(stage(h), self.slope)
        feats = h.sum(dim=(2, 3))
        return self.cond.project(self.head(feats)[:, 0], feats, labels)


class FeatureDiscriminator(nn.Module):
    """A frozen feature extractor plus a trainable MLP head: ``(x, cond, t) -> (B,)``.

    The backbone (any ``nn.Module`` mapping ``x`` to features, e.g. a pretrained classifier
    trunk) is frozen: its parameters get ``requires_grad=False`` and it stays in eval mode
    even when the discriminator is put in training mode. Gradients still flow *through* it to
    ``x``, which the generator's loss needs. ``head_dim`` is the number of features it returns
    (after flattening).

    Example:
        >>> import torch
        >>> backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16))
        >>> d = FeatureDiscriminator(backbone, head_dim=16, hidden=32, num_classes=10)
        >>> d(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 10])).shape
        torch.Size([4])
    """

    def __init__(
        self,
        backbone: nn.Module,
        head_dim: int,
        hidden: int = 256,
        depth: int = 2,
        num_classes: int | None = None,
        conditional: str = "projection",
        spectral_norm: bool = False,
        time_conditional: bool = False,
        *,
        time_embed_dim: int = 64,
        cond_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.head = MLPDiscriminator(
            head_dim,
            hidden,
            depth,
            num_classes,
            conditional,
            spectral_norm,
            time_conditional,
            time_embed_dim=time_embed_dim,
            cond_dim=cond_dim,
        )

    def train(self, mode: bool = True) -> FeatureDiscriminator:
        super().train(mode)
        self.backbone.eval()  # frozen: batch-norm statistics and dropout stay fixed
        return self

    def forward(self, x: Tensor, cond: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        feats = self.backbone(x).reshape(x.shape[0], -1)
        return self.head(feats, cond, t)


__all__ = ["MLPDiscriminator", "ConvDiscriminator", "FeatureDiscriminator", "CONDITIONING"]
