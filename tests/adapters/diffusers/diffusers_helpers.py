"""Tiny random FLUX and SD3 transformers (built from configs, nothing downloaded) and the
helpers the adapter tests share."""

from __future__ import annotations

import torch

from flowpost.adapters.diffusers.config import DiffusersConfig
from flowpost.adapters.diffusers.model import pack_condition

FLUX_TINY = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "guidance_embeds": True,
    "axes_dims_rope": [4, 6, 6],
}
SD3_TINY = {
    "sample_size": 8,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 4,
    "joint_attention_dim": 32,
    "caption_projection_dim": 32,
    "pooled_projection_dim": 32,
    "pos_embed_max_size": 8,
}
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_out"]


def tiny_config(family: str, **kw: object) -> DiffusersConfig:
    base = {
        "model_class": "FluxTransformer2DModel" if family == "flux" else "SD3Transformer2DModel",
        "transformer": dict(FLUX_TINY if family == "flux" else SD3_TINY),
        "lora_rank": 4,
        "lora_targets": list(TARGETS),
    }
    base.update(kw)
    return DiffusersConfig(**base)  # type: ignore[arg-type]


def latents_and_cond(n: int = 4, *, tokens: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, 8, 8, generator=g)
    cond = pack_condition(torch.randn(n, tokens, 32, generator=g), torch.randn(n, 32, generator=g))
    return x, cond
