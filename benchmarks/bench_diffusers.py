"""LoRA FAIL-PD on a tiny FLUX transformer: flowpost vs a hand-written diffusers + peft loop,
and the memory FAIL-PD keeps for backward with each estimator, with and without checkpointing.

Speed. Both contenders do, per step, the same arithmetic on the same FluxTransformer2DModel
with the same peft LoRA adapters: a 4-step Euler roll-out without gradients; one
discriminator update (BCE on expert latents vs roll-outs, clip, AdamW); one policy update
with the local one-step estimator (2 grid times per sample, one differentiable Euler step,
the clean estimate scored by the frozen discriminator) plus ``0.05 ||v - v_ref||^2`` against
the base with adapters disabled; clip, AdamW, EMA of the adapters. flowpost runs it through
its FAIL method, the adapter (packing, time convention, text conditions) and the trainer's
updater and EMA; the hand-written loop packs once and calls the transformer directly. They
run interleaved, round after round, on one thread; rates use the process's CPU time.

Memory, for the local vs the pathwise estimator, with and without the transformer's gradient
checkpointing and, for pathwise, with and without recomputing each solver step:

* the bytes of tensors saved for backward during the policy update (exact, counted by
  ``torch.autograd.graph.saved_tensors_hooks``; with activation checkpointing only what
  survives to backward is counted);
* the peak memory of the policy update and of the whole FAIL-PD step (roll-out,
  discriminator update, policy update, AdamW, EMA) above what was allocated before the step
  (weights, optimiser state): every tensor storage created during the step is counted from
  its creation to its release (a ``TorchDispatchMode`` sees each op's outputs, a weak
  reference each storage's release), the CPU counterpart of
  ``torch.cuda.max_memory_allocated`` without the allocator's rounding and caching.

No GPU was available: these are CPU measurements of a tiny model.

    python benchmarks/bench_diffusers.py [--rounds 5] [--steps 10]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
import weakref
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from flowpost.adapters.diffusers.build import build_method
from flowpost.adapters.diffusers.config import DiffusersConfig
from flowpost.adapters.diffusers.discriminator import LatentDiscriminator
from flowpost.adapters.diffusers.lora import add_lora
from flowpost.adapters.diffusers.model import (
    latent_image_ids,
    load_transformer,
    pack_condition,
    pack_latents,
    unpack_latents,
)
from flowpost.config import from_dict
from flowpost.data.base import Batch, DataSpec
from flowpost.methods.base import get_method_class
from flowpost.train.ema import EMA
from flowpost.train.updater import OptimizerUpdater

RESULTS = Path(__file__).parent / "results" / "diffusers.json"
FLUX = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 2,
    "num_single_layers": 2,
    "attention_head_dim": 32,
    "num_attention_heads": 4,
    "joint_attention_dim": 64,
    "pooled_projection_dim": 64,
    "guidance_embeds": True,
    "axes_dims_rope": [8, 12, 12],
}
BATCH, TOKENS, NFE, MC, REF, LR, DLR, GUIDE = 8, 8, 4, 2, 0.05, 1e-4, 1e-4, 3.5


def diffusers_cfg(checkpointing: bool = False) -> DiffusersConfig:
    return DiffusersConfig(
        model_class="FluxTransformer2DModel",
        transformer=dict(FLUX),
        lora_rank=8,
        lora_targets=["to_q", "to_k", "to_v", "to_out.0"],
        gradient_checkpointing=checkpointing,
        guidance=GUIDE,
        discriminator_hidden=64,
    )


def batches(n: int, size: int) -> list[Batch]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        x = torch.randn(BATCH, 16, size, size, generator=g)
        c = pack_condition(
            torch.randn(BATCH, TOKENS, 64, generator=g), torch.randn(BATCH, 64, generator=g)
        )
        out.append(Batch(x, c))
    return out


def fail_config(estimator: str, step_checkpoint: bool = True) -> Any:
    cls = get_method_class("fail")
    cfg = {
        "variant": "pd",
        "pd_estimator": estimator,
        "pd_checkpoint": step_checkpoint,
        "nfe": NFE,
        "pd_timesteps": MC,
        "ref_weight": REF,
        "cold_start_steps": 0,
        "disc_warmup_steps": 0,
        "disc_lr": DLR,
        "lr": LR,
        "discriminator": {"depth": 2},
    }
    return cls, from_dict(cls.config_class, cfg, prefix="method")


class Flowpost:
    """flowpost: the FAIL method around the adapted transformer, the trainer's updater + EMA."""

    def __init__(self, size: int, estimator: str = "local", checkpointing: bool = False,
                 step_checkpoint: bool = True) -> None:  # fmt: skip
        torch.manual_seed(0)
        cls, cfg = fail_config(estimator, step_checkpoint)
        spec = DataSpec((16, size, size), cond_dim=TOKENS * 64 + 64)
        self.method = build_method(cls, cfg, spec, diffusers_cfg(checkpointing))
        opts = {}
        for name, s in self.method.optimizers().items():
            params = [p for p in s.params if p.requires_grad]
            betas = s.betas or (0.9, 0.999)
            opts[name] = torch.optim.AdamW(params, lr=s.lr or LR, betas=betas, weight_decay=0.0)
        live = {"policy": self.method.policy}
        self.updater = OptimizerUpdater(
            opts, grad_clip={k: 1.0 for k in opts}, emas={"policy": EMA(self.method.policy, 0.999)},
            live=live,
        )  # fmt: skip
        self.k = 0

    def step(self, batch: Batch) -> None:
        self.method.train_step(batch, self.k, self.updater)
        self.k += 1


