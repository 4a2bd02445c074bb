"""LoRA through peft: only adapters train, the frozen reference is the base with adapters
off (no copy), the EMA covers the adapters alone, and the diffusers file layout loads with
diffusers' own loader."""

from __future__ import annotations

import pytest
import torch
from diffusers_helpers import latents_and_cond, tiny_config
from safetensors.torch import save_file

from flowpost.adapters.diffusers.config import DiffusersConfig
from flowpost.adapters.diffusers.lora import (
    FrozenBase,
    LoRAEMA,
    adapters_disabled,
    diffusers_lora_state,
    lora_metadata,
)
from flowpost.adapters.diffusers.model import DiffusersFlow, build_flow, load_transformer
from flowpost.config import ConfigError
from flowpost.train.ema import EMA


def _perturb(flow: DiffusersFlow, std: float = 0.2) -> None:
    for name, p in flow.trainable():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=std)


def test_only_adapters_train_and_start_at_the_base() -> None:
    cfg = tiny_config("flux")
    base = load_transformer(cfg)
    flow = build_flow(cfg)
    names = [n for n, _ in flow.trainable()]
    assert names and all("lora_" in n for n in names)
    frozen = [n for n, p in flow.named_parameters() if not p.requires_grad]
    assert all("lora_" not in n for n in frozen)
    x, cond = latents_and_cond(2)
    t = torch.rand(2)
    with torch.no_grad():
        # zero-initialised B: the base's output up to float rounding (the adapter's wrapped
        # layers may sum differently: 1 ulp seen with peft 0.21 on an AMD EPYC CPU)
        torch.testing.assert_close(
            flow(x, t, cond), DiffusersFlow(base)(x, t, cond), rtol=0.0, atol=1e-6
        )
    assert set(flow.state_dict()) == {n for n, _ in flow.trainable()}  # no base weights


def test_rank_zero_and_unmatched_targets_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="lora_rank: 0 trains nothing"):
        DiffusersConfig(lora_rank=0)
    with pytest.raises(ValueError, match="'to_qq' matches no linear layer of FluxTransformer"):
        build_flow(tiny_config("flux", lora_targets=["to_q", "to_qq"]))
    with pytest.raises(ValueError, match="'proj_mlp' matches no linear layer of SD3"):
        build_flow(tiny_config("sd3", lora_targets=["proj_mlp"]))


def test_frozen_base_is_the_base_with_adapters_off_not_a_copy() -> None:
    cfg = tiny_config("sd3")
    pristine = DiffusersFlow(load_transformer(cfg))
    flow = build_flow(cfg)
    _perturb(flow)
    ref = FrozenBase(flow)
    assert list(ref.parameters()) == [] and ref.state_dict() == {}
    x, cond = latents_and_cond(3)
    t = torch.rand(3)
    flags = [p.requires_grad for p in flow.parameters()]
    with torch.no_grad():
        moved = flow(x, t, cond)
        assert torch.allclose(ref(x, t, cond), pristine(x, t, cond), atol=1e-6)
        assert (moved - pristine(x, t, cond)).abs().max() > 1e-3
        assert torch.equal(flow(x, t, cond), moved)  # adapters are back on afterwards
    assert [p.requires_grad for p in flow.parameters()] == flags
    with adapters_disabled(flow.transformer), torch.no_grad():
        assert torch.allclose(flow(x, t, cond), pristine(x, t, cond), atol=1e-6)


def test_ema_averages_the_adapters_only() -> None:
    flow = build_flow(tiny_config("flux"))
    ema = EMA(flow, decay=0.5)
    assert isinstance(ema.module, LoRAEMA)
    assert set(ema.module.state_dict()) == {
        "shadow." + n.replace(".", "__") for n, _ in flow.trainable()
    }
    start = {n: p.detach().clone() for n, p in flow.trainable()}
    _perturb(flow)
    live = {n: p.detach().clone() for n, p in flow.trainable()}
    ema.update(flow)  # decay 0.5: the average is the midpoint
    for n, value in ema.module.averaged().items():
        assert torch.allclose(value, 0.5 * (start[n] + live[n]), atol=1e-7)
    x, cond = latents_and_cond(2)
    t = torch.rand(2)
    with torch.no_grad():
        out_ema = ema.module(x, t, cond)
        live_out = flow(x, t, cond)
        for (_, p), value in zip(flow.trainable(), ema.module.averaged().values()):
            p.copy_(value)
        expected = flow(x, t, cond)
        for n, p in flow.trainable():
            p.copy_(live[n])
    assert torch.allclose(out_ema, expected, atol=1e-6)
    assert torch.equal(flow(x, t, cond).detach(), live_out)  # live weights restored


def test_diffusers_layout_loads_with_diffusers_own_loader(tmp_path) -> None:
    cfg = tiny_config("flux", lora_alpha=8.0)  # scale alpha / r = 2 must travel in metadata
    flow = build_flow(cfg)
    _perturb(flow)
    state = diffusers_lora_state(dict(flow.trainable()))
    assert all(k.startswith("transformer.") and ".default." not in k for k in state)
    path = tmp_path / "pytorch_lora_weights.safetensors"
    save_file(state, str(path), metadata=lora_metadata(cfg))
    fresh = load_transformer(cfg)
    fresh.load_lora_adapter(str(tmp_path), prefix="transformer", weight_name=path.name)
    x, cond = latents_and_cond(2)
    t = torch.rand(2)
    with torch.no_grad():
        assert torch.allclose(DiffusersFlow(fresh)(x, t, cond), flow(x, t, cond), atol=1e-5)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_bf16_base_with_fp32_adapters_trains(family: str) -> None:
    flow = build_flow(tiny_config(family, base_dtype="bf16"))
    base = {p.dtype for p in flow.parameters() if not p.requires_grad}
    assert base == {torch.bfloat16}
    assert {p.dtype for _, p in flow.trainable()} == {torch.float32}
    x, cond = latents_and_cond(2)
    out = flow(x, torch.rand(2), cond)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in flow.trainable())
