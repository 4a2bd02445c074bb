"""Adversarial Flow Models (AF) measured through the trainer and the command line.

Every number comes from ``flowpost train`` / ``flowpost eval`` runs (no training loop of its
own): a *cell* is one (task, contender, seed) run folder under ``--work``; the results JSON is
rewritten after every cell, and a rerun skips the cells it already holds (resumable, cell by
cell). ``--rescore`` re-evaluates the kept run folders with the current ``flowpost eval``
(e.g. after new metrics land) without training again.

Experiments (each writes ``benchmarks/results/af_<exp>.json`` and prints a Markdown table):

* ``suite``: every 2-D toy; AF at 1 NFE (``recipes/vectors/af.yaml`` as it is) against a
  flow-matching model with the same network and the same number of iterations, sampled with
  1, 2 and 4 Euler steps; and, on the ``--nfe-tasks``, AF trained for k = 2 and 4 steps
  (``method.nfe=k``, everything else as the recipe). W2 beside the diversity metrics
  ``flowpost eval`` reports.
* ``diagnose``: why AF's 1-NFE modes came out narrow: the kept samples of ``flowpost train``
  runs of ``recipes/8gaussians/af_4nfe.yaml`` with the overrides in ``DIAGNOSIS``, scored.
* ``throughput``: samples/s of ``generate(nfe=1)`` vs one raw forward pass (no training).

    python benchmarks/bench_adversarial.py suite --seeds 0 1 2 --nfe-tasks 8gaussians
    python benchmarks/bench_adversarial.py suite --report      # the table from the JSON only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import flowpost  # noqa: E402  (imported by bench_af_nfe from here too)

MIXTURES = ("mixture1d", "8gaussians")
RESULTS = ROOT / "benchmarks" / "results"
AF_RECIPE = "recipes/vectors/af.yaml"
FM_RECIPE = "recipes/8gaussians/pretrain.yaml"  # the repository's flow-matching settings
TASKS_2D = ("8gaussians", "moons", "checkerboard", "spirals", "rings")
FM_NFES = (1, 2, 4)
# what the tables show, in this order, when ``flowpost eval`` reports it
COLUMNS = (
    "w2",
    "robust_spread",
    "near_mode",
    "mode_spread_ratio",
    "between_modes",
    "density",
    "coverage",
)


# ------------------------------------------------------------------------------ the CLI


def recipe_steps(recipe: str) -> dict[str, Any]:
    """The model section and train.steps of a recipe (the FM baseline copies them)."""
    import yaml

    data = yaml.safe_load((ROOT / recipe).read_text())
    return {"model": data.get("model", {}), "steps": data.get("train", {}).get("steps")}


def train_command(
    task: str, contender: str, seed: int, out: Path, args: argparse.Namespace
) -> list[str]:
    """The ``flowpost train`` arguments of one cell."""
    common = [
        "--out",
        str(out),
        "--no-progress",
        "--set",
        f"data.name={task}",
        "--set",
        "data.path=null",
    ]
    common += ["--set", f"train.seed={seed}", "--set", "eval.plots=false"]
    if args.steps:
        common += ["--set", f"train.steps={args.steps}"]
    for extra in args.set or []:
        common += ["--set", extra]
    if contender.startswith("af"):
        k = int(contender[2:])
        return ["train", AF_RECIPE, *common, "--set", f"method.nfe={k}", "--set", f"eval.nfe={k}"]
    af = recipe_steps(AF_RECIPE)
    sets = [f"model.{key}={json.dumps(value)}" for key, value in af["model"].items()]
    if not args.steps and af["steps"]:
        sets.append(f"train.steps={af['steps']}")
    sets += ["eval.nfe=1", f"eval.extra_nfe={list(FM_NFES[1:])}"]
    return ["train", FM_RECIPE, *common, *[x for s in sets for x in ("--set", s)]]


def train_seconds(out: Path) -> float | None:
    """Wall-clock training time the run logged (its last ``time_s``)."""
    last = None
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "time_s" in rec:
            last = float(rec["time_s"])
    return last


def nfes_of(contender: str) -> tuple[int, ...]:
    return (int(contender[2:].split("-")[0]),) if contender.startswith("af") else FM_NFES


def score(out: Path, nfe: int, rescore: bool) -> dict[str, float]:
    """The metrics at ``nfe``: from the run's ``summary.json`` (the trainer's final
    evaluation, ``eval.nfe`` and ``eval.extra_nfe``), or with ``rescore`` from
    ``flowpost eval <run> --nfe k --json``; plus, for mixtures, the af-diversity acceptance
    check's robust within-mode spread of 4000 ``flowpost sample`` draws."""
    if rescore:
        metrics: dict[str, float] = json.loads(
            flowpost("eval", str(out), "--nfe", str(nfe), "--json")
        )
    else:
        summary = json.loads((out / "summary.json").read_text())
        prefix = "" if int(summary["nfe"]) == nfe else f"nfe{nfe}/"
        metrics = {
            k[len(prefix) :]: v
            for k, v in summary.items()
            if k.startswith(prefix) and "/" not in k[len(prefix) :]
        }
        metrics = {k: v for k, v in metrics.items() if k not in ("nfe", "solver", "step")}
    if task_of(out) in MIXTURES:
        sample_path = out / f"samples_nfe{nfe}.npy"
        args = ("--nfe", str(nfe), "--n", "4000", "--seed", "3", "--out", str(sample_path))
        flowpost("sample", str(out), *args)
        metrics.update(robust_mode_spread(sample_path, task_of(out)))
    return metrics