class HandWritten:
    """The same arithmetic written directly against diffusers + peft."""

    def __init__(self, size: int) -> None:
        torch.manual_seed(0)
        cfg = diffusers_cfg()
        self.tr = load_transformer(cfg)
        add_lora(self.tr, cfg)
        self.lora = [p for p in self.tr.parameters() if p.requires_grad]
        self.ema = [p.detach().clone() for p in self.lora]
        self.disc = LatentDiscriminator(16, text_dim=64, pooled_dim=64, hidden=64, depth=2)
        self.opt = torch.optim.AdamW(self.lora, lr=LR, weight_decay=0.0)
        self.dopt = torch.optim.AdamW(self.disc.parameters(), lr=DLR, weight_decay=0.0)
        self.size = size
        self.img_ids = latent_image_ids(size, size, "cpu", torch.float32)
        self.txt_ids = torch.zeros(TOKENS, 3)
        self.grid = torch.linspace(0, 1, NFE + 1)
        self.k = 0

    def v(self, x: torch.Tensor, t: torch.Tensor, prompt, pooled) -> torch.Tensor:
        b = x.shape[0]
        out = self.tr(
            hidden_states=pack_latents(x), encoder_hidden_states=prompt,
            pooled_projections=pooled, timestep=1 - t, img_ids=self.img_ids,
            txt_ids=self.txt_ids, guidance=torch.full((b,), GUIDE), return_dict=False,
        )[0]  # fmt: skip
        return -unpack_latents(out, self.size, self.size)

    def step(self, batch: Batch) -> None:
        x, cond = batch.x, batch.cond
        assert cond is not None
        b = x.shape[0]
        prompt = cond[:, : TOKENS * 64].reshape(b, TOKENS, 64)
        pooled = cond[:, TOKENS * 64 :]
        with torch.no_grad():  # roll-out
            x0 = torch.randn_like(x)
            z = x0
            for i in range(NFE):
                t = self.grid[i].expand(b)
                z = z + (self.grid[i + 1] - self.grid[i]) * self.v(z, t, prompt, pooled)
        x1 = z
        # discriminator update
        loss_d = F.softplus(-self.disc(x, cond)).mean() + F.softplus(self.disc(x1, cond)).mean()
        loss_d.backward()
        torch.nn.utils.clip_grad_norm_(list(self.disc.parameters()), 1.0)
        self.dopt.step()
        self.dopt.zero_grad(set_to_none=True)
        self.opt.zero_grad(set_to_none=True)
        # policy update: local one-step estimator, discriminator frozen
        self.disc.requires_grad_(False)
        x0r, x1r = x0.repeat_interleave(MC, 0), x1.repeat_interleave(MC, 0)
        pr, po = prompt.repeat_interleave(MC, 0), pooled.repeat_interleave(MC, 0)
        cr = cond.repeat_interleave(MC, 0)
        idx = torch.randint(0, NFE, (b * MC,))
        t, t2 = self.grid[idx], self.grid[idx + 1]
        te = t.view(-1, 1, 1, 1)
        x_t = (1 - te) * x0r + te * x1r
        v = self.v(x_t, t, pr, po)
        x_next = x_t + (t2 - t).view(-1, 1, 1, 1) * v
        t2c = t2.clamp_min(0.02).view(-1, 1, 1, 1)
        x_hat = (x_next - (1 - t2c) * x0r) / t2c
        adv = F.softplus(-self.disc(x_hat, cr)).mean()
        with torch.no_grad():
            self.tr.disable_adapters()
            v_ref = self.v(x_t, t, pr, po)
            self.tr.enable_adapters()
        reg = REF * (v - v_ref).pow(2).flatten(1).mean(1).mean()
        (adv + reg).backward()
        self.disc.requires_grad_(True)
        torch.nn.utils.clip_grad_norm_(self.lora, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.dopt.zero_grad(set_to_none=True)
        self.k += 1
        decay = min(0.999, (1 + self.k) / (10 + self.k))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.lora], 1 - decay)


