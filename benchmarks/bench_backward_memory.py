"""Backward time and peak memory of a differentiable solve, versus the number of steps.

A loss ``mean(x_1^2)`` of an RK4 solve (8, 16, 32, 64 steps) of a small MLP velocity field
(2-D, batch 512, hidden 256 by default) is differentiated with respect to the network's
parameters by

* ``flowpost-checkpoint``: ``odeint(..., grad=True, checkpoint=True)`` (each step recomputed
  in backward);
* ``flowpost-autograd``: ``odeint(..., grad=True)`` (plain autograd keeps every activation);
* ``torchdiffeq-adjoint``: ``torchdiffeq.odeint_adjoint`` with the same fixed RK4 steps
  (torchdiffeq's RK4 is the 3/8 rule) forward and backward.

Memory: every (method, steps) case runs in a fresh subprocess. There, after the model and
input exist, the kernel's peak-RSS counter is reset (``/proc/self/clear_refs`` = 5), one
forward + backward is run (after a warm-up solve of 4 samples, 1 step, so that library code
paged in on first use is not counted), and the reported figure is
``VmHWM - VmRSS(before)``: the peak resident memory the solve and its backward added, as
the operating system saw it (it includes allocator slack, so it is an upper bound of what the
autograd graph needs).
Times: medians of the following repeats in that process, one thread, wall clock and
process CPU time. Rounds over all cases are interleaved.

The gradient of each method is compared with plain autograd's (relative L2 error over all
parameters): checkpointing must agree to round-off; the adjoint of a fixed-step solver is a
different discretisation of the continuous adjoint and only agrees up to the solver's error.

    python benchmarks/bench_backward_memory.py [--steps 8 16 32 64] [--rounds 2]

Writes ``benchmarks/results/flows_backward_memory.json``. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchdiffeq
from common import PlainMLP  # noqa: E402
from torch import Tensor, nn

from flowpost.flows.solvers import odeint
from flowpost.flows.timesteps import time_grid

RESULTS = Path(__file__).parent / "results" / "flows_backward_memory.json"
MODES = ("flowpost-checkpoint", "flowpost-autograd", "torchdiffeq-adjoint")


class TdqField(nn.Module):
    """torchdiffeq's interface f(t, x) with a scalar t."""

    def __init__(self, model: PlainMLP) -> None:
        super().__init__()
        self.model = model

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.model(x, t.expand(x.shape[0]))


def solve(mode: str, model: PlainMLP, x0: Tensor, steps: int) -> Tensor:
    if mode == "torchdiffeq-adjoint":
        f = TdqField(model)
        out = torchdiffeq.odeint_adjoint(
            f, x0, torch.tensor([0.0, 1.0]), method="rk4",
            options={"step_size": 1.0 / steps}, adjoint_params=tuple(model.parameters()),
        )  # fmt: skip
        return out[-1]
    return odeint(model, x0, time_grid(steps), method="rk4", grad=True,
                  checkpoint=mode == "flowpost-checkpoint")  # fmt: skip


def _status(key: str) -> int:
    m = re.search(key + r":\s+(\d+) kB", Path("/proc/self/status").read_text())
    assert m is not None
    return int(m.group(1))


def setup(batch: int, hidden: int) -> tuple[PlainMLP, Tensor]:
    torch.manual_seed(0)
    return PlainMLP(2, hidden), torch.randn(batch, 2)


