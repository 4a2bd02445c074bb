"""Per-step cost of flowpost's trainer against a bare PyTorch loop doing exactly the same maths.

Both contenders work on the *same* objects, those of one real :class:`~flowpost.train.Trainer`
(flow-matching SFT): its network, AdamW, EMA and training tensors. Per step both draw a batch
of indices, Gaussian noise and uniform times from the global generator (in the same order),
form the linear path, regress the velocity with MSE, back-propagate, clip the gradient norm,
take the AdamW step, clear the gradients, update the EMA (with the trainer's warm-up of the
decay) and read the loss as a float (a loop that logs its loss does). Before timing, each task
checks that the two really compute the same thing: from the same weights and seed, ``k``
steps of each give bit-identical weights, EMA and optimiser moments.

Timing: after warm-up chunks (not counted), ``--pairs`` pairs of short chunks of steps, the
two contenders alternating in ABBA order (bare first in even pairs, the trainer first in odd
ones), so slow drifts of the machine and any order effect cancel. Each pair gives a ratio
(trainer time / bare time, CPU time of the process, one thread); the overhead is the median
ratio minus one, with a 95% bootstrap interval of that median over pairs, and, as a second
estimator, the ratio of the fastest chunks (the least disturbed ones). Wall-clock overheads
are reported beside.

    python benchmarks/bench_trainer_overhead.py --quick           # ~1-3 min on one core
    python benchmarks/bench_trainer_overhead.py [--tasks tiny mlp unet] [--pairs-scale 3]
        [--out benchmarks/results/trainer_overhead_abba.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from flowpost.train import Trainer
from flowpost.train.config import build_run_config

RESULTS = Path(__file__).parent / "results"

# name: (model section, dataset, batch, steps per chunk, pairs (full run), pairs (--quick))
TASKS: dict[str, tuple[dict[str, Any], str, int, int, int, int]] = {
    "tiny": ({"arch": "mlp", "hidden": 8, "depth": 1}, "moons", 8, 100, 120, 40),
    "mlp": ({"arch": "mlp", "hidden": 256, "depth": 4}, "moons", 256, 10, 100, 30),
    "unet": ({"arch": "unet", "channels": 32, "channel_mult": [1, 2]}, "digits", 128, 2, 60, 20),
}
LABELS = {
    "tiny": "tiny MLP (moons, 8 units, batch 8)",
    "mlp": "2-D MLP (moons, 256x4, batch 256)",
    "unet": "digits UNet (8x8, batch 128)",
}
CLIP = 1.0


def build_trainer(net_cfg: dict[str, Any], data_name: str, batch: int, out: str) -> Trainer:
    """A flow-matching SFT trainer on the CPU: no label dropout, constant lr, clipping at
    ``CLIP``, EMA, no checkpoints and no logging between the timed steps."""
    recipe = {
        "data": {"name": data_name},
        "model": net_cfg,
        "method": {"name": "flow_matching", "label_dropout": 0.0},
        "train": {"steps": 10**9, "batch_size": batch, "lr": 1e-3, "grad_clip": CLIP,
                  "ema_decay": 0.999, "checkpoint_every": 0, "log_every": 10**9,
                  "device": "cpu"},
        "eval": {"plots": False},
    }  # fmt: skip
    return Trainer.from_config(build_run_config(recipe), out, progress=False)


def bare_loop(trainer: Trainer, batch: int) -> Callable[[int], None]:
    """``run(k)``: ``k`` steps of a hand-written loop on the trainer's own objects."""
    net = trainer.method.role("policy")
    opt, ema = trainer.optimizers["policy"], trainer.emas["policy"]
    x, cond = trainer.train_x, trainer.train_cond
    assert x is not None
    n, shape = x.shape[0], (-1, *([1] * (x.ndim - 1)))
    params = [p for group in opt.param_groups for p in group["params"]]
    updates = [0]  # EMA updates so far (the decay warm-up), the bare loop's own count

    def run(k: int) -> None:
        for _ in range(k):
            index = torch.randint(0, n, (batch,))
            x1 = x[index]
            c = None if cond is None else cond[index]
            x0 = torch.randn_like(x1)
            t = torch.rand(batch)
            tt = t.view(shape)
            loss = (net((1 - tt) * x0 + tt * x1, t, c) - (x1 - x0)).pow(2).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP)
            opt.step()
            opt.zero_grad(set_to_none=True)
            updates[0] += 1
            ema.update(net, updates[0])
            float(loss.detach())

    return run


