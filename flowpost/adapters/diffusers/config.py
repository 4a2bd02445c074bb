"""The ``diffusers`` section of a recipe: which transformer, which LoRA, which conventions.

This module imports nothing heavy (no diffusers, no peft), so the core can validate a recipe
without the optional extra installed.

Example:
    >>> from flowpost.config import from_dict
    >>> cfg = from_dict(DiffusersConfig, {"model_class": "FluxTransformer2DModel",
    ...                                   "lora_rank": 4}, prefix="diffusers")
    >>> cfg.family, cfg.lora_alpha_value
    ('flux', 4.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flowpost.config import ConfigError, option

FAMILIES = ("auto", "flux", "sd3")


@dataclass
class DiffusersConfig:
    """A diffusers transformer as the flow model, fine-tuned through LoRA adapters."""

    pretrained: str | None = option(
        None,
        "a local diffusers folder (save_pretrained layout: the transformer folder, or a "
        "pipeline folder with transformer/) or a Hub id; null: build from `transformer`",
    )
    model_class: str = option(
        "FluxTransformer2DModel",
        "diffusers class built from `transformer` when `pretrained` is null",
    )
    transformer: dict[str, Any] = option(
        default_factory=dict,
        help="constructor arguments of model_class (a random model; nothing is downloaded)",
    )
    init_seed: int = option(0, "seed of the random initialisation of a model built from config")
    call: str = option(
        "auto",
        "call convention: flux (packed 2x2 latents, position ids, timestep in [0, 1]), sd3 "
        "(latents as they are, timestep in [0, 1000]); auto: from the class name",
        choices=list(FAMILIES),
    )
    base_dtype: str = option(
        "fp32",
        "dtype of the frozen base weights (bf16 halves their memory)",
        choices=["fp32", "bf16"],
    )
    lora_rank: int = option(16, "LoRA rank r (>= 1)")
    lora_alpha: float | None = option(None, "LoRA alpha (null: equal to the rank, scale 1)")
    lora_dropout: float = option(0.0, "dropout on the LoRA input", min=0.0, max=1.0)
    lora_targets: list[str] = option(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"],
        help="module names (or name suffixes) of the linear layers that get adapters",
    )
    gradient_checkpointing: bool = option(
        False, "recompute each transformer block in backward (less memory, ~30% more time)"
    )
    guidance: float = option(
        3.5, "FLUX guidance-embedding value (guidance-distilled models such as FLUX.1-dev)", min=0.0
    )
    shift: float | None = option(
        None,
        "sampling time shift s (sigma' = s sigma / (1 + (s - 1) sigma)); null: the family "
        "default (FLUX: resolution-dependent, SD3: 3.0); 1: no shift",
        min=1e-6,
    )
    dynamic_shift: bool | None = option(
        None, "resolution-dependent (FLUX) shift; null: true for FLUX, false otherwise"
    )
    discriminator_hidden: int = option(
        64, "width of the latent discriminator that FAIL and AF build for this model", min=1
    )

    def __post_init__(self) -> None:
        if self.lora_rank < 1:
            raise ConfigError(
                f"lora_rank: {self.lora_rank} trains nothing; LoRA needs a rank >= 1 (e.g. 16)"
            )
        if not self.lora_targets:
            raise ConfigError("lora_targets: empty; name at least one linear layer (e.g. to_q)")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ConfigError(f"lora_alpha: must be > 0, got {self.lora_alpha}")

    @property
    def family(self) -> str:
        """``flux`` or ``sd3``: the call convention (``call``, or guessed from the class)."""
        if self.call != "auto":
            return self.call
        return family_of(self.model_class)

    @property
    def lora_alpha_value(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else self.lora_rank)


def family_of(class_name: str) -> str:
    """The call convention of a diffusers transformer class: ``flux`` for FLUX-like models
    (packed latents, position ids), ``sd3`` for every other (latents as they are)."""
    return "flux" if class_name.lower().startswith("flux") else "sd3"


__all__ = ["DiffusersConfig", "FAMILIES", "family_of"]