def child(mode: str, steps: int, batch: int, hidden: int, repeats: int) -> dict[str, float]:
    torch.set_num_threads(1)
    model, x0 = setup(batch, hidden)
    # Warm-up on a tiny problem: the first call pages in library code and initialises the
    # autograd engine, which would otherwise be counted as memory of the solve.
    solve(mode, model, x0[:4], 1).pow(2).mean().backward()
    model.zero_grad(set_to_none=True)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    loss = solve(mode, model, x0, steps).pow(2).mean()
    loss.backward()
    peak_mb = (_status("VmHWM") - before) / 1024
    # after the RSS reading: this extra solve's freed memory must not count as 'before'
    saved_bytes = 0

    def pack(t: Tensor) -> Tensor:
        # bytes autograd keeps for backward: the memory that must stay flat in steps
        nonlocal saved_bytes
        saved_bytes += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        solve(mode, model, x0, steps).pow(2).mean()
    fw, bw, fw_cpu, bw_cpu = [], [], [], []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        c0, w0 = time.process_time(), time.perf_counter()
        loss = solve(mode, model, x0, steps).pow(2).mean()
        c1, w1 = time.process_time(), time.perf_counter()
        loss.backward()
        c2, w2 = time.process_time(), time.perf_counter()
        fw.append(w1 - w0)
        bw.append(w2 - w1)
        fw_cpu.append(c1 - c0)
        bw_cpu.append(c2 - c1)
    return {
        "peak_rss_mb": peak_mb,
        "saved_for_backward_mb": saved_bytes / 2**20,
        "forward_ms": 1e3 * statistics.median(fw),
        "backward_ms": 1e3 * statistics.median(bw),
        "forward_cpu_ms": 1e3 * statistics.median(fw_cpu),
        "backward_cpu_ms": 1e3 * statistics.median(bw_cpu),
    }


def grad_agreement(steps: int, batch: int, hidden: int) -> dict[str, float]:
    """Relative L2 error of each mode's parameter gradient against plain autograd."""
    grads = {}
    for mode in MODES:
        model, x0 = setup(batch, hidden)
        solve(mode, model, x0, steps).pow(2).mean().backward()
        grads[mode] = torch.cat([p.grad.flatten() for p in model.parameters()])  # type: ignore[union-attr]
    ref = grads["flowpost-autograd"]
    return {m: float((g - ref).norm() / ref.norm()) for m, g in grads.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of subprocesses")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per subprocess")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        res = child(args.child[0], int(args.child[1]), args.batch, args.hidden, args.repeats)
        print(json.dumps(res))
        return
    torch.set_num_threads(1)
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for steps in args.steps:
            for mode in MODES:
                cmd = [sys.executable, __file__, "--child", mode, str(steps),
                       "--batch", str(args.batch), "--hidden", str(args.hidden),
                       "--repeats", str(args.repeats)]  # fmt: skip
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs.setdefault((mode, steps), []).append(json.loads(out.stdout.splitlines()[-1]))
    agree = {s: grad_agreement(s, args.batch, args.hidden) for s in (args.steps[0], args.steps[-1])}
    rows = []
    for (mode, steps), rs in runs.items():
        row: dict[str, float | str] = {"mode": mode, "steps": steps}
        for k in rs[0]:
            row[k] = statistics.median(r[k] for r in rs)
        rows.append(row)
    rows.sort(key=lambda r: (int(r["steps"]), MODES.index(str(r["mode"]))))
    print(
        f"RK4, MLP 2-D hidden {args.hidden}, batch {args.batch}, 1 thread; medians over "
        f"{args.rounds} interleaved rounds x {args.repeats} repeats"
    )
    print(
        "| steps | method | saved for backward (MB) | peak RSS added (MB) | forward ms "
        "| backward ms | backward cpu ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['steps']} | {r['mode']} | {r['saved_for_backward_mb']:.2f} "
            f"| {r['peak_rss_mb']:.1f} | {r['forward_ms']:.0f} "
            f"| {r['backward_ms']:.0f} | {r['backward_cpu_ms']:.0f} |"
        )
    print("gradient relative L2 error vs plain autograd:")
    for s, a in agree.items():
        print(f"  {s} steps: " + ", ".join(f"{m} {v:.1e}" for m, v in a.items()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "config": {k: v for k, v in vars(args).items() if k != "child"},
        "torch": torch.__version__, "memory": "peak RSS added (VmHWM after reset - VmRSS before)",
        "rows": rows, "grad_rel_error_vs_autograd": {str(k): v for k, v in agree.items()},
    }, indent=2))  # fmt: skip
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