def rate(model: Flowpost | HandWritten, data: list[Batch]) -> float:
    start = time.process_time()
    for batch in data:
        model.step(batch)
    return len(data) / (time.process_time() - start)


def speed(rounds: int, steps: int, size: int) -> dict[str, Any]:
    data = batches(steps, size)
    ours, theirs = Flowpost(size), HandWritten(size)
    rate(ours, data[:2]), rate(theirs, data[:2])  # warm-up
    r_ours, r_theirs = [], []
    for _ in range(rounds):
        r_ours.append(rate(ours, data))
        r_theirs.append(rate(theirs, data))
    ratio = statistics.median(a / b for a, b in zip(r_theirs, r_ours))
    return {
        "flowpost_steps_per_s": statistics.median(r_ours),
        "handwritten_steps_per_s": statistics.median(r_theirs),
        "time_ratio_flowpost_over_handwritten": ratio,
        "rounds_ours": r_ours,
        "rounds_handwritten": r_theirs,
        "target_ratio": 1.1,
        "meets_target": ratio <= 1.1,
    }


class _Saved:
    """Bytes of distinct storages saved for backward since the last ``take``."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.bytes = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in self.seen and not isinstance(t, torch.nn.Parameter):
            self.seen.add(s.data_ptr())
            self.bytes += s.nbytes()
        return t

    def take(self) -> int:
        out, self.bytes, self.seen = self.bytes, 0, set()
        return out


def policy_saved_bytes(size: int, estimator: str, checkpointing: bool, step_ckpt: bool) -> int:
    run = Flowpost(size, estimator, checkpointing, step_ckpt)
    counter = _Saved()
    policy_bytes: list[int] = []
    step = run.updater.step

    def counting(name: str, **terms: torch.Tensor) -> dict[str, float]:
        taken = counter.take()
        if name == "policy":
            policy_bytes.append(taken)
        return step(name, **terms)

    run.updater.step = counting  # type: ignore[method-assign]
    batch = batches(1, size)[0]
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
        run.step(batch)
    return policy_bytes[0]


class PeakMemory(TorchDispatchMode):
    """Bytes of CPU tensor storages created inside the mode and still alive: their peak over
    the whole time (``peak``) and since the last :meth:`mark` (``window``)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = self.window = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def mark(self) -> None:
        self.window = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.current)
        self.window = max(self.window, self.current)
        return out


def peak_bytes(size: int, estimator: str, checkpointing: bool, step_ckpt: bool) -> dict:
    """Peak MiB above the step's start, of the policy update (from the end of the
    discriminator update: forward, backward, clip, AdamW, EMA) and of the whole FAIL-PD step;
    on the second step, so the optimiser state already exists."""
    run = Flowpost(size, estimator, checkpointing, step_ckpt)
    batch = batches(1, size)[0]
    run.step(batch)
    mode = PeakMemory()
    step = run.updater.step
    policy: list[int] = []

    def marking(name: str, **terms: torch.Tensor) -> dict[str, float]:
        out = step(name, **terms)
        if name == "discriminator":
            mode.mark()
        elif name == "policy":
            policy.append(mode.window)
        return out

    run.updater.step = marking  # type: ignore[method-assign]
    gc.collect()
    with mode:
        run.step(batch)
    return {
        "policy_update_peak_MiB": round(policy[0] / 2**20, 3),
        "step_peak_MiB": round(mode.peak / 2**20, 3),
    }


def memory(size: int) -> list[dict[str, Any]]:
    rows = []
    for estimator, ckpt, step_ckpt in [
        ("local", False, True),
        ("local", True, True),
        ("pathwise", False, False),
        ("pathwise", False, True),
        ("pathwise", True, True),
    ]:
        b = policy_saved_bytes(size, estimator, ckpt, step_ckpt)
        rows.append({
            "estimator": estimator,
            "transformer_checkpointing": ckpt,
            "solver_step_checkpointing": step_ckpt if estimator == "pathwise" else None,
            "latent": [16, size, size],
            "saved_for_backward_MiB": round(b / 2**20, 3),
            **peak_bytes(size, estimator, ckpt, step_ckpt),
        })  # fmt: skip
        print(rows[-1], flush=True)
    return rows


