"""Sampling time per solver step: flowpost vs torchdiffeq vs Meta's flow_matching.

The same small MLP velocity field (2-D data, batch 1024 by default) is integrated from
t = 0 to t = 1 with a fixed number of steps by

* flowpost: ``flowpost.flows.solvers.sample(model, x0, nfe, method)``;
* torchdiffeq: ``torchdiffeq.odeint(f, x0, [0, 1], method, options={"step_size": 1/steps})``
  under ``torch.no_grad`` (``heun`` is its ``heun2``; its ``rk4`` is the 3/8-rule variant,
  also 4 evaluations per step);
* flow_matching: ``flow_matching.solver.ODESolver(model).sample(x0, step_size=1/steps,
  method=...)``, which calls torchdiffeq underneath.

The two peers pass a scalar time to the field; their adapters expand it to ``(B,)`` (one
``expand`` call, part of their measured cost). Before timing, every library's number of
field evaluations per solve is counted and its result compared with flowpost's.

Repeats are interleaved (library A, B, C, A, B, C, ...) so that load changes on a shared
machine hit all of them alike; the table reports medians of per-step times. ``cpu`` is the
process CPU time (one thread), ``wall`` the wall-clock time. ``overhead`` is the per-step time
minus the time of the step's network evaluations alone (measured the same way).

    python benchmarks/bench_solvers.py [--batches 1024 16] [--hidden 128] [--steps 32]
                                       [--repeats 15]

Batch 1024 shows the cost in a realistic setting (the network dominates); batch 16 makes the
network cheap, so the solvers' own per-step Python overhead shows.

Writes ``benchmarks/results/flows_solvers.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchdiffeq
from common import PlainMLP  # noqa: E402
from flow_matching.solver import ODESolver
from flow_matching.utils import ModelWrapper
from torch import Tensor

from flowpost.flows.solvers import sample

RESULTS = Path(__file__).parent / "results" / "flows_solvers.json"
METHODS = {"euler": ("euler", 1), "midpoint": ("midpoint", 2), "heun": ("heun2", 2),
           "rk4": ("rk4", 4)}  # fmt: skip


class FMWrapper(ModelWrapper):
    """flow_matching's model interface: forward(x, t, **extras) with a scalar t."""

    def forward(self, x: Tensor, t: Tensor, **extras: object) -> Tensor:
        return self.model(x, t.expand(x.shape[0]))


def runners(model: PlainMLP, x0: Tensor, steps: int) -> dict[str, dict[str, Callable[[], Tensor]]]:
    span = torch.tensor([0.0, 1.0])
    fm = ODESolver(velocity_model=FMWrapper(model))
    b = x0.shape[0]

    def tdq_field(t: Tensor, x: Tensor) -> Tensor:
        return model(x, t.expand(b))

    out: dict[str, dict[str, Callable[[], Tensor]]] = {}
    for name, (tdq_name, per) in METHODS.items():

        def fp(name: str = name, per: int = per) -> Tensor:
            return sample(model, x0, steps * per, name)

        def tdq(tdq_name: str = tdq_name) -> Tensor:
            with torch.no_grad():
                return torchdiffeq.odeint(tdq_field, x0, span, method=tdq_name,
                                          options={"step_size": 1.0 / steps})[-1]  # fmt: skip

        def fmr(tdq_name: str = tdq_name) -> Tensor:
            return fm.sample(x0, step_size=1.0 / steps, method=tdq_name, time_grid=span)

        out[name] = {"flowpost": fp, "torchdiffeq": tdq, "flow_matching": fmr}
    return out


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def measure(model: PlainMLP, batch: int, steps: int, repeats: int) -> dict[str, object]:
    """Checks and interleaved timings for one batch size."""
    x0 = torch.randn(batch, 2)
    t_b = torch.full((batch,), 0.5)
    table = runners(model, x0, steps)

    # Work done and agreement, before timing.
    checks: dict[str, dict[str, dict[str, float]]] = {}
    for m, libs in table.items():
        ref = libs["flowpost"]()
        checks[m] = {}
        for lib, fn in libs.items():
            model.calls = 0
            out = fn()
            checks[m][lib] = {"nfe": model.calls, "max_abs_diff_vs_flowpost":
                              float((out - ref).abs().max())}  # fmt: skip

    Times = dict[str, dict[str, list[float]]]
    cpu: Times = {m: {k: [] for k in libs} for m, libs in table.items()}
    wall: Times = {m: {k: [] for k in libs} for m, libs in table.items()}
    net_cpu, net_wall = [], []
    with torch.no_grad():
        for _ in range(2):  # warm-up
            for libs in table.values():
                for fn in libs.values():
                    fn()
        for _ in range(repeats):
            c, w = timed(lambda: [model(x0, t_b) for _ in range(steps)])
            net_cpu.append(c / steps)
            net_wall.append(w / steps)
            for m, libs in table.items():
                for lib, fn in libs.items():
                    c, w = timed(fn)
                    cpu[m][lib].append(c / steps)
                    wall[m][lib].append(w / steps)

    us = 1e6
    net_c, net_w = statistics.median(net_cpu) * us, statistics.median(net_wall) * us
    rows = []
    for m, (_, per) in METHODS.items():
        for lib in table[m]:
            c = statistics.median(cpu[m][lib]) * us
            w = statistics.median(wall[m][lib]) * us
            rows.append({
                "method": m, "library": lib, "nfe_per_solve": checks[m][lib]["nfe"],
                "max_abs_diff_vs_flowpost": checks[m][lib]["max_abs_diff_vs_flowpost"],
                "cpu_us_per_step": c, "wall_us_per_step": w,
                "cpu_overhead_us_per_step": c - per * net_c,
                "wall_overhead_us_per_step": w - per * net_w,
            })  # fmt: skip
    return {"batch": batch, "net_eval_cpu_us": net_c, "net_eval_wall_us": net_w, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1024, 16])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = PlainMLP(2, args.hidden).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    results = []
    for batch in args.batches:
        r = measure(model, batch, args.steps, args.repeats)
        results.append(r)
        print(
            f"\nMLP 2-D, hidden {args.hidden}, batch {batch}, {args.steps} steps, "
            f"{args.repeats} interleaved repeats, 1 thread; one network evaluation: "
            f"{r['net_eval_cpu_us']:.0f} us cpu / {r['net_eval_wall_us']:.0f} us wall"
        )
        print(
            "| method | library | NFE/solve | cpu us/step | wall us/step "
            "| cpu overhead us/step | max diff vs flowpost |"
        )
        print("|---|---|---|---|---|---|---|")
        for row in r["rows"]:  # type: ignore[attr-defined]
            print(
                f"| {row['method']} | {row['library']} | {row['nfe_per_solve']} | "
                f"{row['cpu_us_per_step']:.0f} | {row['wall_us_per_step']:.0f} | "
                f"{row['cpu_overhead_us_per_step']:.0f} | "
                f"{row['max_abs_diff_vs_flowpost']:.1e} |"
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "config": vars(args), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "threads": 1,
        "results": results,
    }, indent=2))  # fmt: skip
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
