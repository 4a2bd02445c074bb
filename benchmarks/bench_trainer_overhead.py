"""Steps per second of flowpost's SFT (the full trainer) vs a bare PyTorch loop doing the same
arithmetic, vs Meta's ``flow_matching`` path + loss, vs torchcfm's matcher.

Every contender does, per step: draw a batch of indices, Gaussian noise and uniform times,
build the linear path, regress the velocity with MSE, back-propagate, clip the gradient norm
at 1, take an AdamW step and update an EMA of the weights. They run interleaved, round after
round, on one thread; the table gives the median steps/s and flowpost's overhead relative to
the bare loop (positive = slower). Rates use the process's CPU time (one thread), which
other jobs on a shared machine disturb far less than wall-clock time.

    python benchmarks/bench_trainer_overhead.py [--rounds 3] [--steps-mlp 400] [--steps-unet 60]
        [--contenders bare flowpost meta torchcfm] [--out benchmarks/results/....json]
        [--shared]  # the bare loop on the trainer's own objects, alternating in one process
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from flowpost.data import DataConfig, load_data
from flowpost.nets.config import NetConfig
from flowpost.nets.factory import build_velocity_net
from flowpost.train import Trainer
from flowpost.train.config import build_run_config
from flowpost.train.ema import EMA

RESULTS = Path(__file__).parent / "results" / "trainer_overhead.json"


def bare_loop(net_cfg: dict, data_name: str, steps: int, batch: int, target: str) -> float:
    """Steps/s of a hand-written loop; ``target`` picks how (x_t, u) are formed."""
    torch.manual_seed(0)
    split = load_data(DataConfig(name=data_name))
    x_data, spec = split.train.x, split.train.spec
    net = build_velocity_net(NetConfig(**net_cfg), spec)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0)
    ema = EMA(net, 0.999)
    params = list(net.parameters())
    form: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    if target == "meta":
        from flow_matching.path import AffineProbPath
        from flow_matching.path.scheduler import CondOTScheduler

        path = AffineProbPath(scheduler=CondOTScheduler())

        def form(x0, x1, t):  # type: ignore[no-redef]
            s = path.sample(x_0=x0, x_1=x1, t=t)
            return s.x_t, s.dx_t
    elif target == "torchcfm":
        from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

        matcher = ConditionalFlowMatcher(sigma=0.0)

        def form(x0, x1, t):  # type: ignore[no-redef]
            _, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1, t=t)
            return xt, ut
    else:

        def form(x0, x1, t):  # type: ignore[no-redef]
            tt = t.view(-1, *([1] * (x1.ndim - 1)))
            return (1 - tt) * x0 + tt * x1, x1 - x0

    def one_step() -> None:
        x1 = x_data[torch.randint(0, x_data.shape[0], (batch,))]
        x0 = torch.randn_like(x1)
        t = torch.rand(batch)
        xt, u = form(x0, x1, t)
        loss = (net(xt, t, None) - u).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(net)
        float(loss.detach())  # flowpost logs every loss value; so does the bare loop

    for _ in range(5):
        one_step()
    start = time.process_time()
    for _ in range(steps):
        one_step()
    return steps / (time.process_time() - start)


def flowpost_loop(net_cfg: dict, data_name: str, steps: int, batch: int) -> float:
    """Steps/s of the real trainer (SFT config), timed over its training loop only."""
    recipe = {
        "data": {"name": data_name},
        "model": net_cfg,
        "method": {"name": "flow_matching", "label_dropout": 0.0},
        "train": {
            "steps": steps + 5,
            "batch_size": batch,
            "lr": 1e-3,
            "grad_clip": 1.0,
            "ema_decay": 0.999,
            "checkpoint_every": 0,
            "log_every": 10**9,
        },
        "eval": {"plots": False},
    }
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer.from_config(build_run_config(recipe), tmp, progress=False)
        # time the loop exactly as the trainer runs it, without the final evaluation
        trainer.config.train.steps = 5
        trainer_fit_loop(trainer)
        trainer.config.train.steps = steps + 5
        start = time.process_time()
        trainer_fit_loop(trainer)
        return steps / (time.process_time() - start)


def trainer_fit_loop(trainer: Trainer) -> None:
    trainer.run_steps(trainer.config.train.steps - trainer.step)


def shared_objects(
    net_cfg: dict, data_name: str, steps: int, batch: int, rounds: int
) -> tuple[float, float]:
    """Steps/s of the bare loop and of the trainer on the *same* network, optimiser, EMA and
    data (the trainer's own), alternating in chunks of ``steps`` in one process: only the
    code of a step differs, not the objects it works on. Medians over ``rounds`` chunks each."""
    recipe = {
        "data": {"name": data_name},
        "model": net_cfg,
        "method": {"name": "flow_matching", "label_dropout": 0.0},
        "train": {"steps": 10**9, "batch_size": batch, "lr": 1e-3, "grad_clip": 1.0,
                  "ema_decay": 0.999, "checkpoint_every": 0, "log_every": 10**9},
        "eval": {"plots": False},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer.from_config(build_run_config(recipe), tmp, progress=False)
        net, ema = trainer.method.role("policy"), trainer.emas["policy"]
        opt, x_data = trainer.optimizers["policy"], trainer.train_x
        assert x_data is not None
        params = list(net.parameters())

        def bare(k: int) -> None:
            for _ in range(k):
                x1 = x_data[torch.randint(0, x_data.shape[0], (batch,))]
                x0 = torch.randn_like(x1)
                t = torch.rand(batch)
                tt = t.view(-1, *([1] * (x1.ndim - 1)))
                loss = (net((1 - tt) * x0 + tt * x1, t, None) - (x1 - x0)).pow(2).mean()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                ema.update(net)
                float(loss.detach())

        runs: dict[str, Callable[[int], None]] = {"bare": bare, "flowpost": trainer.run_steps}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for run in runs.values():
            run(5)
        for _ in range(rounds):
            for name, run in runs.items():
                start = time.process_time()
                run(steps)
                times[name].append(steps / (time.process_time() - start))
    return statistics.median(times["bare"]), statistics.median(times["flowpost"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps-mlp", type=int, default=400)
    parser.add_argument("--steps-unet", type=int, default=60)
    parser.add_argument(
        "--contenders",
        nargs="+",
        default=["bare", "flowpost", "meta", "torchcfm"],
        choices=["bare", "flowpost", "meta", "torchcfm"],
        help="which loops to time (bare is always included: overheads are relative to it)",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["mlp", "unet"],
        choices=["tiny", "mlp", "unet"],
        help="tiny: an 8-unit MLP at batch 8, whose step is almost all fixed per-step cost "
        "(Python, optimiser and EMA calls), so the trainer's own cost shows there undiluted",
    )
    parser.add_argument("--steps-tiny", type=int, default=1000)
    parser.add_argument(
        "--shared",
        action="store_true",
        help="time the bare loop and the trainer on the same objects (the trainer's network, "
        "optimiser, EMA and data), alternating chunks of 1/10 of the steps in one process",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tasks = {
        "tiny MLP (moons, 8 units, batch 8)": (
            {"arch": "mlp", "hidden": 8, "depth": 1},
            "moons",
            args.steps_tiny,
            8,
        ),
        "2-D MLP (moons, batch 256)": (
            {"arch": "mlp", "hidden": 256, "depth": 4},
            "moons",
            args.steps_mlp,
            256,
        ),
        "digits UNet (8x8, batch 128)": (
            {"arch": "unet", "channels": 32, "channel_mult": [1, 2]},
            "digits",
            args.steps_unet,
            128,
        ),
    }
    contenders = ["bare", *[c for c in args.contenders if c != "bare"]]
    keys = {"tiny": "tiny MLP", "mlp": "2-D MLP", "unet": "digits UNet"}
    chosen = tuple(keys[t] for t in args.tasks)
    tasks = {name: task for name, task in tasks.items() if name.startswith(chosen)}
    results: dict[str, dict[str, float]] = {}
    if args.shared:
        for task, (net_cfg, data_name, steps, batch) in tasks.items():
            chunk = max(1, steps // 10)
            bare, ours = shared_objects(net_cfg, data_name, chunk, batch, 10 * args.rounds)
            results[task] = {
                "bare_steps_per_s": bare,
                "flowpost_steps_per_s": ours,
                "flowpost_overhead_pct": 100 * (bare / ours - 1),
                "rounds": 10 * args.rounds,
                "steps": chunk,
                "shared_objects": True,
            }
            print(f"{task:32s} bare {bare:10.1f}  flowpost {ours:10.1f}  "
                  f"{results[task]['flowpost_overhead_pct']:+.1f}%")  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"threads": 1, "results": results}, indent=1))
        print(f"wrote {args.out}")
        return
    for task, (net_cfg, data_name, steps, batch) in tasks.items():
        samples: dict[str, list[float]] = {c: [] for c in contenders}
        for _ in range(args.rounds):
            for c in contenders:
                if c == "flowpost":
                    rate = flowpost_loop(net_cfg, data_name, steps, batch)
                else:
                    rate = bare_loop(net_cfg, data_name, steps, batch, c)
                samples[c].append(rate)
        med = {c: statistics.median(v) for c, v in samples.items()}
        results[task] = {
            **{f"{c}_steps_per_s": med[c] for c in contenders},
            **{
                f"{c}_overhead_pct": 100 * (med["bare"] / med[c] - 1)
                for c in contenders
                if c != "bare"
            },
            "rounds": args.rounds,
            "steps": steps,
        }
    print(f"{'task':32s} " + " ".join(f"{c:>10s}" for c in contenders) + "   overhead vs bare")
    for task, r in results.items():
        rates = " ".join(f"{r[f'{c}_steps_per_s']:10.1f}" for c in contenders)
        over = ", ".join(f"{c} {r[f'{c}_overhead_pct']:+.1f}%" for c in contenders[1:])
        print(f"{task:32s} {rates}   {over}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": 1, "results": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
