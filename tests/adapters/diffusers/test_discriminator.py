"""The latent discriminator: shapes, conditioning by projection, time input, fp32 logits."""

from __future__ import annotations

import pytest
import torch

from flowpost.adapters.diffusers.discriminator import LatentDiscriminator
from flowpost.adapters.diffusers.model import pack_condition


def test_condition_and_time_change_the_logit() -> None:
    d = LatentDiscriminator(16, text_dim=8, pooled_dim=4, hidden=16, depth=2)
    x = torch.randn(3, 16, 8, 8)
    c1 = pack_condition(torch.randn(3, 2, 8), torch.randn(3, 4))
    c2 = pack_condition(torch.randn(3, 2, 8), torch.randn(3, 4))
    assert not torch.allclose(d(x, c1), d(x, c2))
    assert d(x).shape == (3,)
    dt = LatentDiscriminator(16, text_dim=8, pooled_dim=4, time_conditional=True)
    assert not torch.allclose(dt(x, c1, torch.zeros(3)), dt(x, c1, torch.ones(3)))
    with pytest.raises(ValueError, match="time-conditional"):
        dt(x, c1)


def test_logits_are_float32_under_bf16_autocast() -> None:
    d = LatentDiscriminator(16, text_dim=8, pooled_dim=4, hidden=16)
    x = torch.randn(2, 16, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert d(x, pack_condition(torch.randn(2, 2, 8), torch.randn(2, 4))).dtype == torch.float32