def task_of(run: Path) -> str:
    import yaml

    name: str = yaml.safe_load((run / "config.yaml").read_text())["data"]["name"]
    return name


def robust_mode_spread(sample_path: Path, task: str) -> dict[str, float]:
    """For mixtures: the median over modes of 1.4826 * MAD of the coordinates of the samples
    within 0.3 of their mode (8gaussians: 0.10 for the data), and the fraction of samples
    within 0.3 of a mode: the formula of the af-diversity acceptance check."""
    import numpy as np

    from flowpost.data.toys import mode_info

    x = np.load(sample_path).reshape(4000, -1)
    centers = mode_info(task).centers.numpy().reshape(-1, x.shape[1])
    d = np.linalg.norm(x[:, None] - centers[None], axis=2)
    idx, near = d.argmin(1), d.min(1) < 0.3
    spreads = [
        1.4826 * float(np.median(np.abs(x[(idx == k) & near] - centers[k])))
        for k in range(len(centers))
        if ((idx == k) & near).sum() > 2
    ]
    spread = float(np.median(spreads)) if len(spreads) == len(centers) else 0.0
    return {"robust_spread": spread, "near_mode": float(near.mean())}


def data_floor(task: str) -> float:
    """W2 between two independent 2000-sample sets of the task (the metric's noise floor)."""
    import torch

    from flowpost.data.toys import sample_toy
    from flowpost.eval.metrics import w2

    a = sample_toy(task, 2000, generator=torch.Generator().manual_seed(11))
    b = sample_toy(task, 2000, generator=torch.Generator().manual_seed(12))
    return w2(a, b)


# ------------------------------------------------------------------------------ results file


