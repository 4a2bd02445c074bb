"""Every method runs unchanged on tiny FLUX and SD3 transformers with LoRA: SFT, FAIL-PD
(local and pathwise estimators), FAIL-PG and AF. Only adapter weights (and the methods' own
discriminators) change; bf16 autocast stays finite and close to float32."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from diffusers_helpers import latents_and_cond, tiny_config

from flowpost.adapters.diffusers.build import build_method
from flowpost.adapters.diffusers.discriminator import LatentDiscriminator
from flowpost.adapters.diffusers.lora import FrozenBase, LoRAEMA
from flowpost.adapters.diffusers.model import DiffusersFlow
from flowpost.config import from_dict
from flowpost.data.base import Batch, DataSpec
from flowpost.methods.base import Method, get_method_class
from flowpost.train.ema import EMA
from flowpost.train.updater import OptimizerUpdater

SPEC = DataSpec((16, 8, 8), cond_dim=3 * 32 + 32)  # 3 prompt tokens + pooled
PD = {"variant": "pd", "cold_start_steps": 0, "disc_warmup_steps": 0, "nfe": 2, "ref_weight": 0.05}
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "sft": ("flow_matching", {"label_dropout": 0.0}),
    "fail_pd_local": ("fail", {**PD, "pd_estimator": "local", "disc_lr": 1e-2}),
    "fail_pd_pathwise": ("fail", {**PD, "pd_estimator": "pathwise", "disc_lr": 1e-2}),
    "fail_pg": (
        "fail",
        {**PD, "variant": "pg", "pg_group_size": 2, "pg_draws": 2, "disc_lr": 1e-2},
    ),
    "af": ("adversarial", {"nfe": 2, "lr": 1e-2}),
}


def make(family: str, key: str, **kw: Any) -> Method:
    name, overrides = METHODS[key]
    cls = get_method_class(name)
    cfg = from_dict(cls.config_class, overrides, prefix="method")
    return build_method(cls, cfg, SPEC, tiny_config(family, **kw))


def flow_of(method: Method) -> DiffusersFlow:
    flow = getattr(method, "generator", None) or method.policy
    assert isinstance(flow, DiffusersFlow)
    return flow


def train(method: Method, steps: int, *, bf16: bool = False, seed: int = 0) -> list[dict]:
    opts = {}
    for name, spec in method.optimizers().items():
        params = [p for p in spec.params if p.requires_grad]
        opts[name] = torch.optim.AdamW(params, lr=spec.lr or 1e-2, betas=spec.betas or (0.9, 0.99))
    live = {r: method.role(r) for r in method.ema_roles()}
    emas = {r: EMA(m, 0.9) for r, m in live.items()}
    updater = OptimizerUpdater(opts, emas=emas, live=live)
    x, cond = latents_and_cond(4)
    torch.manual_seed(seed)
    logs = []
    for step in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logs.append(method.train_step(Batch(x, cond), step, updater))
    method.emas = emas  # type: ignore[attr-defined]  (for the caller's checks)
    return logs


@pytest.mark.parametrize("family,key", [(f, k) for f in ("flux", "sd3") for k in METHODS])
def test_method_steps_train_only_the_adapters(family: str, key: str) -> None:
    method = make(family, key)
    flow = flow_of(method)
    base = {n: p.detach().clone() for n, p in flow.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in flow.trainable()}
    logs = train(method, 2)
    assert all(math.isfinite(v) for log in logs for v in log.values())
    assert all(torch.equal(p, base[n]) for n, p in flow.named_parameters() if n in base)
    moved = [n for n, p in flow.trainable() if not torch.equal(p, lora[n])]
    assert any("lora_B" in n for n in moved), "no adapter moved"
    emas = method.emas  # type: ignore[attr-defined]
    assert all(isinstance(e.module, LoRAEMA) for e in emas.values())
    if hasattr(method, "reference"):
        assert isinstance(method.reference, FrozenBase)
    disc = getattr(method, "discriminator", None)
    if key != "sft":
        assert isinstance(disc, LatentDiscriminator)
    # the method's parameters: adapters + discriminator only are trainable
    trainable = [n for n, p in method.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("discriminator.") for n in trainable)


@pytest.mark.parametrize("key", list(METHODS))
def test_bf16_autocast_is_finite_and_close_to_fp32(key: str) -> None:
    runs = {}
    for bf16 in (False, True):
        method = make("flux", key)
        logs = train(method, 2, bf16=bf16)
        noise, cond = latents_and_cond(4, seed=3)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = method.generate(noise, cond, nfe=2)
        runs[bf16] = (logs, out.float())
    (logs32, out32), (logs16, out16) = runs[False], runs[True]
    assert all(math.isfinite(v) for log in logs16 for v in log.values())
    assert torch.isfinite(out16).all()
    for key32, value in logs32[0].items():  # the first step starts from the same weights
        if "acc_" in key32:  # thresholded accuracies may flip on a tiny batch
            continue
        assert abs(logs16[0][key32] - value) <= 0.05 * abs(value) + 0.02, key32
    rel = (out16 - out32).norm() / out32.norm()
    assert rel < 0.05, float(rel)


def test_bad_inputs_are_one_line_errors() -> None:
    cls = get_method_class("flow_matching")
    cfg = cls.config_class()
    with pytest.raises(ValueError, match="latents have 4 channels but SD3Transformer2DModel"):
        build_method(cls, cfg, DataSpec((4, 8, 8)), tiny_config("sd3"))
    af = get_method_class("adversarial")
    with pytest.raises(ValueError, match="any-step AF"):
        build_method(af, af.config_class(nfe=0), SPEC, tiny_config("flux"))


def test_methods_sample_and_train_on_the_model_time_shift() -> None:
    from flowpost.adapters.diffusers.model import flux_shift
    from flowpost.flows.solvers import sample
    from flowpost.methods.components.common import grid_shift, solver_grid

    method = make("flux", "fail_pd_local")
    flow = flow_of(method)
    assert flow.time_shift == pytest.approx(flux_shift(16))  # 8x8 latents: 16 packed tokens
    assert grid_shift(method.policy) == flow.time_shift
    assert grid_shift(method.reference) == flow.time_shift
    grid = solver_grid(4, "euler", shift=grid_shift(flow))
    assert torch.allclose(grid, flow.sampling_grid(4, (16, 8, 8)), atol=1e-6)
    noise, cond = latents_and_cond(2)
    ema = EMA(flow, 0.9).module
    assert grid_shift(ema) == flow.time_shift
    with torch.no_grad():
        expected = sample(flow, noise, None, "euler", cond=cond, grid=grid)
        assert torch.allclose(method.generate(noise, cond, nfe=4), expected, atol=1e-6)
        roles = {"policy": ema}
        assert torch.allclose(method.generate(noise, cond, nfe=4, roles=roles), expected, atol=1e-6)
    sd3 = make("sd3", "sft")
    assert grid_shift(sd3.policy) == 3.0