FLUX_DEV = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56],
}  # fmt: skip
SD3_MEDIUM = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24,
    "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "caption_projection_dim": 1536, "pooled_projection_dim": 2048, "out_channels": 16,
    "pos_embed_max_size": 192,
}  # fmt: skip
GB = 1e9


def estimates(memory_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Memory of FLUX.1-dev / SD3-medium LoRA fine-tuning, per method, from exact parameter
    counts (the architectures built on the meta device: no weights) and the activation bytes
    per (sample x token x block x width) measured above on the tiny FLUX (fp32, halved for bf16).
    Estimates, not GPU measurements."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    tiny_blocks = FLUX["num_layers"] + FLUX["num_single_layers"]
    tiny_width = FLUX["attention_head_dim"] * FLUX["num_attention_heads"]
    per: dict[str, float] = {}
    for row in memory_rows:
        size = row["latent"][1]
        tokens = (size // 2) ** 2 + TOKENS
        samples = BATCH * (MC if row["estimator"] == "local" else 1)
        key = f"{row['estimator']}_ckpt{int(row['transformer_checkpointing'])}"
        if row["estimator"] == "pathwise" and not row["solver_step_checkpointing"]:
            continue
        per[key] = (
            row["saved_for_backward_MiB"] * 2**20 / (samples * tokens * tiny_blocks * tiny_width)
        )
    # one forward with gradients per sample: the local rows (MC copies counted as samples)
    act = {"no_checkpointing": per["local_ckpt0"] / 2, "checkpointing": per["local_ckpt1"] / 2}
    out: dict[str, Any] = {"activation_bytes_per_sample_token_block_width_bf16": act}
    models = {
        "FLUX.1-dev": (FluxTransformer2DModel, FLUX_DEV, 1024 + 512, 19 + 38, 3072),
        "SD3-medium": (SD3Transformer2DModel, SD3_MEDIUM, 1024 + 333, 24, 1536),
    }
    for name, (cls, cfg, tokens, blocks, width) in models.items():
        with torch.device("meta"):
            model = cls(**cfg)
        params = sum(p.numel() for p in model.parameters())
        targets = ["to_q", "to_k", "to_v", "to_out.0"]
        lora = sum(
            16 * (m.in_features + m.out_features)
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear)
            and any(n == t or n.endswith("." + t) for t in targets)
        )
        a_full = act["no_checkpointing"] * tokens * blocks * width / GB
        a_ckpt = act["checkpointing"] * tokens * blocks * width / GB
        out[name] = {
            "params_billion": round(params / 1e9, 3),
            "tokens_at_512px": tokens,
            "base_bf16_GB": round(2 * params / GB, 2),
            "deep_copied_reference_bf16_GB (what the adapters-off reference saves)": round(
                2 * params / GB, 2
            ),
            "lora_rank16_params_million": round(lora / 1e6, 2),
            "lora_weights_grads_adam_ema_fp32_GB": round(5 * 4 * lora / GB, 3),
            "full_finetune_fp32_weights_grads_adam_GB (what LoRA saves)": round(
                16 * params / GB, 1
            ),
            "activations_per_sample_GB": {
                "no_checkpointing": round(a_full, 2),
                "checkpointing": round(a_ckpt, 2),
            },  # fmt: skip
            "policy_update_activations_per_prompt_GB": {
                "sft": [round(a_full, 2), round(a_ckpt, 2)],
                "fail_pd_local (pd_timesteps=2)": [round(2 * a_full, 2), round(2 * a_ckpt, 2)],
                "fail_pd_pathwise (per-step recompute, ref_weight=0)": [
                    round(a_full, 2),
                    round(a_ckpt, 2),
                ],
                "fail_pg_fpo (pg_draws=8)": [round(8 * a_full, 2), round(8 * a_ckpt, 2)],
                "af (generator + discriminator backward)": [round(a_full, 2), round(a_ckpt, 2)],
                "_columns": ["no_checkpointing", "checkpointing"],
            },  # fmt: skip
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=16, help="latent side (16: 64 image tokens)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {
        "device": "cpu (no GPU in this session)",
        "threads": 1,
        "model": {
            "FluxTransformer2DModel": FLUX,
            "lora_rank": 8,
            "batch": BATCH,
            "text_tokens": TOKENS,
            "nfe": NFE,
            "pd_timesteps": MC,
        },  # fmt: skip
        "speed": speed(args.rounds, args.steps, args.size),
    }
    print(json.dumps(result["speed"], indent=1), flush=True)
    result["memory"] = memory(args.size) + memory(2 * args.size)
    result["estimates"] = estimates(
        [r for r in result["memory"] if r["latent"][1] == 2 * args.size]
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
