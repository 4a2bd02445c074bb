"""GPU benchmark of LoRA fine-tuning on a mid-sized FLUX-architecture transformer: step time,
peak memory and throughput in bf16 for SFT, FAIL-PD (local estimator) and AF, with and
without ``torch.compile`` of the transformer.

The model is a random ``FluxTransformer2DModel`` (nothing is downloaded) of FLUX.1-dev's
block design at a smaller size (``MID``: 4 double + 8 single blocks of width 1536, T5-width
prompts; 0.64 B parameters), its base in bf16, LoRA rank 16 on the attention projections;
64x64 latents (512 px images, 1024 image tokens), 64 text tokens, batch 4, 4-step sampler
for FAIL-PD's roll-outs and AF's generator. Each (method, compile) cell builds a fresh model, takes
``--warmup`` steps (compilation happens there), then times ``--steps`` steps between
``torch.cuda.synchronize()`` calls; peak memory is ``torch.cuda.max_memory_allocated`` over
the timed steps.

    python benchmarks/bench_diffusers_gpu.py                 # on a CUDA machine
    python benchmarks/bench_diffusers_gpu.py --smoke         # CPU: tiny model, no result file

It writes ``benchmarks/results/diffusers_gpu.json`` only on CUDA. No GPU was available when
it was written: only the ``--smoke`` path has run (every method, with and without compile,
on the CPU), so the CUDA path is untried and there are no GPU figures yet.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from flowpost.adapters.diffusers.build import build_method
from flowpost.adapters.diffusers.config import DiffusersConfig
from flowpost.adapters.diffusers.model import pack_condition
from flowpost.config import from_dict
from flowpost.data.base import Batch, DataSpec
from flowpost.methods.base import Method, get_method_class
from flowpost.train.ema import EMA
from flowpost.train.updater import OptimizerUpdater

RESULTS = Path(__file__).parent / "results" / "diffusers_gpu.json"
MID = {
    "patch_size": 1, "in_channels": 64, "num_layers": 4, "num_single_layers": 8,
    "attention_head_dim": 128, "num_attention_heads": 12, "joint_attention_dim": 4096,
    "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56],
}  # fmt: skip
TINY = {
    "patch_size": 1, "in_channels": 64, "num_layers": 1, "num_single_layers": 1,
    "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
    "pooled_projection_dim": 32, "guidance_embeds": True, "axes_dims_rope": [4, 6, 6],
}  # fmt: skip
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "sft": ("flow_matching", {"label_dropout": 0.0}),
    "fail_pd": ("fail", {"variant": "pd", "pd_estimator": "local", "nfe": 4, "pd_timesteps": 2,
                         "cold_start_steps": 0, "disc_warmup_steps": 0, "ref_weight": 0.05}),
    "af": ("adversarial", {"nfe": 4}),
}  # fmt: skip


def build(method: str, model: dict[str, Any], size: int, tokens: int, device: str) -> Method:
    name, overrides = METHODS[method]
    cls = get_method_class(name)
    dcfg = DiffusersConfig(
        model_class="FluxTransformer2DModel",
        transformer=dict(model),
        base_dtype="bf16" if device == "cuda" else "fp32",
        lora_rank=16,
        lora_targets=["to_q", "to_k", "to_v", "to_out.0"],
        guidance=3.5,
    )
    text, pooled = model["joint_attention_dim"], model["pooled_projection_dim"]
    spec = DataSpec((16, size, size), cond_dim=tokens * text + pooled)
    return build_method(cls, from_dict(cls.config_class, overrides, prefix="method"), spec, dcfg)


def run_cell(method: str, compiled: bool, args: argparse.Namespace) -> dict[str, Any]:
    device = args.device
    model = TINY if args.smoke else MID
    torch.manual_seed(0)
    m = build(method, model, args.size, args.tokens, device).to(device)
    flow = getattr(m, "generator", None) or m.policy
    params_m = sum(p.numel() for p in flow.parameters()) / 1e6
    lora_m = sum(p.numel() for _, p in flow.trainable()) / 1e6
    if compiled:
        flow.transformer.compile()
    opts = {}
    for name, spec in m.optimizers().items():
        params = [p for p in spec.params if p.requires_grad]
        opts[name] = torch.optim.AdamW(params, lr=spec.lr or 1e-5, betas=spec.betas or (0.9, 0.999))
    live = {r: m.role(r) for r in m.ema_roles()}
    updater = OptimizerUpdater(
        opts, grad_clip={k: 1.0 for k in opts}, emas={r: EMA(v, 0.999) for r, v in live.items()},
        live=live,
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    text, pooled = model["joint_attention_dim"], model["pooled_projection_dim"]
    x = torch.randn(args.batch, 16, args.size, args.size, generator=g).to(device)
    cond = pack_condition(
        torch.randn(args.batch, args.tokens, text, generator=g),
        torch.randn(args.batch, pooled, generator=g),
    ).to(device)
    batch = Batch(x, cond)

    def step(k: int) -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            m.train_step(batch, k, updater)

    cuda = device == "cuda"
    for k in range(args.warmup):
        step(k)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for k in range(args.steps):
        start = time.perf_counter()
        step(args.warmup + k)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    row = {
        "method": method,
        "compile": compiled,
        "params_million": round(params_m, 1),
        "lora_params_million": round(lora_m, 2),
        "step_s_median": round(median, 4),
        "samples_per_s": round(args.batch / median, 2),
        "peak_memory_GB": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
    }
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="latent side (64: 512 px)")
    parser.add_argument("--tokens", type=int, default=64, help="prompt tokens")
    parser.add_argument("--methods", default="sft,fail_pd,af")
    parser.add_argument("--compile", default="off,on", help="off, on or off,on")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, no result file")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the result file (JSON)")
    args = parser.parse_args()
    args.device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.smoke:
        args.size, args.tokens, args.batch = 8, 3, 2
        args.steps, args.warmup = min(args.steps, 2), min(args.warmup, 1)
    elif args.device != "cuda":
        raise SystemExit("no CUDA device: this benchmark is for a GPU (use --smoke on a CPU)")
    rows = []
    for method in args.methods.split(","):
        for mode in args.compile.split(","):
            rows.append(run_cell(method, mode == "on", args))
            if args.device == "cuda":
                torch.cuda.empty_cache()  # the cell's model is gone
    if args.device != "cuda":
        return
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "precision": "bf16 autocast, bf16 base, fp32 LoRA",
        "model": {"FluxTransformer2DModel": MID, "lora_rank": 16},
        "batch": args.batch, "latent": [16, args.size, args.size], "text_tokens": args.tokens,
        "steps_timed": args.steps, "warmup": args.warmup,
        "rows": rows,
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
