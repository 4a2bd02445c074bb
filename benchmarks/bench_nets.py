"""Parameter counts and CPU timings of the reference networks at their default configs.

For each network (built by :mod:`flowpost.nets.factory` from the *default* ``NetConfig`` /
``DiscriminatorConfig`` with only ``arch`` set, plus a few named variants) and each data
shape (2-D vectors, 8x8 digits, 28x28 MNIST), it measures on one CPU thread:

* ``forward_ms``: one forward pass at batch 256 under ``torch.no_grad()``;
* ``train_ms``: one training step at batch 128 (forward, MSE backward, Adam step), and the
  steps per minute that implies for the network alone (data and trainer overhead excluded).

Each timing is the median of ``--repeats`` runs after two warm-up runs. The table reports the
*CPU time* of the process (one thread), which does not count time the process spent waiting
for a core: on a shared machine it estimates the wall time of an idle one. Wall-clock medians
are kept in the JSON beside it.

    python benchmarks/bench_nets.py [--repeats 5] [--quick]

Prints a markdown table and writes ``benchmarks/results/nets.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from flowpost.data.base import DataSpec
from flowpost.nets.config import DiscriminatorConfig, NetConfig
from flowpost.nets.contracting import ContractingResidual
from flowpost.nets.factory import build_discriminator, build_velocity_net

RESULTS = Path(__file__).parent / "results" / "nets.json"

SPECS = {
    "2-D": DataSpec((2,), None),
    "8x8": DataSpec((1, 8, 8), 10),
    "28x28": DataSpec((1, 28, 28), 10),
}


def cases() -> list[tuple[str, str, str, Callable[[DataSpec], nn.Module], str]]:
    """(name, data, kind, builder, note): kind 'velocity' | 'disc' | 'residual'."""
    out: list[tuple[str, str, str, Callable[[DataSpec], nn.Module], str]] = []
    base = NetConfig()
    for data in SPECS:
        out.append(
            (
                "mlp",
                data,
                "velocity",
                lambda s: build_velocity_net(replace(base, arch="mlp"), s),
                "default",
            )
        )
    for data in ("8x8", "28x28"):
        out.append(
            (
                "unet",
                data,
                "velocity",
                lambda s: build_velocity_net(replace(base, arch="unet"), s),
                "default",
            )
        )
        out.append(
            (
                "dit",
                data,
                "velocity",
                lambda s: build_velocity_net(replace(base, arch="dit"), s),
                "default",
            )
        )
    out.append(
        (
            "unet [1,2,2] attn",
            "28x28",
            "velocity",
            lambda s: build_velocity_net(
                replace(base, arch="unet", channel_mult=[1, 2, 2], attention=True), s
            ),
            "28 -> 14 -> 7",
        )
    )
    out.append(
        (
            "dit patch 4",
            "28x28",
            "velocity",
            lambda s: build_velocity_net(replace(base, arch="dit", patch_size=4), s),
            "7x7 tokens",
        )
    )
    out.append(
        (
            "dit hidden 128",
            "8x8",
            "velocity",
            lambda s: build_velocity_net(replace(base, arch="dit", hidden=128), s),
            "CPU-sized",
        )
    )
    out.append(
        (
            "dit hidden 128 patch 4",
            "28x28",
            "velocity",
            lambda s: build_velocity_net(replace(base, arch="dit", hidden=128, patch_size=4), s),
            "CPU-sized",
        )
    )
    out.append(
        (
            "dit repeats 2",
            "8x8",
            "velocity",
            lambda s: build_velocity_net(replace(base, arch="dit", repeats=2), s),
            "deep one-step",
        )
    )
    out.append(
        (
            "mlp end_time",
            "2-D",
            "velocity",
            lambda s: build_velocity_net(replace(base, arch="mlp"), s, end_time=True),
            "AF generator",
        )
    )
    dbase = DiscriminatorConfig()
    for data in SPECS:
        out.append(
            (
                "disc mlp",
                data,
                "disc",
                lambda s: build_discriminator(dbase, s, time_conditional=True),
                "default, time-cond.",
            )
        )
    for data in ("8x8", "28x28"):
        out.append(
            (
                "disc conv",
                data,
                "disc",
                lambda s: build_discriminator(
                    replace(dbase, arch="conv"), s, time_conditional=True
                ),
                "default, time-cond.",
            )
        )
    for data in SPECS:
        out.append(
            (
                "contracting",
                data,
                "residual",
                lambda s: ContractingResidual(
                    s.numel, hidden=128, mu=0.1, num_classes=s.num_classes
                ),
                "hidden 128",
            )
        )
    return out


def _inputs(spec: DataSpec, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    x = torch.randn(batch, *spec.shape)
    t = torch.rand(batch)
    cond = None if spec.num_classes is None else torch.randint(0, spec.num_classes + 1, (batch,))
    return x, t, cond


def _call(net: nn.Module, kind: str, x, t, cond) -> torch.Tensor:
    if kind == "disc":
        return net(x, cond, t)
    return net(x, t, cond)


def _median_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median CPU-time and wall-time milliseconds of ``fn`` over ``repeats`` runs."""
    for _ in range(2):
        fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(1000 * (time.process_time() - c0))
        wall.append(1000 * (time.perf_counter() - w0))
    return statistics.median(cpu), statistics.median(wall)


def measure(net: nn.Module, kind: str, spec: DataSpec, repeats: int) -> dict:
    x, t, cond = _inputs(spec, 256)

    def forward() -> None:
        with torch.no_grad():
            _call(net, kind, x, t, cond)

    fwd, fwd_wall = _median_ms(forward, repeats)
    xb, tb, cb = _inputs(spec, 128)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)

    def train_step() -> None:
        out = _call(net, kind, xb, tb, cb)
        loss = out.pow(2).mean() if kind == "disc" else (out - xb).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step, step_wall = _median_ms(train_step, repeats)
    return {
        "params": sum(p.numel() for p in net.parameters()),
        "forward_ms_b256": round(fwd, 2),
        "train_ms_b128": round(step, 2),
        "steps_per_min_b128": round(60_000 / step),
        "forward_wall_ms_b256": round(fwd_wall, 2),
        "train_wall_ms_b128": round(step_wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement")
    parser.add_argument("--quick", action="store_true", help="skip the 28x28 cases")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    for name, data, kind, build, note in cases():
        if args.quick and data == "28x28":
            continue
        net = build(SPECS[data])
        row = {
            "net": name,
            "data": data,
            "note": note,
            **measure(net, kind, SPECS[data], args.repeats),
        }
        rows.append(row)
        print(f"  measured {name} @ {data}", flush=True)
    header = (
        "| network | data | note | parameters | forward, batch 256 (ms) | "
        "train step, batch 128 (ms) | train steps/min |"
    )
    print()
    print(header)
    print("|" + "---|" * 7)
    for r in rows:
        print(
            f"| {r['net']} | {r['data']} | {r['note']} | {r['params']:,} | "
            f"{r['forward_ms_b256']:.1f} | {r['train_ms_b128']:.1f} | "
            f"{r['steps_per_min_b128']:,} |"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "repeats": args.repeats,
        "net_config_defaults": NetConfig().__dict__,
        "discriminator_config_defaults": DiscriminatorConfig().__dict__,
    }
    RESULTS.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
