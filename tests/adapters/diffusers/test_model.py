"""The time-convention boundary: flowpost's sampler on the wrapped transformer reproduces
diffusers' own scheduler loop (FLUX with its resolution-dependent shift and guidance
embedding, SD3 with its static shift); packing, conditions and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers_helpers import latents_and_cond, tiny_config

from flowpost.adapters.diffusers.model import (
    build_flow,
    flux_shift,
    latent_image_ids,
    load_transformer,
    pack_condition,
    pack_latents,
    shifted_grid,
    unpack_condition,
    unpack_latents,
)
from flowpost.flows.solvers import sample


def test_packing_and_condition_round_trip() -> None:
    x = torch.randn(2, 16, 8, 6)
    packed = pack_latents(x)
    assert packed.shape == (2, 4 * 3, 64)
    assert torch.equal(unpack_latents(packed, 8, 6), x)
    ids = latent_image_ids(8, 6, "cpu", torch.float32)
    assert ids.shape == (12, 3) and ids[-1].tolist() == [0.0, 3.0, 2.0]
    prompt, pooled = torch.randn(2, 5, 32), torch.randn(2, 7)
    p2, q2 = unpack_condition(pack_condition(prompt, pooled), 32, 7)
    assert torch.equal(p2, prompt) and torch.equal(q2, pooled)
    with pytest.raises(ValueError, match="not L \\* 32"):
        unpack_condition(torch.randn(2, 50), 32, 7)


def _flux_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """diffusers' FLUX scheduler with the FLUX.1 pipeline's dynamic-shift settings."""
    return FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def test_flux_shift_matches_diffusers_time_shift() -> None:
    sched = _flux_scheduler()
    seq = 1024
    mu = float(np.log(flux_shift(seq)))
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / 8, 8), mu=mu)
    ours = 1.0 - shifted_grid(8, flux_shift(seq))  # back to sigma
    assert torch.allclose(sched.sigmas, ours, atol=1e-6)


def _their_loop(flow, family: str, noise: torch.Tensor, cond: torch.Tensor, steps: int):
    """The pipeline's denoising loop on the raw transformer, with diffusers' scheduler."""
    tr = flow.transformer
    b, _, h, w = noise.shape
    prompt, pooled = unpack_condition(cond, 32, 32)
    if family == "flux":
        sched = _flux_scheduler()
        mu = float(np.log(flux_shift((h // 2) * (w // 2))))
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        lat = pack_latents(noise)
        for t in sched.timesteps:
            out = tr(
                hidden_states=lat,
                encoder_hidden_states=prompt,
                pooled_projections=pooled,
                timestep=t.expand(b) / 1000,
                guidance=torch.full((b,), flow.guidance),
                img_ids=latent_image_ids(h, w, "cpu", torch.float32),
                txt_ids=torch.zeros(prompt.shape[1], 3),
                return_dict=False,
            )[0]
            lat = sched.step(out, t, lat, return_dict=False)[0]
        return unpack_latents(lat, h, w)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps))
    lat = noise
    for t in sched.timesteps:
        out = tr(
            hidden_states=lat,
            encoder_hidden_states=prompt,
            pooled_projections=pooled,
            timestep=t.expand(b),
            return_dict=False,
        )[0]
        lat = sched.step(out, t, lat, return_dict=False)[0]
    return lat


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_flowpost_euler_equals_the_diffusers_scheduler_loop(family: str) -> None:
    flow = build_flow(tiny_config(family))
    for name, p in flow.trainable():  # move the adapters off zero: a non-trivial model
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)
    noise, cond = latents_and_cond(3)
    steps = 4
    with torch.no_grad():
        theirs = _their_loop(flow, family, noise, cond, steps)
        grid = flow.sampling_grid(steps, tuple(noise.shape[1:]))
        ours = sample(flow, noise, None, "euler", cond=cond, grid=grid)
    assert isinstance(ours, torch.Tensor)
    assert (ours - theirs).abs().max() < 1e-4 * (1 + theirs.abs().max())
    assert (theirs - noise).abs().mean() > 0.1  # the loop did move the latents


def test_velocity_is_minus_theirs_at_one_minus_t() -> None:
    flow = build_flow(tiny_config("sd3"))
    x, cond = latents_and_cond(2)
    t = torch.tensor([0.25, 0.9])
    prompt, pooled = unpack_condition(cond, 32, 32)
    with torch.no_grad():
        theirs = flow.transformer(
            hidden_states=x,
            encoder_hidden_states=prompt,
            pooled_projections=pooled,
            timestep=1000 * (1 - t),
            return_dict=False,
        )[0]
        assert torch.allclose(flow(x, t, cond), -theirs, atol=1e-6)


def test_flux_guidance_embedding_is_used() -> None:
    flow = build_flow(tiny_config("flux"))
    x, cond = latents_and_cond(2)
    t = torch.rand(2)
    with torch.no_grad():
        a = flow(x, t, cond)
        flow.guidance = 1.0
        b = flow(x, t, cond)
    assert (a - b).abs().max() > 1e-5


def test_bad_latents_are_one_line_errors() -> None:
    flow = build_flow(tiny_config("flux"))
    with pytest.raises(ValueError, match="latents have 4 channels but FluxTransformer2DModel"):
        flow.check_latents((4, 8, 8))
    with pytest.raises(ValueError, match="even height and width"):
        flow.check_latents((16, 7, 8))


def test_random_build_is_reproducible_and_leaves_the_global_stream() -> None:
    cfg = tiny_config("sd3")
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a = load_transformer(cfg)
    assert torch.equal(torch.get_rng_state(), state)
    b = load_transformer(cfg)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_diffusers_folder_loads_and_a_vae_folder_is_refused(tmp_path) -> None:
    cfg = tiny_config("flux")
    ref = load_transformer(cfg)
    ref.save_pretrained(tmp_path / "pipe" / "transformer")
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    loaded = load_transformer(cfg, str(tmp_path / "pipe"))
    assert all(torch.equal(p, q) for p, q in zip(ref.parameters(), loaded.parameters()))
    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    with pytest.raises(ValueError, match="holds a diffusers AutoencoderKL, not a transformer"):
        load_transformer(cfg, str(vae))
    with pytest.raises(ValueError, match="not a diffusers model folder"):
        load_transformer(cfg, str(tmp_path))


def test_missing_folder_is_one_line_error() -> None:
    with pytest.raises(FileNotFoundError, match="diffusers model folder not found"):
        load_transformer(tiny_config("flux", pretrained="./no/such/folder"))
