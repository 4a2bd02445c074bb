"""Tests of flowpost/adapters/diffusers/config.py: the `diffusers` recipe section (defaults,
families, one-line errors naming the key)."""

from __future__ import annotations

import pytest

from flowpost.adapters.diffusers.config import DiffusersConfig, family_of
from flowpost.config import ConfigError, from_dict
from flowpost.train.config import build_run_config


def test_families_and_alpha() -> None:
    assert family_of("FluxTransformer2DModel") == "flux"
    assert family_of("SD3Transformer2DModel") == family_of("SanaTransformer2DModel") == "sd3"
    cfg = DiffusersConfig(model_class="SD3Transformer2DModel", call="flux", lora_rank=8)
    assert cfg.family == "flux" and cfg.lora_alpha_value == 8.0


def test_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="diffusers.lora_rank: 0 trains nothing"):
        build_run_config({"diffusers": {"lora_rank": 0}})
    with pytest.raises(ConfigError, match="unknown key 'diffusers.lora_rnak'"):
        build_run_config({"diffusers": {"lora_rnak": 4}})
    with pytest.raises(ConfigError, match="lora_targets: empty"):
        from_dict(DiffusersConfig, {"lora_targets": []})
    with pytest.raises(ConfigError, match="diffusers.call"):
        build_run_config({"diffusers": {"call": "unet"}})
