"""Diffusers transformers (FLUX, SD3, ...) as flowpost flow models, fine-tuned with LoRA.

Needs the optional extra: ``pip install "flowpost[diffusers]"`` (diffusers and peft). Importing
this package imports neither; the names below load their module on first use.

* :class:`~flowpost.adapters.diffusers.model.DiffusersFlow`: the time-convention boundary
  (``sigma = 1 - t``, ``v = -v_theirs``), latent packing, text conditions, FLUX guidance
  and time shift;
* :mod:`~flowpost.adapters.diffusers.lora`: LoRA through peft, the frozen base as reference,
  the EMA of the adapters, diffusers' LoRA file layout;
* :func:`~flowpost.adapters.diffusers.build.build_method`: any flowpost method around it;
* :class:`~flowpost.adapters.diffusers.config.DiffusersConfig`: the recipe section.

Example:
    >>> from flowpost.adapters.diffusers import DiffusersConfig
    >>> DiffusersConfig(model_class="SD3Transformer2DModel").family
    'sd3'
"""

from __future__ import annotations

import importlib
from typing import Any

from flowpost.adapters.diffusers.config import DiffusersConfig

_LAZY = {
    "DiffusersFlow": "model",
    "build_flow": "model",
    "load_transformer": "model",
    "pack_condition": "model",
    "unpack_condition": "model",
    "flux_shift": "model",
    "shifted_grid": "model",
    "add_lora": "lora",
    "adapters_disabled": "lora",
    "FrozenBase": "lora",
    "LoRAEMA": "lora",
    "LatentDiscriminator": "discriminator",
    "build_method": "build",
}


def require() -> None:
    """Raise a one-line ImportError when the optional extra is missing."""
    missing = []
    for name in ("diffusers", "peft"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(
            f'{" and ".join(missing)} not installed: pip install "flowpost[diffusers]"'
        )


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"flowpost.adapters.diffusers.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DiffusersConfig", "require", *_LAZY]
