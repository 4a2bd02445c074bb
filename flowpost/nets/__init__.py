"""flowpost.nets: reference networks (velocity fields, discriminators, contracting residuals).

Example:
    >>> import torch
    >>> from flowpost.nets import MLPVelocity
    >>> MLPVelocity(2, hidden=16, depth=1)(torch.randn(3, 2), torch.rand(3)).shape
    torch.Size([3, 2])
"""

from flowpost.nets.config import DiscriminatorConfig, NetConfig
from flowpost.nets.contracting import ContractingResidual, ResidualField
from flowpost.nets.discriminators import (
    ConvDiscriminator,
    FeatureDiscriminator,
    MLPDiscriminator,
)
from flowpost.nets.dit import DiT
from flowpost.nets.embeddings import TimeEmbedding, sinusoidal_embedding
from flowpost.nets.factory import build_discriminator, build_velocity_net
from flowpost.nets.mlp import MLPVelocity
from flowpost.nets.unet import UNet

__all__ = [
    "NetConfig",
    "DiscriminatorConfig",
    "MLPVelocity",
    "UNet",
    "DiT",
    "MLPDiscriminator",
    "ConvDiscriminator",
    "FeatureDiscriminator",
    "ContractingResidual",
    "ResidualField",
    "TimeEmbedding",
    "sinusoidal_embedding",
    "build_velocity_net",
    "build_discriminator",
]
