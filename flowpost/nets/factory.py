"""Build the reference networks from a recipe's config and the data spec.

``build_velocity_net`` returns a module called as ``net(x, t, cond=None, t_end=None)`` that
returns a tensor shaped like ``x``; ``build_discriminator`` one called as
``disc(x, cond=None, t=None)`` that returns logits (B,); ``build_contracting_residual`` the
residual field of ResFT-FM (see :mod:`flowpost.nets.contracting`). The MLP works for any data
(images are flattened); the UNet and DiT need images ``(C, H, W)``. Conditions follow the
data spec: class labels (``spec.num_classes``) or float vectors (``spec.cond_dim``).

Example:
    >>> import torch
    >>> from flowpost.data.base import DataSpec
    >>> from flowpost.nets.config import NetConfig
    >>> net = build_velocity_net(NetConfig(arch="unet"), DataSpec((1, 8, 8), num_classes=10))
    >>> net(torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([1, 10])).shape
    torch.Size([2, 1, 8, 8])
    >>> policy = build_velocity_net(NetConfig(hidden=32, depth=2), DataSpec((8,), cond_dim=20))
    >>> policy(torch.randn(3, 8), torch.rand(3), torch.randn(3, 20)).shape
    torch.Size([3, 8])
"""

from __future__ import annotations

from torch import nn

from flowpost.data.base import DataSpec
from flowpost.nets.config import DiscriminatorConfig, NetConfig
from flowpost.nets.contracting import ContractingResidual
from flowpost.nets.discriminators import ConvDiscriminator, MLPDiscriminator
from flowpost.nets.dit import DiT
from flowpost.nets.mlp import MLPVelocity
from flowpost.nets.unet import UNet


def _need_image(arch: str, spec: DataSpec, what: str) -> None:
    if not spec.is_image:
        raise ValueError(
            f"{what} arch '{arch}' needs image data (C, H, W), but the data has shape "
            f"{spec.shape}; use arch: mlp for vector data"
        )


def build_velocity_net(cfg: NetConfig, spec: DataSpec, *, end_time: bool = False) -> nn.Module:
    """The velocity (or generator) network for data ``spec`` described by ``cfg``.

    ``end_time=True`` adds the second time input ``t_end`` (AF's target time) through a
    zero-initialised ``end_time_embed``: a state dict of the same config built without it
    loads with ``strict=False`` (only ``end_time*`` keys missing) and gives the same outputs.
    """
    num_classes = spec.num_classes
    if cfg.arch == "mlp":
        return MLPVelocity(
            spec.numel,
            cfg.hidden,
            cfg.depth,
            cfg.time_embed_dim,
            num_classes,
            end_time,
            cfg.dropout,
            repeats=cfg.repeats,
            input_encoding=cfg.input_encoding,
            cond_dim=spec.cond_dim,
        )
    if cfg.arch == "unet":
        _need_image("unet", spec, "model")
        if cfg.repeats != 1:
            raise ValueError(
                f"model.repeats={cfg.repeats} is supported by the mlp and dit "
                "archs only; set model.repeats: 1 or use arch: dit"
            )
        return UNet(
            spec.shape[0],
            cfg.channels,
            cfg.channel_mult,
            cfg.time_embed_dim,
            num_classes,
            end_time,
            cfg.dropout,
            attention=cfg.attention,
            heads=cfg.heads,
            cond_dim=spec.cond_dim,
        )
    if cfg.arch == "dit":
        _need_image("dit", spec, "model")
        c, h, w = spec.shape
        return DiT(
            c,
            h,
            cfg.hidden,
            cfg.depth,
            cfg.heads,
            cfg.patch_size,
            cfg.time_embed_dim,
            num_classes,
            end_time,
            cfg.dropout,
            repeats=cfg.repeats,
            pos_embed=cfg.pos_embed,
            image_width=w,
            cond_dim=spec.cond_dim,
        )
    raise ValueError(f"unknown model arch {cfg.arch!r}; choose mlp, unet or dit")


def build_discriminator(
    cfg: DiscriminatorConfig, spec: DataSpec, *, time_conditional: bool = False
) -> nn.Module:
    """A discriminator ``(x, cond=None, t=None) -> logits (B,)`` for data ``spec``.

    Labels are used when the data has classes and ``cfg.conditional != "none"``;
    ``time_conditional=True`` makes it take ``t`` (AF's ``D(x_b, b)``).
    """
    if cfg.arch == "mlp":
        return MLPDiscriminator(
            spec.numel,
            cfg.hidden,
            cfg.depth,
            spec.num_classes,
            cfg.conditional,
            cfg.spectral_norm,
            time_conditional,
            time_embed_dim=cfg.time_embed_dim,
            input_encoding=cfg.input_encoding,
            cond_dim=spec.cond_dim,
        )
    if cfg.arch == "conv":
        _need_image("conv", spec, "discriminator")
        return ConvDiscriminator(
            spec.shape[0],
            cfg.channels,
            cfg.depth,
            spec.num_classes,
            cfg.conditional,
            cfg.spectral_norm,
            time_conditional,
            time_embed_dim=cfg.time_embed_dim,
            cond_dim=spec.cond_dim,
        )
    raise ValueError(f"unknown discriminator arch {cfg.arch!r}; choose mlp or conv")


def build_contracting_residual(
    spec: DataSpec,
    *,
    mu: float,
    hidden: int = 128,
    rank: int | None = None,
    skew: bool = False,
    potential: int = 0,
    anchor: str = "none",
    anchor_net: nn.Module | None = None,
    max_gain: float | None = None,
    offset: str = "centre",
    path_net: nn.Module | None = None,
) -> ContractingResidual:
    """The residual ``r = -(L L^T + mu I (+ S))(x - m(t, c)) (- grad phi)`` of ResFT-FM for data
    ``spec``: its symmetric Jacobian part is ``<= -mu`` for every input (``mu`` must be > 0)."""
    if not mu > 0:
        raise ValueError(f"mu must be > 0 (the guaranteed contraction rate), got {mu}")
    return ContractingResidual(
        spec.numel,
        hidden=hidden,
        mu=mu,
        num_classes=spec.num_classes,
        cond_dim=spec.cond_dim,
        rank=rank,
        skew=skew,
        potential=potential,
        anchor=anchor,
        anchor_net=anchor_net,
        max_gain=max_gain,
        offset=offset,
        path_net=path_net,
    )


__all__ = ["build_velocity_net", "build_discriminator", "build_contracting_residual"]
