"""Configs of the reference networks (the ``model`` section of a recipe, and discriminators).

Example:
    >>> NetConfig(arch="mlp", hidden=64).hidden
    64
"""

from __future__ import annotations

from dataclasses import dataclass

from flowpost.config import option


@dataclass
class NetConfig:
    """The velocity (or generator) network: an MLP for vectors, a UNet or DiT for images."""

    arch: str = option("mlp", "network family", choices=["mlp", "unet", "dit"])
    hidden: int = option(256, "MLP width / DiT width", min=1)
    depth: int = option(4, "MLP hidden layers / DiT blocks", min=1)
    time_embed_dim: int = option(64, "size of the sinusoidal time embedding", min=2)
    # 16 keeps an 8x8 UNet step (batch 128, forward + backward) near 50 ms on one CPU thread
    channels: int = option(16, "UNet base channels", min=1)
    channel_mult: list[int] = option(
        default_factory=lambda: [1, 2], help="UNet channel multiplier per resolution level"
    )
    patch_size: int = option(2, "DiT patch size", min=1)
    heads: int = option(4, "DiT attention heads", min=1)
    dropout: float = option(0.0, "dropout inside the network", min=0.0, max=1.0)
    repeats: int = option(
        1, "repeat the blocks r times with a learned repeat-index embedding", min=1
    )
    attention: bool = option(False, "UNet self-attention at the lowest resolution")
    pos_embed: str = option("sincos", "DiT position embedding", choices=["sincos", "learned"])
    input_encoding: int = option(
        0, "MLP: sinusoidal features per input coordinate (0: raw input only)", min=0
    )


@dataclass
class DiscriminatorConfig:
    """A discriminator mapping ``(x, cond[, t])`` to one logit per sample."""

    arch: str = option("mlp", "discriminator family", choices=["mlp", "conv"])
    hidden: int = option(256, "MLP width (mlp arch)", min=1)
    channels: int = option(
        32, "conv base channels (conv arch; doubles per stage, capped at 4x)", min=1
    )
    depth: int = option(3, "hidden layers (MLP) or down-sampling stages (conv)", min=1)
    spectral_norm: bool = option(False, "spectral normalisation on every linear/conv layer")
    conditional: str = option(
        "projection", "how class labels enter", choices=["none", "projection", "embedding"]
    )
    time_embed_dim: int = option(64, "time embedding size when the discriminator sees t", min=2)
    input_encoding: int = option(
        0, "MLP: sinusoidal features per input coordinate (0: raw input only)", min=0
    )