def state_of(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Weights, EMA weights and optimiser moments, flattened."""
    out = {f"net.{k}": v for k, v in trainer.method.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in trainer.emas["policy"].module.state_dict().items()})
    for i, s in trainer.optimizers["policy"].state.items():
        out.update({f"opt.{i}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
    return out


def same_maths(net_cfg: dict[str, Any], data_name: str, batch: int, steps: int = 5) -> bool:
    """Whether ``steps`` steps of the trainer and of the bare loop, from the same weights and
    seed, end bit-identical (weights, EMA, AdamW moments)."""
    states = []
    for contender in ("flowpost", "bare"):
        with tempfile.TemporaryDirectory() as tmp:
            trainer = build_trainer(net_cfg, data_name, batch, tmp)  # seeded: same weights
            torch.manual_seed(1234)
            if contender == "bare":
                bare_loop(trainer, batch)(steps)
            else:
                trainer.run_steps(steps)
            states.append(state_of(trainer))
    a, b = states
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def bootstrap_median(values: list[float], reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median of ``values``."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(reps))
    return medians[int(0.025 * reps)], medians[int(0.975 * reps) - 1]


def time_task(
    net_cfg: dict[str, Any], data_name: str, batch: int, chunk: int, pairs: int, warm: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(net_cfg, data_name, batch, tmp)
        runs: dict[str, Callable[[int], None]] = {
            "bare": bare_loop(trainer, batch),
            "flowpost": trainer.run_steps,
        }
        for _ in range(warm):
            for run in runs.values():
                run(chunk)
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        wall: dict[str, list[float]] = {name: [] for name in runs}
        for i in range(pairs):
            order = ("bare", "flowpost") if i % 2 == 0 else ("flowpost", "bare")
            gc.collect()
            for name in order:
                c0, w0 = time.process_time(), time.perf_counter()
                runs[name](chunk)
                cpu[name].append(time.process_time() - c0)
                wall[name].append(time.perf_counter() - w0)
    ratios = [f / b for f, b in zip(cpu["flowpost"], cpu["bare"])]
    wall_ratios = [f / b for f, b in zip(wall["flowpost"], wall["bare"])]
    lo, hi = bootstrap_median(ratios)
    return {
        "bare_steps_per_s": chunk / statistics.median(cpu["bare"]),
        "flowpost_steps_per_s": chunk / statistics.median(cpu["flowpost"]),
        "flowpost_overhead_pct": 100 * (statistics.median(ratios) - 1),
        "flowpost_overhead_ci95_pct": [100 * (lo - 1), 100 * (hi - 1)],
        "flowpost_overhead_min_pct": 100 * (min(cpu["flowpost"]) / min(cpu["bare"]) - 1),
        "flowpost_overhead_wall_pct": 100 * (statistics.median(wall_ratios) - 1),
        "pair_ratio_iqr": [
            statistics.quantiles(ratios, n=4)[0],
            statistics.quantiles(ratios, n=4)[2],
        ],
        "pairs": pairs,
        "steps_per_chunk": chunk,
        "warmup_chunks": warm,
        "bare_ms_per_step": 1000 * statistics.median(cpu["bare"]) / chunk,
    }


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--quick", action="store_true", help="fewer pairs (~1-3 min, one core)")
    parser.add_argument(
        "--pairs-scale", type=float, default=1.0, help="multiply every task's number of pairs"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed chunks per contender")
    parser.add_argument("--out", type=Path, default=None, help="the JSON to write")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = args.out or RESULTS / (
        "trainer_overhead_abba_quick.json" if args.quick else "trainer_overhead_abba.json"
    )
    load_before = list(os.getloadavg())
    started = time.perf_counter()
    results: dict[str, Any] = {}
    for key in args.tasks:
        net_cfg, data_name, batch, chunk, pairs, quick_pairs = TASKS[key]
        pairs = max(4, round((quick_pairs if args.quick else pairs) * args.pairs_scale))
        if not same_maths(net_cfg, data_name, batch):
            raise SystemExit(f"{key}: the trainer and the bare loop do not compute the same")
        r = time_task(net_cfg, data_name, batch, chunk, pairs, args.warmup)
        r["same_maths"] = True
        results[LABELS[key]] = r
        lo, hi = r["flowpost_overhead_ci95_pct"]
        print(
            f"{LABELS[key]:36s} bare {r['bare_steps_per_s']:8.1f}/s  flowpost "
            f"{r['flowpost_steps_per_s']:8.1f}/s  overhead {r['flowpost_overhead_pct']:+5.1f}% "
            f"[{lo:+.1f}, {hi:+.1f}]  min-based {r['flowpost_overhead_min_pct']:+5.1f}%  "
            f"wall {r['flowpost_overhead_wall_pct']:+5.1f}%",
            flush=True,
        )
    info = machine()
    info["loadavg_before"] = load_before
    payload = {
        "method": "ABBA pairs of chunks on shared objects; overhead = median per-pair CPU-time "
        "ratio - 1, 95% bootstrap CI of the median; min-based = fastest chunk ratio - 1",
        "quick": args.quick,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": info,
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"load average {load_before[0]:.1f} -> {info['loadavg'][0]:.1f}; "
          f"{payload['seconds']} s; wrote {out}")  # fmt: skip


if __name__ == "__main__":
    main()