def load_results(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    if path.is_file():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    return {"config": config, "floor_w2": {}, "cells": {}}


def save_results(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def save_cell(path: Path, config: dict[str, Any], key: str, cell: dict[str, Any]) -> None:
    """Add one cell to the results file as it is on disk now (so that several bench
    processes working on different cells do not overwrite each other's)."""
    data = load_results(path, config)
    data["cells"][key] = cell
    save_results(path, data)


def run_cells(
    name: str, cells: list[tuple[str, str, int]], args: argparse.Namespace
) -> dict[str, Any]:
    path = RESULTS / f"af_{name}.json"
    config = {
        "af_recipe": AF_RECIPE,
        "fm_recipe": FM_RECIPE,
        "steps_override": args.steps,
        "eval": "flowpost eval --nfe k --json (2000 samples vs the 2000 held-out points)",
    }
    data = load_results(path, config)
    work = Path(args.work)
    cells = [c for c in cells if not args.only or c[1] in args.only]
    for task in sorted({c[0] for c in cells}):
        if task not in data["floor_w2"]:
            data["floor_w2"][task] = data_floor(task)
    save_results(path, {**load_results(path, config), "floor_w2": data["floor_w2"]})
    for task, contender, seed in cells:
        key = f"{task}/{contender}{args.tag}/{seed}"
        data = load_results(path, config)
        out = work / task / f"{contender}{args.tag}-s{seed}"
        if key in data["cells"] and not args.rescore:
            continue
        if args.rescore and not (out / "config.yaml").is_file():
            continue
        if not args.rescore:
            cmd = train_command(task, contender, seed, out, args)
            if not (out / "summary.json").is_file():  # a finished run folder is reused
                if out.exists():
                    shutil.rmtree(out)  # an interrupted cell starts again
                flowpost(*cmd)
            cell: dict[str, Any] = {"command": "flowpost " + " ".join(cmd)}
            cell["train_s"] = train_seconds(out)
        else:
            cell = data["cells"].get(key, {})
        cell["metrics"] = {str(k): score(out, k, args.rescore) for k in nfes_of(contender)}
        save_cell(path, config, key, cell)
        w = {k: round(v["w2"], 3) for k, v in cell["metrics"].items()}
        print(f"{key}: W2 {w} ({cell.get('train_s', '-')} s)", flush=True)
    return load_results(path, config)


# ------------------------------------------------------------------------------ tables


def summarise(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}"


def gather(data: dict[str, Any], task: str, contender: str, nfe: int, key: str) -> list[float]:
    out = []
    for cell_key, cell in data["cells"].items():
        t, c, _ = cell_key.split("/")
        if t == task and c == contender:
            value = cell["metrics"].get(str(nfe), {}).get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                out.append(float(value))
    return out


def table(data: dict[str, Any], rows: list[tuple[str, str, int]], columns: tuple[str, ...]) -> str:
    """Markdown: one line per (task, contender, nfe), mean ± std over seeds."""
    present = [c for c in columns if any(gather(data, t, m, k, c) for t, m, k in rows)]
    head = "| task | model | NFE | seeds | " + " | ".join(present) + " |"
    lines = [head, "|" + "---|" * (4 + len(present))]
    for task, contender, nfe in rows:
        n = len(gather(data, task, contender, nfe, "w2"))
        if not n:
            continue
        label = "AF" if contender.startswith("af") else "flow matching (Euler)"
        if contender.startswith("af") and contender != "af1":
            k, _, tag = contender[2:].partition("-")
            label = f"AF (k = {k}{', ' + tag if tag else ''})"
        cells = [summarise(gather(data, task, contender, nfe, c)) for c in present]
        lines.append(f"| {task} | {label} | {nfe} | {n} | " + " | ".join(cells) + " |")
    floors = ", ".join(f"{t} {v:.3f}" for t, v in sorted(data["floor_w2"].items()))
    lines.append("")
    lines.append(f"W2 between two independent 2000-sample data sets: {floors}.")
    return "\n".join(lines)


def verdict(data: dict[str, Any], tasks: tuple[str, ...]) -> list[str]:
    """AF@1 against FM@1 and FM@2, per task, on the mean W2 over seeds."""
    lines = []
    for task in tasks:
        af = gather(data, task, "af1", 1, "w2")
        fm1 = gather(data, task, "fm", 1, "w2")
        fm2 = gather(data, task, "fm", 2, "w2")
        if not (af and fm1 and fm2):
            continue
        a, f1, f2 = (statistics.fmean(v) for v in (af, fm1, fm2))
        ok = a < f1 and a < f2
        lines.append(
            f"{task}: AF@1 {a:.3f} vs FM@1 {f1:.3f}, FM@2 {f2:.3f}: "
            f"{'AF@1 better than both' if ok else 'AF@1 does NOT beat both'}"
        )
    return lines


# ------------------------------------------------------------------------------ experiments


def suite_cells(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """Seed by seed (so a partial run still covers every task): AF@1 and flow matching on
    every task, then AF trained for 2 and 4 steps on the ``--nfe-tasks``."""
    tasks = tuple(args.tasks or TASKS_2D)
    cells = []
    for seed in args.seeds:
        cells += [(t, c, seed) for t in tasks for c in ("af1", "fm")]
        cells += [(t, c, seed) for t in args.nfe_tasks for c in ("af2", "af4")]
    return cells


def exp_suite(args: argparse.Namespace) -> None:
    tasks = tuple(args.tasks or TASKS_2D)
    path = RESULTS / "af_suite.json"
    data = (
        json.loads(path.read_text()) if args.report else run_cells("suite", suite_cells(args), args)
    )
    rows = [(t, c, k) for t in tasks for c in ("fm", "af1") for k in nfes_of(c)]
    print("AF at 1 NFE against flow matching (same network, same iterations)\n")
    print(table(data, rows, COLUMNS))
    print("\n".join(verdict(data, tasks)))
    afs = sorted({k.split("/")[1] for k in data["cells"] if k.split("/")[1].startswith("af")})
    rows = [(t, c, k) for t in args.nfe_tasks for c in afs for k in nfes_of(c)]
    print("\nAF trained for k steps, sampled with k steps\n")
    print(table(data, rows, COLUMNS))


# the diagnosis runs: flowpost train recipes/8gaussians/af_4nfe.yaml + these overrides (run
# before the key rename of d49bc8c: method.nfe/ot_weight were method.steps/lambda_ot), then
# flowpost sample <run> --nfe k --n 4000 --seed 3 --out <work>/<name>.npy
DIAGNOSIS = {
    "base1": "method.nfe=1 eval.nfe=1 (as the recipe: OT 0.2 -> 0.005, lr 3e-4 constant)",
    "ema0": "method.nfe=1 eval.nfe=1 train.ema_decay=0 (the live generator)",
    "otc02": "method.nfe=1 eval.nfe=1 method.ot_schedule=constant method.ot_weight=0.2",
    "otc02ema0": "as otc02, train.ema_decay=0 (live)",
    "otc02cos": "as otc02, train.schedule=cosine (lr to 10 %)",
    "c1": "as otc02, train.schedule=cosine train.min_lr_ratio=0.01",
    "basecos": "method.nfe=1 eval.nfe=1 train.schedule=cosine train.min_lr_ratio=0.02",
    "c4": "as c1 with method.nfe=4 eval.nfe=4",
}


def exp_diagnose(args: argparse.Namespace) -> None:
    """Score the diagnosis runs' kept samples (``--work``/<name>.npy, 4000 each) with
    ``flowpost.eval.evaluate_samples`` against the 8gaussians held-out set, and the
    acceptance check's robust spread."""
    import numpy as np
    import torch

    from flowpost.data import DataConfig, load_data
    from flowpost.eval import evaluate_samples

    ref = load_data(DataConfig(name="8gaussians")).heldout.x
    rows: dict[str, Any] = {}
    for name, what in DIAGNOSIS.items():
        path = Path(args.work) / f"{name}.npy"
        if not path.is_file():
            continue
        x = torch.from_numpy(np.load(path)).float()
        m = evaluate_samples(x[:2000], ref[:2000], dataset="8gaussians")
        m.update(robust_mode_spread(path, "8gaussians"))
        rows[name] = {"overrides": what, "metrics": m}
        print(
            f"{name:10s} W2 {m['w2']:.3f} robust spread {m['robust_spread']:.3f} "
            f"near {m['near_mode']:.3f} spread ratio {m['mode_spread_ratio']:.2f}  ({what})"
        )
    save_results(
        RESULTS / "af_diagnose.json",
        {
            "recipe": "recipes/8gaussians/af_4nfe.yaml",
            "floor_w2": data_floor("8gaussians"),
            "runs": rows,
        },
    )


def exp_throughput(args: argparse.Namespace) -> None:
    import torch

    from flowpost.data.base import DataSpec
    from flowpost.methods.adversarial import AdversarialFlow, AFConfig
    from flowpost.nets.config import NetConfig

    torch.manual_seed(0)
    net = NetConfig(arch="mlp", hidden=args.width, depth=args.depth)
    method = AdversarialFlow(AFConfig(), DataSpec((2,)), net).eval()
    gen = method.generator
    z = torch.randn(args.batch, 2)
    t0, t1 = torch.zeros(args.batch), torch.ones(args.batch)
    rows = []

    def bench(fn: Callable[[], Any]) -> float:
        for _ in range(5):
            fn()
        start = time.perf_counter()
        for _ in range(args.reps):
            fn()
        return args.reps * args.batch / (time.perf_counter() - start)

    with torch.inference_mode():
        for _ in range(args.rounds):  # interleaved rounds, medians
            raw = bench(lambda: gen(z, t0, None, t1))
            af = bench(lambda: method.generate(z, nfe=1))
            rows.append((raw, af))
    raw_m = sorted(r[0] for r in rows)[len(rows) // 2]
    af_m = sorted(r[1] for r in rows)[len(rows) // 2]
    ratio = raw_m / af_m
    print(
        f"raw forward: {raw_m:,.0f} samples/s; AF generate(nfe=1): {af_m:,.0f}; ratio {ratio:.3f}"
    )
    save_results(
        RESULTS / "af_throughput.json",
        {
            "config": {k: v for k, v in vars(args).items() if k != "func"},
            "raw_samples_per_s": raw_m,
            "af_samples_per_s": af_m,
            "time_ratio": ratio,
            "rounds": rows,
        },
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("exp", choices=["suite", "diagnose", "throughput"])
    p.add_argument("--tasks", nargs="*", help="2-D toys (default: all five)")
    p.add_argument(
        "--nfe-tasks", nargs="*", default=["8gaussians"], help="tasks that also get AF k=2, 4"
    )
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=0, help="override train.steps (0: the recipes')")
    p.add_argument("--work", default="/tmp/flowpost-bench-af", help="where the run folders go")
    p.add_argument("--only", nargs="*", help="run only these contenders (af1 af2 af4 fm)")
    p.add_argument("--report", action="store_true", help="print the tables from the JSON only")
    p.add_argument("--set", nargs="*", help="extra flowpost train --set overrides of every cell")
    p.add_argument("--tag", default="", help="suffix of the contender's key for --set variants")
    p.add_argument("--rescore", action="store_true", help="re-evaluate kept runs, no training")
    p.add_argument("--batch", type=int, default=1024, help="throughput: batch")
    p.add_argument("--width", type=int, default=256, help="throughput: MLP width")
    p.add_argument("--depth", type=int, default=4, help="throughput: MLP depth")
    p.add_argument("--reps", type=int, default=100, help="throughput: calls per round")
    p.add_argument("--rounds", type=int, default=7, help="throughput: interleaved rounds")
    args = p.parse_args()
    {"suite": exp_suite, "diagnose": exp_diagnose, "throughput": exp_throughput}[args.exp](args)


if __name__ == "__main__":
    main()
